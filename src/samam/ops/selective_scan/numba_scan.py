"""CPU fast path: numba kernels for the selective scan, forward and reverse-time backward.

numba is imported on first use, so this module imports without it (the backend is then
unavailable and `selective_scan_numba` raises with the install command).

Layout: B and C are transposed to (B, K, L, N) so the inner loop over the N states reads
contiguous memory and vectorises. numba without Intel SVML calls scalar libm `expf`, which
alone would cost ~1 s for 2,048 channels × 4,096 tokens × 16 states; `_exp` below is a
branch-free exp (Cody-Waite reduction + degree-7 polynomial + exponent bits) that LLVM
vectorises. Its relative error is below 3e-7 for the arguments a scan sees (Δ·A ≤ 0).

Time tiles: both kernels walk the tokens in tiles of T = _FWD_TILE_BYTES / (8·N) (2,048 for
N = 16) and run every channel of a (sample, group, channel block) work item over one tile
before the next, so the tile's B and C stay in L2; each channel carries its state across tiles.
The forward keeps the state at each tile start; the backward, in reverse tile order, restarts
from those and carries the adjoint.

Compiled here or loaded from the cache, the same bits: numba links a copy of each helper kernel
(and of the parallel loop body) into _scan_fwd/_scan_bwd and optimises it again there, but as a
weak symbol, so the process that compiles the kernels runs the helpers as compiled on their own,
and a process that loads _scan_fwd/_scan_bwd from numba's cache runs the copies. fastmath let
the two round differently (a step-1 loss of 53.374664 vs 53.374660): in a·b + c·d, which product
to fuse into an FMA (now an explicit `_fma`), and the order of the vectorised sum in _delta_grad
(now written out, without reassoc). The other sums keep reassoc; a test checks both paths.

Threads: each call uses min(torch.get_num_threads(), NUMBA_NUM_THREADS), so OMP_NUM_THREADS=1
keeps both libraries on one thread.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from types import FunctionType, SimpleNamespace

import numpy as np
import torch

from samam.ops.selective_scan.reference import check_scan_shapes, first_order_only

# backward work items per thread: more balance the threads, fewer save dB/dC partial buffers
_ITEMS_PER_THREAD = 2
# forward time tile: T tokens such that the tile's B and C (T × N fp32 each) take this many
# bytes, so that they stay in cache while every channel of a block scans the tile
_FWD_TILE_BYTES = 256 * 1024
# independent running sums of the Δ-bias gradient: a fixed order, without one long chain of adds
_SUM_LANES = 16

log = logging.getLogger("samam")

INSTALL_HINT = "pip install 'numba>=0.60'  (or: pip install -e '.[cpu]')"


@functools.cache
def numba_available() -> bool:
    """True when numba imports; the import happens here, once."""
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


# The kernels below are plain Python until _kernels() compiles them: it replaces each
# module global by its numba dispatcher, so that numba resolves the calls between them, and
# their on-disk cache works (numba does not cache closures over other jitted functions).
_NO_REASSOC = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}
_COMPILE_OPTIONS = {
    "_i32_as_f32": None,  # numba intrinsics, not jitted functions
    "_fma": None,
    "_exp": dict(fastmath=True, error_model="numpy", inline="always"),
    "_work_item": dict(error_model="numpy", inline="always"),
    "_delta": dict(fastmath=True, error_model="numpy", cache=True),
    "_delta_grad": dict(fastmath=_NO_REASSOC, error_model="numpy", cache=True),
    "_scan_fwd": dict(parallel=True, fastmath=True, error_model="numpy", cache=True),
    "_states": dict(fastmath=True, error_model="numpy", cache=True),
    "_adjoint": dict(fastmath=True, error_model="numpy", cache=True),
    "_grads": dict(fastmath=True, error_model="numpy", cache=True),
    "_scan_bwd": dict(parallel=True, error_model="numpy", cache=True),
}
prange = range  # numba.prange once compiled


_COMPILE_LOCK = threading.Lock()


@functools.cache
def _kernels() -> SimpleNamespace:
    import numba
    from numba.extending import intrinsic

    with _COMPILE_LOCK:  # functools.cache alone lets two first calls race
        module = globals()
        module["prange"] = numba.prange
        warned = False
        for name, options in _COMPILE_OPTIONS.items():
            fn = module[name]
            if not isinstance(fn, FunctionType):
                continue  # already compiled by a concurrent first call
            if options is None:
                # NUMBA_DISABLE_JIT=1 (debugging) runs the kernels as Python, where an intrinsic
                # cannot be called: their numpy versions (<name>_py) stand in
                module[name] = module[f"{name}_py"] if numba.config.DISABLE_JIT else intrinsic(fn)
                continue
            try:
                module[name] = numba.njit(**options)(fn)
            except RuntimeError as e:
                # cache=True needs a writable folder: beside this file, NUMBA_CACHE_DIR or the
                # user's cache. With none (read-only install and home), compile in memory instead.
                if "cannot cache" not in str(e):
                    raise
                if not warned:
                    log.warning(
                        "numba scan kernels are compiled in every process (%s); set NUMBA_CACHE_DIR "
                        "to a writable folder to cache them",
                        e,
                    )
                warned = True
                module[name] = numba.njit(**{**options, "cache": False})(fn)
    return SimpleNamespace(numba=numba, fwd=module["_scan_fwd"], bwd=module["_scan_bwd"])


def _i32_as_f32(typingctx, x):
    # numba intrinsic: reinterpret int32 bits as float32 (one LLVM bitcast, vectorisable)
    from llvmlite import ir
    from numba import types

    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def _i32_as_f32_py(x):
    return np.int32(x).view(np.float32)


def _fma(typingctx, a, b, c):
    # numba intrinsic: a·b + c rounded once (llvm.fma), so that contraction has no choice to make.
    # One instruction on x86-64 since 2013 (FMA3) and on arm64; a libm call on older CPUs.
    from numba import types

    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


def _fma_py(a, b, c):
    # float64 holds a·b exactly: one rounding but for rare double-rounding ties (debug path)
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def _exp(x):
    # Below -87, 2^k would leave the normal range; e^-87 ≈ 1.6e-38 is zero for a decay. Above
    # 88.7 float32 overflows: inf, as np.exp (the exponent bits would otherwise wrap the sign).
    if x > np.float32(88.72):
        return np.float32(np.inf)
    lo = np.float32(-87.0)
    x = lo if x < lo else x  # NaN stays NaN
    k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    # ln 2 split in two so that x − k·ln2 stays exact for |k| ≤ 126
    r = x - k * np.float32(0.693359375)
    r = r - k * np.float32(-2.12194440e-4)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _i32_as_f32((np.int32(k) + np.int32(127)) << np.int32(23))


def _delta(delta, bias, softplus, dt):
    # dt (L,) = softplus(delta + bias) with torch's threshold 20, or delta + bias.
    # log1p(z) = 2·atanh(z / (2 + z)), z = e^-|x| ∈ (0, 1]: the series argument is ≤ 1/3,
    # so 8 terms reach fp32 precision and the loop vectorises (numba's log1p does not).
    # The branch on `softplus` sits outside the loops, and error_model="numpy" drops the
    # zero-division check, so that each loop vectorises.
    if not softplus:
        for t in range(delta.shape[0]):
            dt[t] = delta[t] + bias
        return
    for t in range(delta.shape[0]):
        x = delta[t] + bias
        z = _exp(-abs(x))
        s = z / (np.float32(2.0) + z)
        s2 = s * s
        p = np.float32(1.0 / 15.0)
        p = p * s2 + np.float32(1.0 / 13.0)
        p = p * s2 + np.float32(1.0 / 11.0)
        p = p * s2 + np.float32(1.0 / 9.0)
        p = p * s2 + np.float32(1.0 / 7.0)
        p = p * s2 + np.float32(1.0 / 5.0)
        p = p * s2 + np.float32(1.0 / 3.0)
        p = p * s2 + np.float32(1.0)
        sp = (x if x > np.float32(0.0) else np.float32(0.0)) + np.float32(2.0) * s * p
        dt[t] = x if x > np.float32(20.0) else sp


def _delta_grad(delta, bias, softplus, ddt, part):
    # ddt (L,) becomes ∂L/∂delta in place (softplus' = sigmoid); returns ∂L/∂bias. part
    # (_SUM_LANES,): scratch for the running sums, allocated once per work item by the caller
    if softplus:
        for t in range(delta.shape[0]):
            x = delta[t] + bias
            z = _exp(-abs(x))
            ddt[t] = ddt[t] * (np.float32(1.0) if x >= np.float32(0.0) else z) / (np.float32(1.0) + z)
    # The sum in an order written out (no reassoc flag): _SUM_LANES running sums, then the
    # lanes and the tail in turn. Left to reassoc, the vectoriser chose the order, and chose
    # differently here than in this function's copy inside a cached _scan_bwd (module docstring).
    length = ddt.shape[0]
    rows = length // _SUM_LANES
    part[:] = 0.0
    for i in range(rows):
        for j in range(_SUM_LANES):
            part[j] += ddt[i * _SUM_LANES + j]
    total = np.float32(0.0)
    for j in range(_SUM_LANES):
        total += part[j]
    for t in range(rows * _SUM_LANES, length):
        total += ddt[t]
    return total


def _work_item(item, n_groups, n_blocks, dg):
    # Work item → (sample b, group g, block k, channels [c_lo, c_hi)); shared by both kernels so the
    # forward's h_tiles and the backward's dB/dC partials split channels the same way.
    per_block = (dg + n_blocks - 1) // n_blocks
    b = item // (n_groups * n_blocks)
    g = (item // n_blocks) % n_groups
    k = item % n_blocks
    c_lo = g * dg + k * per_block
    return b, g, k, c_lo, min(g * dg + dg, c_lo + per_block)


def _scan_fwd(u, delta, bias, softplus, A, B, C, D, dg, n_blocks, tile, y, h_tiles):
    # u, delta, y (B, K·D, L); bias (K·D,); A (1|B, K·D, N); B, C (B, K, L, N); D (1|B, K·D).
    # Work item = (sample, group, block of channels). Time-tiled: the block's channels run
    # tile by tile (T = `tile` tokens), each carrying its state h across tiles, so the
    # group's T × N slices of B and C stay in L1/L2 for all channels of the block instead
    # of streaming B and C (L × N each) once per channel. h_tiles (B, K·D, tiles, N) gets
    # each channel's state before each tile, for the backward (or has 0 tiles: not kept).
    nb, kd, length = u.shape
    keep = h_tiles.shape[2] > 0
    n_groups = B.shape[1]
    n_state = A.shape[2]
    for item in prange(nb * n_groups * n_blocks):
        b, g, _, c_lo, c_hi = _work_item(item, n_groups, n_blocks, dg)
        hs = np.zeros((max(c_hi - c_lo, 0), n_state), np.float32)
        h = np.empty(n_state, np.float32)  # local, so LLVM knows it aliases no argument
        dt = np.empty(tile, np.float32)
        for t0 in range(0, length, tile):
            t1 = min(length, t0 + tile)
            bt = B[b, g, t0:t1]
            ct = C[b, g, t0:t1]
            for c in range(c_lo, c_hi):
                a = A[b if A.shape[0] > 1 else 0, c]
                dv = D[b if D.shape[0] > 1 else 0, c]
                ut = u[b, c, t0:t1]
                yt = y[b, c, t0:t1]
                _delta(delta[b, c, t0:t1], bias[c], softplus, dt)
                for n in range(n_state):
                    h[n] = hs[c - c_lo, n]
                if keep:
                    for n in range(n_state):
                        h_tiles[b, c, t0 // tile, n] = h[n]
                for t in range(t1 - t0):
                    d = dt[t]
                    x = ut[t]
                    dx = d * x
                    acc = np.float32(0.0)
                    for n in range(n_state):
                        hn = _fma(_exp(d * a[n]), h[n], dx * bt[t, n])
                        h[n] = hn
                        acc += ct[t, n] * hn
                    yt[t] = acc + dv * x
                for n in range(n_state):
                    hs[c - c_lo, n] = h[n]


# One channel's backward, in three loop nests over (t, n). Each vectorises over n; the
# adjoint needs its own two-loop body (fused, LLVM leaves it scalar: measured 4x slower).
# Shapes: a, ga (N,); u, dt, gy, du, ddt (L,); B, C, es, gs, dB_acc, dC_acc (L, N);
# hs (L + 1, N).
def _states(a, u, dt, B, hs, es):
    # es[t] = exp(Δ_t·A), kept for the two passes below; hs[t + 1] = h_t, hs[0] = h_0 = 0
    for t in range(u.shape[0]):
        d = dt[t]
        dx = d * u[t]
        for n in range(hs.shape[1]):
            e = _exp(d * a[n])
            es[t, n] = e
            hs[t + 1, n] = _fma(e, hs[t, n], dx * B[t, n])


def _adjoint(gy, C, es, gs, acc):
    # gs[t] = ∂L/∂h_t = gy_t·C_t + exp(Δ_{t+1}A)·gs[t + 1], in reverse time; acc carries
    # exp(Δ_{t+1}A)·gs[t + 1] in (0 after the last token) and out (for the previous tile)
    length = gy.shape[0]
    for i in range(length):
        t = length - 1 - i
        gyt = gy[t]
        for n in range(gs.shape[1]):
            gs[t, n] = acc[n] + gyt * C[t, n]
        for n in range(gs.shape[1]):
            acc[n] = gs[t, n] * es[t, n]


def _grads(a, dv, u, dt, gy, B, hs, es, gs, du, ddt, ga, dB_acc, dC_acc):
    # du, ddt (∂L/∂Δ), ga = ∂L/∂A; adds this channel's share of ∂L/∂B, ∂L/∂C; returns ∂L/∂D
    for n in range(ga.shape[0]):
        ga[n] = 0.0
    gd = np.float32(0.0)
    for t in range(u.shape[0]):
        d = dt[t]
        x = u[t]
        dx = d * x
        gyt = gy[t]
        sb = np.float32(0.0)
        sa = np.float32(0.0)
        for n in range(gs.shape[1]):
            g = gs[t, n]
            q = g * es[t, n] * hs[t, n]  # ∂L/∂(Δ_t·A_n)
            ga[n] += d * q
            sa += a[n] * q
            sb += g * B[t, n]
            dB_acc[t, n] += g * dx
            dC_acc[t, n] += gyt * hs[t + 1, n]
        du[t] = d * sb + dv * gyt
        ddt[t] = x * sb + sa
        gd += gyt * x
    return gd


def _scan_bwd(
    u, delta, bias, softplus, A, B, C, D, gy, dg, n_blocks, tile, h_tiles,
    du, ddelta, dbias, dA, dD, dB_part, dC_part,
):  # fmt: skip
    # u, delta, gy, du, ddelta (B, K·D, L); dbias, dD (B, K·D); dA (B, K·D, N).
    # Work item = (sample, group, block of channels); each item owns its slice of
    # dB_part/dC_part (B, K, blocks, L, N), so the per-group reductions have no races.
    # Time-tiled like the forward, tiles in reverse order: each channel restarts its states
    # from the forward's h_tiles (B, K·D, tiles, N) and carries its adjoint across tiles, so
    # the T × N buffers and the tile's B, C, dB, dC stay in cache across the block's channels.
    nb, kd, length = u.shape
    n_groups = B.shape[1]
    n_state = A.shape[2]
    n_tiles = (length + tile - 1) // tile
    for item in prange(nb * n_groups * n_blocks):
        b, g, k, c_lo, c_hi = _work_item(item, n_groups, n_blocks, dg)
        hs = np.empty((tile + 1, n_state), np.float32)
        gs = np.empty((tile, n_state), np.float32)
        es = np.empty((tile, n_state), np.float32)
        dt = np.empty(tile, np.float32)
        ga = np.empty(n_state, np.float32)
        acc = np.empty(n_state, np.float32)
        lanes = np.empty(_SUM_LANES, np.float32)
        accs = np.zeros((max(c_hi - c_lo, 0), n_state), np.float32)
        for c in range(c_lo, c_hi):
            dD[b, c] = 0.0
            dbias[b, c] = 0.0
            for n in range(n_state):
                dA[b, c, n] = 0.0
        for i in range(n_tiles):
            t0 = (n_tiles - 1 - i) * tile
            t1 = min(length, t0 + tile)
            m = t1 - t0
            for c in range(c_lo, c_hi):
                a = A[b if A.shape[0] > 1 else 0, c]
                for n in range(n_state):
                    hs[0, n] = h_tiles[b, c, t0 // tile, n]
                    acc[n] = accs[c - c_lo, n]
                _delta(delta[b, c, t0:t1], bias[c], softplus, dt[:m])
                _states(a, u[b, c, t0:t1], dt[:m], B[b, g, t0:t1], hs[: m + 1], es[:m])
                _adjoint(gy[b, c, t0:t1], C[b, g, t0:t1], es[:m], gs[:m], acc)
                dD[b, c] += _grads(
                    a, D[b if D.shape[0] > 1 else 0, c], u[b, c, t0:t1], dt[:m], gy[b, c, t0:t1], B[b, g, t0:t1],
                    hs[: m + 1], es[:m], gs[:m], du[b, c, t0:t1], ddelta[b, c, t0:t1], ga,
                    dB_part[b, g, k, t0:t1], dC_part[b, g, k, t0:t1],
                )  # fmt: skip
                dbias[b, c] += _delta_grad(delta[b, c, t0:t1], bias[c], softplus, ddelta[b, c, t0:t1], lanes)
                for n in range(n_state):
                    accs[c - c_lo, n] = acc[n]
                    dA[b, c, n] += ga[n]


def _launch(kernel, *args) -> None:
    """Run a parallel kernel on min(torch's intra-op threads, NUMBA_NUM_THREADS) threads."""
    threads = torch.get_num_threads()
    numba = _kernels().numba
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    kernel(*args)
    # Starting numba's OpenMP pool sets the process-wide OpenMP thread count to
    # NUMBA_NUM_THREADS, which torch then reads as its own: put torch's count back.
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _n_blocks(bt: int, g: int, dg: int) -> int:
    """Channel blocks per (sample, group): enough work items to keep every thread busy,
    one block per group when possible."""
    threads = min(torch.get_num_threads(), _kernels().numba.config.NUMBA_NUM_THREADS)
    return min(dg, math.ceil(_ITEMS_PER_THREAD * threads / max(1, bt * g)))  # bt = 0: an empty batch


def _np(t: torch.Tensor):
    # float32 and contiguous already in the common case: no copy
    return t.detach().float().contiguous().numpy()


def _tile(length: int, n: int) -> int:
    # sym_min/sym_max: the fake forward sizes the states with this under torch.compile, where
    # builtin min/max would turn symbolic sizes into guards on their values
    return torch.sym_max(1, torch.sym_min(length, _FWD_TILE_BYTES // (8 * n)))


def _kernel_inputs(
    u: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """B and C as the kernels read them, (B, K, L, N) contiguous, and zeros for an absent D or Δ bias."""
    kd = u.shape[1]
    Bt = B.detach().transpose(-1, -2).contiguous()
    Ct = C.detach().transpose(-1, -2).contiguous()
    Dn = D if D is not None else u.new_zeros(1, kd)
    bn = bias if bias is not None else u.new_zeros(kd)
    return Bt, Ct, Dn, bn


# The kernels run as custom ops: torch.compile keeps them as calls in its graph (numba cannot be
# traced; a compiler-disabled function broke the graph at every scan), and their fake kernels
# give the output sizes symbolically, so one graph with dynamic shapes serves every size.
@torch.library.custom_op("samam::scan_numba_fwd", mutates_args=())
def _scan_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    bias: torch.Tensor | None,
    softplus: bool,
    keep_states: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """u, delta (B, K·D, L) fp32; A (1|B, K·D, N); B, C (B, K, N, L); D (1|B, K·D) or None;
    bias (K·D,) or None. Δ's bias and softplus are applied inside the kernels. → y (B, K·D, L)
    and, with keep_states, the states at tile starts (B, K·D, tiles, N) flattened, for the backward."""
    bt, kd, length = u.shape
    g = B.shape[1]
    Bt, Ct, Dn, bn = _kernel_inputs(u, B, C, D, bias)
    n = Bt.shape[3]
    y = torch.empty(bt, kd, length, dtype=torch.float32)
    n_blocks = _n_blocks(bt, g, kd // g)
    tile = _tile(length, n)
    # states at tile starts, tiny next to u. Buffers are u's float32, not torch's default
    # dtype: trainer.precision=bf16-true sets that to bfloat16.
    n_tiles = -(-length // tile) if keep_states else 0
    h_tiles = u.new_empty(bt, kd, n_tiles, n)
    _launch(
        _kernels().fwd, _np(u), _np(delta), _np(bn), softplus, _np(A), Bt.numpy(), Ct.numpy(), _np(Dn), kd // g,
        n_blocks, tile, y.numpy(), h_tiles.numpy(),
    )  # fmt: skip
    return y, h_tiles.view(-1)


@_scan_op.register_fake
def _(u, delta, A, B, C, D, bias, softplus, keep_states):
    # The states flattened: as an axis of its own, a number of tiles that may be 1 made the
    # layout checks guard on "one tile" (a recompile past one tile); their product with
    # K·D·N ≥ 2 is never 1.
    bt, kd, length = u.shape
    n = B.shape[2]
    n_tiles = 1 + (length - 1) // _tile(length, n) if keep_states else 0
    return u.new_empty(bt, kd, length), u.new_empty(bt * kd * n_tiles * n)


@torch.library.custom_op("samam::scan_numba_bwd", mutates_args=())
def _scan_grad_op(
    gy: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    bias: torch.Tensor | None,
    softplus: bool,
    h_tiles: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of u, delta, A, B, C, D and bias from gy (B, K·D, L); those of A, D and bias
    per sample: (B, K·D, N), (B, K·D), (B, K·D)."""
    bt, kd, length = u.shape
    g, n = B.shape[1], B.shape[2]
    dg = kd // g
    Bt, Ct, Dn, bn = _kernel_inputs(u, B, C, D, bias)
    n_blocks = _n_blocks(bt, g, dg)
    tile = _tile(length, n)
    h_tiles = h_tiles.view(bt, kd, -(-length // tile), n)
    du = u.new_empty(bt, kd, length)
    ddelta = u.new_empty(bt, kd, length)
    dbias = u.new_empty(bt, kd)
    dA = u.new_empty(bt, kd, n)
    dD = u.new_empty(bt, kd)
    dB_part = u.new_zeros(bt, g, n_blocks, length, n)
    dC_part = u.new_zeros(bt, g, n_blocks, length, n)
    _launch(
        _kernels().bwd, _np(u), _np(delta), _np(bn), softplus, _np(A), Bt.numpy(), Ct.numpy(), _np(Dn), _np(gy), dg, n_blocks,
        tile, h_tiles.numpy(), du.numpy(), ddelta.numpy(), dbias.numpy(), dA.numpy(), dD.numpy(), dB_part.numpy(), dC_part.numpy(),
    )  # fmt: skip
    dB = dB_part.sum(2).transpose(-1, -2)  # (B, K, N, L)
    dC = dC_part.sum(2).transpose(-1, -2)
    return du, ddelta, dA, dB, dC, dD, dbias


@_scan_grad_op.register_fake
def _(gy, u, delta, A, B, C, D, bias, softplus, h_tiles):
    bt, kd, length = u.shape
    g, n = B.shape[1], B.shape[2]
    dB, dC = (u.new_empty(bt, g, length, n).transpose(-1, -2) for _ in range(2))
    return (
        torch.empty_like(u),
        torch.empty_like(delta),
        u.new_empty(bt, kd, n),
        dB,
        dC,
        u.new_empty(bt, kd),
        u.new_empty(bt, kd),
    )


def _scan_op_setup(ctx, inputs, output):
    u, delta, A, B, C, D, bias, softplus, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, bias, output[1])
    ctx.softplus = softplus


@first_order_only
def _scan_op_backward(ctx, gy, _):
    u, delta, A, B, C, D, bias, h_tiles = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dbias = _scan_grad_op(gy, u, delta, A, B, C, D, bias, ctx.softplus, h_tiles)
    bt = u.shape[0]
    if A.shape[0] == 1 and bt > 1:
        dA = dA.sum(0, keepdim=True)
    if D is None:
        dD = None
    elif D.shape[0] == 1 and bt > 1:
        dD = dD.sum(0, keepdim=True)
    dbias = dbias.sum(0) if bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dbias, None, None


_scan_op.register_autograd(_scan_op_backward, setup_context=_scan_op_setup)


def selective_scan_numba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Selective scan with numba kernels (CPU tensors only).

    Shapes and semantics as :func:`selective_scan_ref`, for decaying states (A ≤ 0, as every
    Mamba model has: A = −exp(A_log)). For growing states whose e^{ΔA} nears float32's limit
    the kernels may give NaN where the reference still has a finite value.
    """
    # not while compiling: Dynamo would trace through numba_available's cache (a warning); the
    # backend checked it at construction
    if not torch.compiler.is_compiling() and not numba_available():
        raise RuntimeError(f"the numba selective-scan backend needs numba: {INSTALL_HINT}")
    check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    if u.device.type != "cpu":
        raise ValueError(f"the numba backend runs on CPU tensors only, got device {u.device}")
    a = A.float()
    a = a.unsqueeze(0) if a.dim() == 2 else a  # (1 or B, K·D, N)
    d = None if D is None else (D.float().unsqueeze(0) if D.dim() == 1 else D.float())
    bias = None if delta_bias is None else delta_bias.float().contiguous()
    # contiguous fp32 here, so forward and backward hand numba views, not copies
    u, delta = u.float().contiguous(), delta.float().contiguous()
    a = a.contiguous()
    d = None if d is None else d.contiguous()
    B, C = B.float(), C.float()
    # the states for the backward are kept only when one will run
    keep_states = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, a, B, C, d, bias)
    )
    return _scan_op(u, delta, a, B, C, d, bias, bool(delta_softplus), keep_states)[0]
