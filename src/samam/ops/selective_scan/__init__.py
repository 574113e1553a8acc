"""Selective scan (Mamba's S6 recurrence with grouped B, C and optional per-sample A, D).

    y = selective_scan(u, delta, A, B, C, D, delta_bias=None, delta_softplus=True)

Backends: `selective_scan_ref` (sequential loop, tests only), `selective_scan_torch` (pure
PyTorch, any device), `selective_scan_numba` (CPU kernels), mamba-ssm's CUDA kernel (via
`resolve_scan_backend("mamba")`). Models call `resolve_scan_backend` once and keep the
returned ScanBackend. numba and mamba_ssm are imported only when asked for.
"""

from __future__ import annotations

from samam.ops.selective_scan.backend import BACKENDS, BackendName, ScanBackend, resolve_scan_backend
from samam.ops.selective_scan.mamba_scan import mamba_available, mamba_unavailable_reason
from samam.ops.selective_scan.numba_scan import numba_available, selective_scan_numba
from samam.ops.selective_scan.reference import check_scan_shapes, selective_scan_ref
from samam.ops.selective_scan.torch_scan import selective_scan_torch

__all__ = [
    "BACKENDS",
    "BackendName",
    "ScanBackend",
    "check_scan_shapes",
    "mamba_available",
    "mamba_unavailable_reason",
    "numba_available",
    "resolve_scan_backend",
    "selective_scan_numba",
    "selective_scan_ref",
    "selective_scan_torch",
]
