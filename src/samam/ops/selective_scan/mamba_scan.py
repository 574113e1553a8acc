"""GPU path: mamba-ssm's fused CUDA selective scan, imported on first use.

mamba-ssm's kernel takes A as (D, N) and D as (D,) with no batch axis. Per-sample A or D
(S7) is handled by folding the batch into the channel axis (SPEC §4): u, Δ (1, B·K·D, L),
A (B·K·D, N), D and delta_bias (B·K·D,), B and C (1, B·K, N, L); group b·K + k then serves
exactly the channels of sample b, direction k.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import torch

from samam.ops.selective_scan.reference import check_scan_shapes

INSTALL_HINT = "MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm  (needs nvcc and CUDA_HOME)"


@functools.cache
def _load() -> Callable | str:
    """mamba-ssm's selective_scan_fn, or the reason it cannot be imported."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        return "mamba_ssm is not installed"
    try:
        importlib.import_module("mamba_ssm")
    except Exception:
        # mamba_ssm/__init__.py imports transformers and its Triton layers; the scan does
        # not need them, so register a bare package and import only the submodule.
        sys.modules.pop("mamba_ssm", None)
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["mamba_ssm"] = pkg
    try:
        mod = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception as e:  # e.g. "No module named 'selective_scan_cuda'" on a CPU build
        return f"importing mamba_ssm.ops.selective_scan_interface failed: {type(e).__name__}: {e}"
    return mod.selective_scan_fn


def mamba_available() -> bool:
    """True when mamba-ssm's CUDA selective scan imports (it may still need a GPU to run)."""
    return callable(_load())


def mamba_unavailable_reason() -> str | None:
    fn = _load()
    return None if callable(fn) else fn


def selective_scan_mamba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Selective scan with mamba-ssm's CUDA kernel (CUDA tensors only; ScanBackend checks).

    Shapes and semantics as :func:`selective_scan_ref`.
    """
    fn = _load()
    if not callable(fn):
        raise RuntimeError(
            f"the mamba selective-scan backend is unavailable ({fn}); install it with: {INSTALL_HINT}"
        )
    bt, g, dg, n, length = check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    kd = g * dg
    A = A.float()
    D = None if D is None else D.float()
    bias = None if delta_bias is None else delta_bias.float()

    def kw(d: torch.Tensor | None, b: torch.Tensor | None) -> dict:
        d = None if d is None else d.contiguous()
        b = None if b is None else b.contiguous()
        return dict(D=d, z=None, delta_bias=b, delta_softplus=delta_softplus)

    per_sample = A.dim() == 3 or (D is not None and D.dim() == 2)
    if not per_sample:
        y = fn(u.contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous(), **kw(D, bias))
        return y.float()
    # fold the batch into the channel axis: channel b·K·D + c, group b·K + k
    u1 = u.reshape(1, bt * kd, length)
    dt1 = delta.reshape(1, bt * kd, length)
    A1 = A.expand(bt, kd, n).reshape(bt * kd, n)
    D1 = None if D is None else D.expand(bt, kd).reshape(bt * kd)
    bias1 = None if bias is None else bias.repeat(bt)
    B1 = B.reshape(1, bt * g, n, length)
    C1 = C.reshape(1, bt * g, n, length)
    y = fn(
        u1.contiguous(), dt1.contiguous(), A1.contiguous(), B1.contiguous(), C1.contiguous(), **kw(D1, bias1)
    )
    return y.float().reshape(bt, kd, length)
