"""The selective-scan contract (shapes, Δ transform) and a plain sequential reference.

Legend: B batch, K directions (groups), D inner width, N state, L tokens. The channel axis
has K·D entries; channel c belongs to group c // D. Every backend follows exactly:

    Δ   = softplus(delta + delta_bias)            (or delta + delta_bias)
    h_t = exp(Δ_t·A) ⊙ h_{t-1} + Δ_t·B_t·u_t,     h_0 = 0
    y_t = Σ_n C_t[n]·h_t[n] + D·u_t

State and output are float32 whatever the input dtype. The fast backends are first-order
only: differentiating their gradients again (create_graph=True) raises, see `first_order_only`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class ScanDims(NamedTuple):
    batch: int
    groups: int
    group_width: int
    state: int
    length: int


def _shape_error(name: str, expected: str, got: torch.Tensor) -> ValueError:
    return ValueError(f"selective_scan: {name} must have shape {expected}, got {tuple(got.shape)}")


def check_scan_shapes(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
) -> ScanDims:
    """Validate the shapes of one selective-scan call; raise ValueError naming the expected shape."""
    if u.dim() != 3:
        raise _shape_error("u", "(B, K·D, L)", u)
    bt, kd, length = u.shape
    if length == 0:
        raise ValueError("selective_scan: u has no tokens (L = 0)")
    if delta.shape != u.shape:
        raise _shape_error("delta", f"(B, K·D, L) = {tuple(u.shape)} like u", delta)
    if B.dim() != 4 or B.shape[0] != bt or B.shape[3] != length:
        raise _shape_error("B", f"(B, K, N, L) with B={bt}, L={length}", B)
    groups, n = B.shape[1], B.shape[2]
    if groups == 0 or kd % groups != 0:
        raise ValueError(f"selective_scan: channels K·D={kd} are not divisible by the K={groups} groups of B")
    if C.shape != B.shape:
        raise _shape_error("C", f"(B, K, N, L) = {tuple(B.shape)} like B", C)
    if tuple(A.shape) not in ((kd, n), (bt, kd, n)):
        raise _shape_error("A", f"(K·D, N) = ({kd}, {n}) or (B, K·D, N) = ({bt}, {kd}, {n})", A)
    if D is not None and tuple(D.shape) not in ((kd,), (bt, kd)):
        raise _shape_error("D", f"(K·D,) = ({kd},) or (B, K·D) = ({bt}, {kd})", D)
    if delta_bias is not None and tuple(delta_bias.shape) != (kd,):
        raise _shape_error("delta_bias", f"(K·D,) = ({kd},)", delta_bias)
    return ScanDims(bt, groups, kd // groups, n, length)


def first_order_only(backward: Callable) -> Callable:
    """Decorate a scan's backward (autograd.Function or custom op) that has no double backward.

    torch's once_differentiable is not enough: when the incoming gradient does not require
    grad (``grad(y.sum(), u, create_graph=True)``, a gradient penalty), it returns gradients
    that count as constants, so a second backward silently drops every second-order term
    of the scan. Grad mode inside backward is create_graph, so refuse it here instead.
    """

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "selective_scan: the torch, numba and mamba backends have no double backward "
                "(create_graph=True through them would drop the scan's second-order terms); "
                "for higher-order gradients at tiny sizes use selective_scan_ref"
            )
        return backward(ctx, *grads)

    return wrapper


def scan_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """Δ in float32, (B, K·D, L); differentiable with ordinary autograd."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    # softplus with torch's default threshold 20, the same as mamba-ssm's kernel
    return F.softplus(dt) if delta_softplus else dt


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Sequential reference, autograd through a Python loop: for tests at tiny sizes only.

    u, delta (B, K·D, L); A (K·D, N) or (B, K·D, N); B, C (B, K, N, L);
    D (K·D,) or (B, K·D) or None; delta_bias (K·D,) or None → y (B, K·D, L) float32.
    """
    bt, _, dg, n, length = check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    x = u.float()
    dt = scan_delta(delta, delta_bias, delta_softplus)
    a = A.float().expand(bt, -1, -1)  # (B, K·D, N)
    bx = B.float().repeat_interleave(dg, dim=1)  # (B, K·D, N, L)
    cx = C.float().repeat_interleave(dg, dim=1)
    h = x.new_zeros(bt, x.shape[1], n)
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * a) * h + (dt[:, :, t] * x[:, :, t])[..., None] * bx[..., t]
        ys.append((h * cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float().expand(bt, -1)[..., None] * x
    return y
