"""Pure-PyTorch selective scan with a hand-written reverse-time backward (any device).

Autograd through a per-step Python loop takes minutes for the backward, so the recurrence
lives in one custom op with its own backward op. The sequence is cut into chunks of T steps:
exp(ΔA) and ΔBu of a chunk are built with large tensor ops, then one in-place addcmul per step
runs the recurrence. Forward keeps only the state at chunk starts; backward recomputes each chunk's
states from it, so memory is O(L/T·K·D·N + T·K·D·N) instead of O(L·K·D·N).
"""

from __future__ import annotations

import contextlib

import torch

from samam.ops.selective_scan.reference import check_scan_shapes, first_order_only, scan_delta

# A chunk buffer holds T·B·K·D·N floats; about 4M keeps each buffer near 16 MB.
_CHUNK_ELEMS = 1 << 22


def _chunk_len(bt: int, kd: int, n: int, length: int) -> int:
    # sym_min/sym_max: the fake forward sizes the states with this under torch.compile, where
    # builtin min/max would turn symbolic sizes into guards on their values
    fits = _CHUNK_ELEMS // torch.sym_max(1, bt * kd * n)
    return torch.sym_max(8, torch.sym_min(torch.sym_min(256, length), fits))


def _chunk_terms(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s: int, e: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Time-major terms of steps s..e-1: dA = exp(ΔA), dBu = Δ·u·B, Δ and u, all (T, B, K·D, ...)."""
    bt, kd, _ = u.shape
    g, n = B.shape[1], B.shape[2]
    dtc = dt[:, :, s:e].permute(2, 0, 1).contiguous()  # (T, B, K·D)
    uc = u[:, :, s:e].permute(2, 0, 1).contiguous()  # (T, B, K·D)
    dA = torch.exp(dtc.unsqueeze(-1) * A.unsqueeze(0))  # (T, B, K·D, N)
    bc = B[..., s:e].permute(3, 0, 1, 2)  # (T, B, K, N)
    dBu = (dtc * uc).view(e - s, bt, g, kd // g, 1) * bc.unsqueeze(3)  # (T, B, K, D, N)
    return dA, dBu.reshape(e - s, bt, kd, n), dtc, uc


def _chunk_states(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s: int, e: int, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_chunk_terms` with the states h_s..h_{e-1} from h (the state before step s) in place
    of Δ·u·B: h_t = dA_t·h_{t-1} + Δ_t·u_t·B_t."""
    dA, hs, dtc, uc = _chunk_terms(u, dt, A, B, s, e)
    hs[0].addcmul_(dA[0], h)
    for t in range(1, e - s):
        hs[t].addcmul_(dA[t], hs[t - 1])
    return dA, hs, dtc, uc


def _group_dot(x: torch.Tensor, v: torch.Tensor, g: int) -> torch.Tensor:
    """Σ_n x[t, b, c, n]·v[t, b, group(c), n]: x (T, B, K·D, N), v (T, B, K, N) → (T, B, K·D)."""
    t, bt, kd, n = x.shape
    out = torch.matmul(x.view(t, bt, g, kd // g, n), v.unsqueeze(-1))  # (T, B, K, D, 1)
    return out.view(t, bt, kd)


def _group_sum(w: torch.Tensor, x: torch.Tensor, g: int) -> torch.Tensor:
    """Σ_{c in group} w[t, b, c]·x[t, b, c, n]: w (T, B, K·D), x (T, B, K·D, N) → (T, B, K, N)."""
    t, bt, kd, n = x.shape
    out = torch.matmul(w.view(t, bt, g, 1, kd // g), x.view(t, bt, g, kd // g, n))  # (T, B, K, 1, N)
    return out.view(t, bt, g, n)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off around the scan's matmuls, so state and output stay float32 (the contract)."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False) if enabled else contextlib.nullcontext()


# The scan is a custom op, opaque to torch.compile: traced, its Python loops over chunks and
# steps unrolled into the graph, so every new length recompiled the network (and past Dynamo's
# recompile limit it ran eagerly). The op's fake kernel gives the output sizes symbolically.
@torch.library.custom_op("samam::scan_torch_fwd", mutates_args=())
def _scan_op(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """u, dt (B, K·D, L) float32 (Δ already transformed); A (1 or B, K·D, N); B, C (B, K, N, L)
    → y (B, K·D, L) and the states at chunk starts (chunks, B, K·D, N) flattened, for the backward."""
    bt, kd, length = u.shape
    g, n = B.shape[1], B.shape[2]
    step = _chunk_len(bt, kd, n, length)
    y = u.new_empty(bt, kd, length)
    h = u.new_zeros(bt, kd, n)
    starts = []  # state before each chunk, (B, K·D, N)
    for s in range(0, length, step):
        e = min(s + step, length)
        starts.append(h)
        _, hs, _, _ = _chunk_states(u, dt, A, B, s, e, h)
        h = hs[-1].clone()
        cc = C[..., s:e].permute(3, 0, 1, 2)  # (T, B, K, N)
        y[:, :, s:e] = _group_dot(hs, cc, g).permute(1, 2, 0)
    return y, torch.stack(starts).view(-1)


@_scan_op.register_fake
def _(u, dt, A, B, C):
    # The states flattened: as an axis of its own, a number of chunks that may be 1 made the
    # layout checks guard on "one chunk" (a recompile past 256 tokens); their product with
    # K·D·N ≥ 2 is never 1.
    bt, kd, length = u.shape
    n = B.shape[2]
    chunks = 1 + (length - 1) // _chunk_len(bt, kd, n, length)
    return u.new_empty(bt, kd, length), u.new_empty(chunks * bt * kd * n)


@torch.library.custom_op("samam::scan_torch_bwd", mutates_args=())
def _scan_grad_op(
    gy: torch.Tensor,
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    starts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of u, dt, A (per sample: (B, K·D, N)), B and C from gy (B, K·D, L)."""
    with _no_autocast(u.device):  # backward may run inside the caller's autocast on CPU
        return _backward(gy, u, dt, A, B, C, starts)


@_scan_grad_op.register_fake
def _(gy, u, dt, A, B, C, starts):
    bt, kd, _ = u.shape
    return (
        torch.empty_like(u),
        torch.empty_like(dt),
        u.new_empty(bt, kd, A.shape[2]),
        torch.empty_like(B),
        torch.empty_like(C),
    )


def _backward(gy, u, dt, A, B, C, starts):
    bt, kd, length = u.shape
    g, n = B.shape[1], B.shape[2]
    step = _chunk_len(bt, kd, n, length)
    gy = gy.float()
    du = torch.empty_like(u)
    ddt = torch.empty_like(dt)
    dA = u.new_zeros(bt, kd, n)
    dB = torch.empty_like(B)
    dC = torch.empty_like(C)
    carry = u.new_zeros(bt, kd, n)  # dA_{e}·∂L/∂h_{e}, handed from the next chunk
    chunk_starts = list(range(0, length, step))
    starts = starts.view(len(chunk_starts), bt, kd, n)
    for i in reversed(range(len(chunk_starts))):
        s = chunk_starts[i]
        e = min(s + step, length)
        T = e - s
        h0 = starts[i]
        dAc, hs, dtc, uc = _chunk_states(u, dt, A, B, s, e, h0)
        bc = B[..., s:e].permute(3, 0, 1, 2)  # (T, B, K, N)
        cc = C[..., s:e].permute(3, 0, 1, 2)
        gyc = gy[:, :, s:e].permute(2, 0, 1).contiguous()  # (T, B, K·D)
        # gh_t = ∂L/∂h_t = gy_t·C_t + dA_{t+1}·gh_{t+1}
        gh = (gyc.view(T, bt, g, kd // g, 1) * cc.unsqueeze(3)).reshape(T, bt, kd, n)
        gh[-1].add_(carry)
        for t in range(T - 2, -1, -1):
            gh[t].addcmul_(dAc[t + 1], gh[t + 1])
        carry = dAc[0] * gh[0]
        hprev = torch.cat([h0.unsqueeze(0), hs[:-1]])  # h_{t-1}, (T, B, K·D, N)
        q = gh * dAc * hprev  # ∂L/∂(ΔA) elementwise
        dA += (q * dtc.unsqueeze(-1)).sum(0)
        sb = _group_dot(gh, bc, g)  # Σ_n gh·B, (T, B, K·D)
        du[:, :, s:e] = (dtc * sb).permute(1, 2, 0)
        ddt[:, :, s:e] = (uc * sb + (q * A.unsqueeze(0)).sum(-1)).permute(1, 2, 0)
        dB[..., s:e] = _group_sum(dtc * uc, gh, g).permute(1, 2, 3, 0)
        dC[..., s:e] = _group_sum(gyc, hs, g).permute(1, 2, 3, 0)
    return du, ddt, dA, dB, dC


def _scan_op_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[1])


@first_order_only
def _scan_op_backward(ctx, gy, _):
    u, dt, A, B, C, starts = ctx.saved_tensors
    du, ddt, dA, dB, dC = _scan_grad_op(gy, u, dt, A, B, C, starts)
    if A.shape[0] == 1 and u.shape[0] > 1:
        dA = dA.sum(0, keepdim=True)
    return du, ddt, dA, dB, dC


_scan_op.register_autograd(_scan_op_backward, setup_context=_scan_op_setup)


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Selective scan in pure PyTorch (exact; any device).

    Shapes and semantics as :func:`selective_scan_ref`.
    """
    bt = check_scan_shapes(u, delta, A, B, C, D, delta_bias).batch
    x = u.float().contiguous()
    dt = scan_delta(delta, delta_bias, delta_softplus).contiguous()
    a = A.float()
    a = a.unsqueeze(0) if a.dim() == 2 else a  # (1 or B, K·D, N)
    with _no_autocast(x.device):
        y, _ = _scan_op(x, dt, a.contiguous(), B.float().contiguous(), C.float().contiguous())
    if D is not None:
        y = y + D.float().expand(bt, -1)[..., None] * x
    return y
