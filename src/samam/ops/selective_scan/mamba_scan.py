"""GPU path: mamba-ssm's fused CUDA selective scan, imported on first use.

mamba-ssm's kernel takes A as (D, N) and D as (D,) with no batch axis. Per-sample A or D
(S7) is handled by folding the batch into the channel axis (SPEC §4): u, Δ (1, B·K·D, L),
A (B·K·D, N), D and delta_bias (B·K·D,), B and C (1, B·K, N, L); group b·K + k then serves
exactly the channels of sample b, direction k. Calls with more than 65535 channels (the
kernel's launch limit: a batch of 32 at d_inner 512 with 4 directions, folded) are split
into several kernel calls along whole groups.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable

import torch

from samam.ops.selective_scan.reference import check_scan_shapes, first_order_only

INSTALL_HINT = "MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm  (needs nvcc and CUDA_HOME)"


@functools.cache
def _load() -> Callable | str:
    """mamba-ssm's selective_scan_fn, or the reason it cannot be imported.

    mamba_ssm/__init__.py imports transformers and the Triton layers (seconds, and more that
    can fail); the scan needs none of it. Unless the package is already imported, a bare
    package stands in while the scan's module is imported, then is removed again, so a later
    ``import mamba_ssm`` elsewhere still runs the real __init__ (and reuses this module)."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        return "mamba_ssm is not installed"
    bare = "mamba_ssm" not in sys.modules
    if bare:
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["mamba_ssm"] = pkg
    try:
        mod = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception as e:  # e.g. "No module named 'selective_scan_cuda'" on a CPU build
        return f"importing mamba_ssm.ops.selective_scan_interface failed: {type(e).__name__}: {e}"
    finally:
        if bare:
            sys.modules.pop("mamba_ssm", None)
    return mod.selective_scan_fn


def mamba_available() -> bool:
    """True when mamba-ssm's CUDA selective scan imports (it may still need a GPU to run)."""
    return callable(_load())


def mamba_unavailable_reason() -> str | None:
    fn = _load()
    return None if callable(fn) else fn


NONDETERMINISTIC = (
    "the mamba selective-scan backward adds its B and C gradients with atomics, in no fixed order: "
    "repeated runs differ in the last bits even with torch.use_deterministic_algorithms(True) "
    "(trainer.deterministic=true); model.backend=torch runs torch ops only, which that mode covers"
)


def _alert_if_deterministic(*tensors: torch.Tensor) -> None:
    """Deterministic mode checks torch's own ops only: alert for mamba-ssm's kernel as torch does for
    its nondeterministic ones (an error, or a warning under warn_only), whenever a gradient will flow."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(NONDETERMINISTIC, stacklevel=3)
    else:
        raise RuntimeError(NONDETERMINISTIC)


# mamba-ssm launches one thread block per (sample, channel) on a (batch, channels) grid, and a
# CUDA grid's second dimension holds at most 65535 blocks: more channels in one call fail to
# launch. Calls are split along whole groups to stay under it.
MAX_CHANNELS_PER_CALL = 65535


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

    Shapes and semantics as :func:`selective_scan_ref`. u, Δ, B and C reach the kernel in
    float32, also under bf16 autocast: its output takes their dtype, and the contract's
    output is float32 (as the release does, which casts them with ``.float()``).
    """
    _alert_if_deterministic(u, delta, A, B, C, D, delta_bias)
    fn = _load()
    if not callable(fn):
        raise RuntimeError(
            f"the mamba selective-scan backend is unavailable ({fn}); install it with: {INSTALL_HINT}"
        )
    bt, g, dg, n, length = check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    if dg > MAX_CHANNELS_PER_CALL:
        raise ValueError(
            f"selective_scan (mamba): {dg} channels per group exceed the kernel's launch limit of "
            f"{MAX_CHANNELS_PER_CALL}; use scan backend 'torch'"
        )
    kd = g * dg
    u, delta, B, C = (t.float() for t in (u, delta, B, C))
    A = A.float()
    D = None if D is None else D.float()
    bias = None if delta_bias is None else delta_bias.float()
    if A.dim() == 3 or (D is not None and D.dim() == 2):
        # per-sample A or D: fold the batch into the channel axis (channel b·K·D + c, group
        # b·K + k), since the kernel takes A (channels, N) and D (channels,) with no batch axis
        u, delta = u.reshape(1, bt * kd, length), delta.reshape(1, bt * kd, length)
        A = A.expand(bt, kd, n).reshape(bt * kd, n)
        D = None if D is None else D.expand(bt, kd).reshape(bt * kd)
        bias = None if bias is None else bias.repeat(bt)
        B, C = B.reshape(1, bt * g, n, length), C.reshape(1, bt * g, n, length)
    groups = B.shape[1]
    step = MAX_CHANNELS_PER_CALL // dg  # whole groups per kernel call
    ys = []
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        c = slice(g0 * dg, g1 * dg)
        ys.append(
            fn(
                u[:, c].contiguous(),
                delta[:, c].contiguous(),
                A[c].contiguous(),
                B[:, g0:g1].contiguous(),
                C[:, g0:g1].contiguous(),
                D=None if D is None else D[c].contiguous(),
                z=None,
                delta_bias=None if bias is None else bias[c].contiguous(),
                delta_softplus=delta_softplus,
            )
        )
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
    return _FirstOrderOnly.apply(y.float().reshape(bt, kd, length))


class _FirstOrderOnly(torch.autograd.Function):
    """Identity that refuses double backward: mamba-ssm's backward runs its CUDA kernel, whose
    gradients count as constants, so create_graph=True through it would silently drop the
    scan's second-order terms (as the torch and numba backends would, see first_order_only).
    Its output is a view that autograd forbids modifying in place (clone it first); SS2D's
    merge only reads it."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return y.view_as(y)

    @staticmethod
    @first_order_only
    def backward(ctx, gy: torch.Tensor) -> torch.Tensor:
        return gy
