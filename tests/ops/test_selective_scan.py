"""Selective-scan backends against the sequential reference, forward and backward."""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from samam.ops.selective_scan import (
    BACKENDS,
    ScanBackend,
    mamba_available,
    numba_available,
    numba_scan,
    resolve_scan_backend,
    selective_scan_numba,
    selective_scan_ref,
    selective_scan_torch,
    torch_scan,
)
from samam.ops.selective_scan.reference import scan_delta

CPU_BACKENDS = [pytest.param(selective_scan_torch, id="torch")]
if numba_available():
    CPU_BACKENDS.append(pytest.param(selective_scan_numba, id="numba"))

NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]


def make_inputs(
    bt: int,
    g: int,
    dg: int,
    n: int,
    length: int,
    *,
    per_sample_A: bool = False,
    per_sample_D: bool = False,
    with_D: bool = True,
    with_bias: bool = True,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor | None]:
    """Leaf tensors [u, delta, A, B, C, D, delta_bias] (D, delta_bias may be None)."""
    kd = g * dg
    u = torch.randn(bt, kd, length)
    delta = torch.randn(bt, kd, length) * 0.5 - 1.0
    A = -torch.exp(0.5 * torch.randn(*((bt, kd, n) if per_sample_A else (kd, n))))
    B = torch.randn(bt, g, n, length)
    C = torch.randn(bt, g, n, length)
    D = torch.randn(*((bt, kd) if per_sample_D else (kd,))) if with_D else None
    bias = 0.3 * torch.randn(kd) if with_bias else None
    u, delta, B, C = (t.to(dtype) for t in (u, delta, B, C))
    return [None if t is None else t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]


def clone(xs: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    return [None if t is None else t.detach().clone().requires_grad_() for t in xs]


def run(fn, xs, softplus: bool = True, gy: torch.Tensor | None = None):
    """Output and the gradients of all inputs for one backend."""
    y = fn(*xs[:6], delta_bias=xs[6], delta_softplus=softplus)
    if gy is None:
        gy = torch.randn_like(y)
    y.backward(gy)
    return y.detach(), [None if t is None else t.grad for t in xs], gy


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Max abs error relative to the largest magnitude: gradients mix large and tiny entries."""
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    scale = expected.float().abs().max().clamp_min(1e-6)
    err = ((actual.float() - expected.float()).abs().max() / scale).item()
    assert err < tol, f"{what}: relative error {err:.2e} ≥ {tol:.0e}"


def compare(fn, xs, softplus=True, fwd_tol=1e-5, bwd_tol=1e-5):
    ys = clone(xs)
    y_ref, g_ref, gy = run(selective_scan_ref, xs, softplus)
    y, g, _ = run(fn, ys, softplus, gy)
    assert y.dtype == torch.float32
    assert_rel_close(y, y_ref, fwd_tol, "y")
    for name, a, b in zip(NAMES, g, g_ref):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_rel_close(a, b, bwd_tol, f"d{name}")


CASES = {
    "shared": dict(bt=2, g=3, dg=4, n=5, length=37),
    "per_sample_AD": dict(bt=2, g=3, dg=4, n=5, length=37, per_sample_A=True, per_sample_D=True),
    "G1_perA_sharedD": dict(bt=2, g=1, dg=6, n=4, length=19, per_sample_A=True),
    "sharedA_perD_noBias": dict(bt=2, g=2, dg=3, n=4, length=23, per_sample_D=True, with_bias=False),
    "noD": dict(bt=1, g=2, dg=3, n=4, length=17, with_D=False),
    "L1": dict(bt=2, g=2, dg=3, n=4, length=1, per_sample_A=True),
    "B1_G1": dict(bt=1, g=1, dg=5, n=3, length=29),
}


@pytest.mark.parametrize("fn", [pytest.param(selective_scan_ref, id="reference"), *CPU_BACKENDS])
@torch.no_grad()
def test_scan_is_the_discretised_recurrence_written_out(fn):
    """SPEC §2 in scalars: Δ = softplus(δ + bias), h_t = exp(ΔA)·h_{t−1} + Δ·B_t·x_t,
    y_t = Σ_n C_t·h_t + D·x, B and C shared by the channels of a group. Every other test
    compares a backend with selective_scan_ref, so a slip shared by all (Δ·B dropped, the bias
    added twice, a group's B read by the wrong channels) passed them all."""
    u, delta, A, B, C, D, bias = (t.detach() for t in make_inputs(2, 2, 2, 3, 4, per_sample_A=True))
    want = torch.zeros(2, 4, 4)
    for b, c, n in itertools.product(range(2), range(4), range(3)):
        h, g = 0.0, c // 2  # channels 0, 1 read group 0's B and C; 2, 3 group 1's
        for t in range(4):
            dt = math.log1p(math.exp(delta[b, c, t] + bias[c]))
            h = math.exp(dt * A[b, c, n]) * h + dt * B[b, g, n, t] * u[b, c, t]
            want[b, c, t] += C[b, g, n, t] * h
    want += D[:, None] * u
    torch.testing.assert_close(fn(u, delta, A, B, C, D, delta_bias=bias), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_fp32(fn, case):
    compare(fn, make_inputs(**CASES[case]))


@pytest.mark.parametrize("fn", CPU_BACKENDS)
def test_matches_reference_without_softplus(fn):
    xs = make_inputs(2, 2, 3, 4, 21, per_sample_A=True)
    with torch.no_grad():
        xs[1].copy_(torch.rand_like(xs[1]) * 0.3)  # Δ used as is: keep it positive
    compare(fn, xs, softplus=False)


@pytest.mark.parametrize("fn", CPU_BACKENDS)
def test_multi_chunk_length(fn, monkeypatch):
    # L = 300 is no multiple of the torch chunk (forced to 16 here) nor of any vector width
    monkeypatch.setattr(torch_scan, "_CHUNK_ELEMS", 16 * 2 * 6 * 4)
    compare(fn, make_inputs(2, 2, 3, 4, 300, per_sample_A=True, per_sample_D=True))


@pytest.mark.parametrize("fn", CPU_BACKENDS)
def test_autocast_keeps_state_and_output_fp32(fn):
    """Under bf16 autocast (forward and backward inside it) the scan's own products stay
    float32: fp32 inputs give the fp32 reference's result, not a bf16-rounded one."""
    xs = make_inputs(2, 2, 3, 4, 40, per_sample_A=True)
    ys = clone(xs)
    y_ref, g_ref, gy = run(selective_scan_ref, xs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, g, _ = run(fn, ys, gy=gy)
    assert_rel_close(y, y_ref, 1e-5, "y")  # bf16 products would be ~3e-3 off
    for name, a, b in zip(NAMES, g, g_ref):
        assert_rel_close(a, b, 1e-5, f"d{name}")


@pytest.mark.parametrize("fn", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs(fn, dtype):
    xs = make_inputs(2, 2, 3, 4, 25, per_sample_A=True, dtype=dtype)
    ys = clone(xs)
    y_ref, g_ref, gy = run(selective_scan_ref, xs)
    y, g, _ = run(fn, ys, gy=gy)
    # state and output stay fp32: the same rounded inputs give fp32-close outputs
    assert y.dtype == torch.float32
    assert_rel_close(y, y_ref, 1e-4, "y")
    for name, a, b in zip(NAMES, g, g_ref):
        assert a.dtype == b.dtype, name  # gradients come back in the input's dtype
        assert_rel_close(a, b, 2e-2, f"d{name}")


@pytest.mark.parametrize("fn", CPU_BACKENDS)
@pytest.mark.parametrize(
    "default", [torch.bfloat16, torch.float16, torch.float64], ids=["bf16", "fp16", "fp64"]
)
def test_default_dtype_does_not_reach_the_scan(fn, default):
    """trainer.precision=bf16-true (16-true, 64-true) sets torch's default dtype around each step;
    numba's buffers took it and the scan failed ('unsupported ScalarType BFloat16')."""
    xs = make_inputs(2, 2, 3, 4, 25, per_sample_A=True)
    ys = clone(xs)
    y_ref, g_ref, gy = run(selective_scan_ref, xs)
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        y, g, _ = run(fn, ys, gy=gy)
    finally:
        torch.set_default_dtype(old)
    assert_rel_close(y, y_ref, 1e-5, "y")
    for name, a, b in zip(NAMES, g, g_ref):
        assert_rel_close(a, b, 1e-5, f"d{name}")


@pytest.mark.parametrize("fn", CPU_BACKENDS)
def test_per_sample_batch_equals_per_sample_calls(fn):
    xs = make_inputs(3, 2, 4, 4, 31, per_sample_A=True, per_sample_D=True)
    y_batch, g_batch, gy = run(fn, xs)
    for b in range(3):
        one = [t.detach()[b : b + 1].clone() for t in xs[:2]]
        one += [xs[2].detach()[b].clone()]  # shared-A form (K·D, N)
        one += [t.detach()[b : b + 1].clone() for t in xs[3:5]]
        one += [xs[5].detach()[b].clone(), xs[6].detach().clone()]
        one = [t.requires_grad_() for t in one]
        y, g, _ = run(fn, one, gy=gy[b : b + 1])
        assert_rel_close(y, y_batch[b : b + 1], 1e-6, "y")
        assert_rel_close(g[2], g_batch[2][b], 1e-5, "dA")
        assert_rel_close(g[5], g_batch[5][b], 1e-5, "dD")
        for i in (0, 1, 3, 4):
            assert_rel_close(g[i], g_batch[i][b : b + 1], 1e-5, f"d{NAMES[i]}")


@pytest.mark.parametrize("fn", CPU_BACKENDS)
def test_empty_batch_gives_empty_output_and_gradients(fn):
    xs = make_inputs(0, 2, 3, 4, 5, per_sample_A=False, per_sample_D=False)
    y, grads, _ = run(fn, xs)
    assert y.shape == (0, 6, 5)
    assert all(g is None or g.shape == t.shape for g, t in zip(grads, xs))


@pytest.mark.parametrize("fn", CPU_BACKENDS)
@pytest.mark.parametrize("gy_requires_grad", [False, True], ids=["plain_gy", "gy_with_graph"])
def test_double_backward_is_refused_not_silently_first_order(fn, gy_requires_grad):
    """create_graph=True through a fast scan raises; with once_differentiable a gradient of
    y.sum() came back as a constant, so ∂(‖∂y/∂u‖²)/∂Δ was silently missing (None)."""
    xs = make_inputs(1, 2, 2, 3, 5)
    y = fn(*xs[:6], delta_bias=xs[6])
    gy = torch.ones_like(y).requires_grad_(gy_requires_grad)
    with pytest.raises(RuntimeError, match="no double backward"):
        (du,) = torch.autograd.grad(y, xs[0], gy, create_graph=True)
        torch.autograd.grad(du.pow(2).sum(), xs[1], allow_unused=True)
    # first order is unaffected, and the reference has the second-order term
    y = fn(*xs[:6], delta_bias=xs[6])
    assert torch.autograd.grad(y.sum(), xs[0])[0].shape == xs[0].shape
    y = selective_scan_ref(*xs[:6], delta_bias=xs[6])
    (du,) = torch.autograd.grad(y.sum(), xs[0], create_graph=True)
    assert torch.autograd.grad(du.pow(2).sum(), xs[1])[0].abs().sum() > 0


def _op_args(fn, case: str) -> tuple[list, list]:
    """A backend's forward-op arguments for a CASES case (Δ's options as the backend passes
    them), and its backward op's: gy, the forward's inputs, the states the forward kept."""
    u, delta, A, B, C, D, bias = (None if t is None else t.detach() for t in make_inputs(**CASES[case]))
    a = A.unsqueeze(0) if A.dim() == 2 else A
    if fn is selective_scan_torch:
        args = [u, scan_delta(delta, bias, True), a, B, C]
        y, states = torch_scan._scan_op(*args)
        grad_args = [torch.randn_like(y), *args, states]
    else:
        d = None if D is None else (D.unsqueeze(0) if D.dim() == 1 else D)
        args = [u, delta, a, B, C, d, bias, True, True]  # softplus, keep the states
        y, states = numba_scan._scan_op(*args)
        grad_args = [torch.randn_like(y), *args[:-1], states]
    return [t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args], grad_args


@pytest.mark.parametrize("fn", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["shared", "per_sample_AD", "noD"])
def test_scan_custom_ops_pass_opcheck(fn, case):
    """Schema, autograd registration, fake kernels against the real ones, AOT dispatch with
    dynamic shapes: forward op and backward op of each CPU backend."""
    module = torch_scan if fn is selective_scan_torch else numba_scan
    args, grad_args = _op_args(fn, case)
    torch.library.opcheck(module._scan_op, args)
    torch.library.opcheck(module._scan_grad_op, grad_args)


@pytest.mark.parametrize("fn", CPU_BACKENDS)
def test_compiled_scan_is_one_graph_for_every_length_and_equals_eager(fn):
    """torch.compile(fullgraph=True, dynamic=True): the torch scan's chunk loop was traced (a
    recompile per length), numba's kernels broke the graph. As custom ops one graph serves
    lengths across chunk and tile boundaries, with the eager outputs and gradients bit for bit."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")  # autograd traced too; inductor takes minutes
    compiled = torch.compile(fn, backend=counter, dynamic=True, fullgraph=True)
    for length in (19, 300, 7000):  # one and several chunks (torch: 256) and tiles (numba: 6553)
        xs = make_inputs(2, 3, 4, 5, length, per_sample_A=True)
        y_eager, g_eager, gy = run(fn, xs)
        y, g, _ = run(compiled, clone(xs), gy=gy)
        assert torch.equal(y, y_eager)
        for name, a, b in zip(NAMES, g, g_eager):
            assert torch.equal(a, b), name
    assert counter.frame_count == 1


def test_ss2d_empty_batch_gives_an_empty_map():
    from samam.nn.ss2d import SS2D

    for name in ("torch", "numba") if numba_available() else ("torch",):
        ss2d = SS2D(4, 3, 2, "zigzag", resolve_scan_backend(name), static_params=True)
        assert ss2d(torch.randn(0, 4, 3, 5)).shape == (0, 4, 3, 5)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_matches_torch_at_model_width():
    # one SaMam-like scan (K = 4 groups, N = 16), too large for the Python-loop reference
    xs = make_inputs(1, 4, 32, 16, 256, per_sample_A=True, per_sample_D=True)
    y_t, g_t, gy = run(selective_scan_torch, xs)
    y_n, g_n, _ = run(selective_scan_numba, clone(xs), gy=gy)
    assert_rel_close(y_n, y_t, 1e-5, "y")
    for name, a, b in zip(NAMES, g_n, g_t):
        assert_rel_close(a, b, 1e-4, f"d{name}")


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_growth_overflows_to_inf_as_the_reference():
    """A > 0 is outside the model (A = −exp(·)): e^{ΔA} past float32's range must still give
    non-finite outputs, as in the reference, not a wrapped exponent (which gave finite ones)."""
    u, delta = torch.ones(1, 1, 3), torch.ones(1, 1, 3)
    A, B, C = torch.full((1, 1), 89.5), torch.ones(1, 1, 1, 3), torch.ones(1, 1, 1, 3)
    kw = dict(delta_softplus=False)
    ref = selective_scan_ref(u, delta, A, B, C, **kw)
    y = selective_scan_numba(u, delta, A, B, C, **kw)
    assert not torch.isfinite(ref).any()  # e^89.5 overflows: inf·0 and inf − inf make NaN
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))


# ----- backend resolution -------------------------------------------------------------


def test_backend_names():
    assert BACKENDS == ("auto", "torch", "numba", "mamba")


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="auto, torch, numba, mamba"):
        resolve_scan_backend("cuda-fast")  # type: ignore[arg-type]


@pytest.mark.skipif(mamba_available() and torch.cuda.is_available(), reason="mamba works here")
def test_mamba_unavailable_fails_at_resolve_with_install_command():
    with pytest.raises(
        RuntimeError, match="MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm"
    ):
        resolve_scan_backend("mamba")


def test_auto_on_cpu_prefers_numba(caplog):
    with caplog.at_level(logging.INFO, logger="samam"):
        backend = resolve_scan_backend("auto")
    assert isinstance(backend, ScanBackend)
    assert backend.name == "auto"
    expected = "numba" if numba_available() else "torch"
    assert f"cpu: {expected}" in backend.describe()
    assert [r.getMessage() for r in caplog.records if r.name == "samam"] == [
        f"selective-scan backend: {backend.describe()}"
    ]
    xs = make_inputs(1, 2, 3, 4, 9)
    ref = selective_scan_ref(*xs[:6], delta_bias=xs[6])
    assert_rel_close(backend(*xs[:6], delta_bias=xs[6]).detach(), ref.detach(), 1e-5, "y")


def _backend_lines(caplog) -> int:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="samam"):
        resolve_scan_backend("torch")
    return sum(r.getMessage().startswith("selective-scan backend:") for r in caplog.records)


@pytest.mark.parametrize("rank, node, lines", [(0, "0", 1), (1, "0", 0), (0, "1", 0)])
def test_the_backend_line_is_left_to_the_first_process(caplog, monkeypatch, rank, node, lines):
    """Every DDP rank builds the network, and each logged the backend line (8 alike on 8 GPUs):
    Lightning's rank, known before the process group exists, as for the other rank-0 lines."""
    rank_zero_only = pytest.importorskip("lightning.pytorch.utilities").rank_zero_only
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.setenv("NODE_RANK", node)  # rank 0 of another node's launcher
    assert _backend_lines(caplog) == lines


def test_without_lightning_the_backend_line_follows_the_process_group(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # not imported (the core install has none)
    assert _backend_lines(caplog) == 1  # one process
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    for rank, lines in ((1, 0), (0, 1)):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        assert _backend_lines(caplog) == lines


def test_resolving_a_backend_logs_without_importing_lightning():
    code = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from samam.ops.selective_scan import resolve_scan_backend
resolve_scan_backend("torch")
print("lightning" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
    assert "selective-scan backend: torch (cpu: torch, cuda: torch)" in out.stderr


def test_without_numba_auto_falls_back_and_numba_fails_at_resolve():
    code = """
import sys
sys.modules["numba"] = None  # import numba now raises ImportError
from samam.ops.selective_scan import numba_available, resolve_scan_backend
print(numba_available(), resolve_scan_backend("auto").describe())
try:
    resolve_scan_backend("numba")
except RuntimeError as e:
    print("pip install" in str(e))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["False auto (cpu: torch, cuda: torch)", "True"]


def test_torch_backend_and_shape_errors():
    backend = resolve_scan_backend("torch")
    assert backend.describe() == "torch (cpu: torch, cuda: torch)"
    u, delta, A, B, C, D, bias = make_inputs(2, 2, 3, 4, 9)
    with pytest.raises(ValueError, match=r"B must have shape \(B, K, N, L\)"):
        backend(u, delta, A, B[:, :, :, :5], C, D, delta_bias=bias)
    with pytest.raises(ValueError, match=r"A must have shape \(K·D, N\) = \(6, 4\)"):
        backend(u, delta, A[:, :3], B, C, D, delta_bias=bias)
    with pytest.raises(ValueError, match="not divisible by the K=4 groups"):
        backend(u, delta, A, torch.cat([B, B], 1), torch.cat([C, C], 1), D, delta_bias=bias)
    with pytest.raises(ValueError, match=r"D must have shape"):
        backend(u, delta, A, B, C, D[:2], delta_bias=bias)


def test_import_is_lazy():
    code = "import sys, samam.ops.selective_scan; print('numba' in sys.modules, 'mamba_ssm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----- GPU: mamba-ssm's kernel --------------------------------------------------------

needs_mamba = pytest.mark.skipif(not mamba_available(), reason="mamba_ssm not importable")


def _to_cuda(xs):
    return [None if t is None else t.detach().cuda().requires_grad_() for t in xs]


@pytest.mark.gpu
@needs_mamba
@pytest.mark.parametrize("case", ["shared", "per_sample_AD", "G1_perA_sharedD", "sharedA_perD_noBias"])
def test_mamba_matches_torch_backend(case):
    from samam.ops.selective_scan.mamba_scan import selective_scan_mamba

    xs = _to_cuda(make_inputs(**{**CASES[case], "length": 300}))
    y_t, g_t, gy = run(selective_scan_torch, xs)
    y_m, g_m, _ = run(selective_scan_mamba, clone(xs), gy=gy)
    assert_rel_close(y_m, y_t, 1e-4, "y")
    for name, a, b in zip(NAMES, g_m, g_t):
        if b is not None:
            assert_rel_close(a, b, 1e-3, f"d{name}")


@pytest.mark.gpu
@needs_mamba
def test_mamba_fold_equals_per_sample_loop():
    from samam.ops.selective_scan.mamba_scan import selective_scan_mamba

    xs = _to_cuda(make_inputs(3, 4, 16, 16, 128, per_sample_A=True, per_sample_D=True))
    y_batch, g_batch, gy = run(selective_scan_mamba, xs)
    for b in range(3):
        one = [t.detach()[b : b + 1] for t in xs[:2]] + [xs[2].detach()[b]]
        one += [t.detach()[b : b + 1] for t in xs[3:5]] + [xs[5].detach()[b], xs[6].detach()]
        one = [t.clone().requires_grad_() for t in one]
        y, g, _ = run(selective_scan_mamba, one, gy=gy[b : b + 1])
        assert_rel_close(y, y_batch[b : b + 1], 1e-5, "y")
        assert_rel_close(g[2], g_batch[2][b], 1e-4, "dA")
        assert_rel_close(g[5], g_batch[5][b], 1e-4, "dD")
        assert_rel_close(g[3], g_batch[3][b : b + 1], 1e-4, "dB")


@pytest.mark.gpu
@needs_mamba
def test_mamba_batch_32_released_width_runs_and_matches_torch():
    """65536 folded channels, one over the CUDA grid limit: the split call runs and agrees."""
    from samam.ops.selective_scan.mamba_scan import selective_scan_mamba

    xs = _to_cuda(make_inputs(32, 4, 512, 16, 64, per_sample_A=True, per_sample_D=True))
    y_t, g_t, gy = run(selective_scan_torch, xs)
    y_m, g_m, _ = run(selective_scan_mamba, clone(xs), gy=gy)
    assert_rel_close(y_m, y_t, 1e-4, "y")
    assert_rel_close(g_m[0], g_t[0], 1e-3, "du")


@pytest.mark.gpu
@needs_mamba
def test_auto_on_cuda_uses_mamba_and_numba_refuses_cuda():
    backend = resolve_scan_backend("auto")
    assert "cuda: mamba" in backend.describe()
    xs = _to_cuda(make_inputs(1, 2, 3, 4, 9))
    if numba_available():
        with pytest.raises(RuntimeError, match="CPU only"):
            resolve_scan_backend("numba")(*xs[:6], delta_bias=xs[6])


def _stand_in_kernel(calls: list, dtypes: set | None = None):
    """selective_scan_ref behind mamba-ssm's argument checks (selective_scan.cpp) and launch limit;
    each call's shapes go to `calls`, and the dtype of its u to `dtypes` when given."""

    def kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        assert A.dim() == 2 and (D is None or D.dim() == 1) and z is None  # no per-sample A, D
        assert u.dtype in (torch.float32, torch.bfloat16, torch.float16)
        assert delta.dtype == B.dtype == C.dtype == u.dtype, (u.dtype, delta.dtype, B.dtype, C.dtype)
        assert A.dtype == torch.float32 and all(
            t is None or t.dtype == torch.float32 for t in (D, delta_bias)
        )
        assert u.shape[1] <= 65535, "grid dimension y"
        calls.append((tuple(u.shape), tuple(B.shape)))
        if dtypes is not None:
            dtypes.add(u.dtype)
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus).to(u.dtype)

    return kernel


def test_mamba_double_backward_is_refused(monkeypatch):
    """mamba-ssm's backward is its CUDA kernel (gradients that count as constants): create_graph
    through it raises, as for the torch and numba backends, instead of dropping second-order terms."""
    from samam.ops.selective_scan import mamba_scan

    monkeypatch.setattr(mamba_scan, "_load", lambda: _stand_in_kernel([]))
    xs = make_inputs(1, 2, 2, 3, 5)
    y = mamba_scan.selective_scan_mamba(*xs[:6], delta_bias=xs[6])
    assert torch.autograd.grad(y.sum(), xs[0], retain_graph=True)[0].shape == xs[0].shape
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(y.sum(), xs[0], create_graph=True)


def test_mamba_fold_with_stand_in_kernel(monkeypatch):
    """The batch fold of SPEC §4, checked on CPU with the reference standing in for the kernel."""
    from samam.ops.selective_scan import mamba_scan

    calls = []
    monkeypatch.setattr(mamba_scan, "_load", lambda: _stand_in_kernel(calls))
    xs = make_inputs(3, 2, 4, 5, 11, per_sample_A=True, per_sample_D=True)
    compare(mamba_scan.selective_scan_mamba, xs, fwd_tol=1e-6, bwd_tol=1e-6)
    assert calls == [((1, 3 * 8, 11), (1, 3 * 2, 5, 11))]
    calls.clear()
    compare(mamba_scan.selective_scan_mamba, make_inputs(3, 2, 4, 5, 11), fwd_tol=1e-6, bwd_tol=1e-6)
    assert calls == [((3, 8, 11), (3, 2, 5, 11))]


def test_mamba_wrapper_passes_delta_softplus_through(monkeypatch):
    """With delta_softplus=False the kernel must get False (Δ used as given)."""
    from samam.ops.selective_scan import mamba_scan

    monkeypatch.setattr(mamba_scan, "_load", lambda: _stand_in_kernel([]))
    xs = make_inputs(2, 2, 3, 4, 11, per_sample_A=True)
    with torch.no_grad():
        xs[1].copy_(torch.rand_like(xs[1]) * 0.3)  # a positive Δ
    compare(mamba_scan.selective_scan_mamba, xs, softplus=False, fwd_tol=1e-6, bwd_tol=1e-6)


@pytest.mark.parametrize("per_sample", [True, False])
def test_mamba_splits_calls_at_the_launch_limit(monkeypatch, per_sample):
    """Over the channel limit the call is split along whole groups, with the same result.
    The limit is lowered to 9 here: 2 groups of 4 channels per call."""
    from samam.ops.selective_scan import mamba_scan

    calls = []
    monkeypatch.setattr(mamba_scan, "_load", lambda: _stand_in_kernel(calls))
    monkeypatch.setattr(mamba_scan, "MAX_CHANNELS_PER_CALL", 9)
    xs = make_inputs(3, 2, 4, 5, 11, per_sample_A=per_sample, per_sample_D=per_sample)
    compare(mamba_scan.selective_scan_mamba, xs, fwd_tol=1e-6, bwd_tol=1e-6)
    if per_sample:  # 6 folded groups → 3 calls of 2 groups
        assert calls == [((1, 8, 11), (1, 2, 5, 11))] * 3
    else:  # 2 groups of each sample → 1 call
        assert calls == [((3, 8, 11), (3, 2, 5, 11))]


def test_mamba_batch_32_of_the_released_width_is_split(monkeypatch):
    """The released SS2D (4 directions × 512 channels) with per-sample A folds a batch of 32
    into 65536 channels, one over the grid limit: 127 groups go in the first call, 1 in the next."""
    from samam.ops.selective_scan import mamba_scan

    calls = []
    monkeypatch.setattr(mamba_scan, "_load", lambda: _stand_in_kernel(calls))
    xs = make_inputs(32, 4, 512, 2, 3, per_sample_A=True, per_sample_D=True)
    y = mamba_scan.selective_scan_mamba(*xs[:6], delta_bias=xs[6])
    assert calls == [((1, 127 * 512, 3), (1, 127, 2, 3)), ((1, 512, 3), (1, 1, 2, 3))]
    assert_rel_close(y, selective_scan_ref(*xs[:6], delta_bias=xs[6]), 1e-6, "y")


@pytest.mark.parametrize("low", [(0, 1, 3, 4), (1, 3, 4)], ids=["all-bf16", "mixed"])
def test_mamba_kernel_gets_float32(monkeypatch, low):
    """bf16 (or mixed) u, Δ, B, C reach the kernel as float32, so its output (which takes
    their dtype) is float32 as the contract says, equal to the reference on the same values."""
    from samam.ops.selective_scan import mamba_scan

    calls, dtypes = [], set()
    monkeypatch.setattr(mamba_scan, "_load", lambda: _stand_in_kernel(calls, dtypes))
    xs = make_inputs(2, 2, 4, 5, 11, per_sample_A=True)
    for i in low:
        xs[i] = xs[i].detach().bfloat16().requires_grad_()
    y = mamba_scan.selective_scan_mamba(*xs[:6], delta_bias=xs[6])
    assert y.dtype == torch.float32 and dtypes == {torch.float32} and len(calls) == 1
    assert_rel_close(y, selective_scan_ref(*xs[:6], delta_bias=xs[6]), 1e-5, "y")
    with pytest.raises(ValueError, match="launch limit"):
        monkeypatch.setattr(mamba_scan, "MAX_CHANNELS_PER_CALL", 3)
        mamba_scan.selective_scan_mamba(*xs[:6], delta_bias=xs[6])


def test_mamba_loads_the_scan_without_the_package_init(tmp_path, monkeypatch):
    """Only mamba_ssm.ops.selective_scan_interface is imported (the package's __init__ pulls
    in transformers and Triton layers); afterwards `import mamba_ssm` is the real package."""
    from samam.ops.selective_scan import mamba_scan

    pkg = tmp_path / "mamba_ssm"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the heavy __init__ ran')\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "selective_scan_interface.py").write_text(
        "def selective_scan_fn(*a, **k):\n    return 'kernel'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    mamba_scan._load.cache_clear()
    try:
        fn = mamba_scan._load()
        assert callable(fn) and fn() == "kernel"
        assert "mamba_ssm" not in sys.modules  # the bare stand-in package is gone again
        with pytest.raises(ImportError, match="heavy __init__"):
            importlib.import_module("mamba_ssm")
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]
        mamba_scan._load.cache_clear()


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_two_threads_keeps_torch_threads():
    """2 numba threads (channel blocks, per-block dB/dC partials) agree with torch, and numba's
    OpenMP start-up does not leave torch at NUMBA_NUM_THREADS intra-op threads."""
    code = """
import torch
from samam.ops.selective_scan import selective_scan_numba, selective_scan_torch
torch.manual_seed(0)
xs = [torch.randn(1, 6, 40), torch.randn(1, 6, 40), -torch.rand(1, 6, 4), torch.randn(1, 1, 4, 40),
      torch.randn(1, 1, 4, 40), torch.randn(1, 6), torch.randn(6)]
selective_scan_numba(*xs[:6], delta_bias=xs[6])  # starts numba's thread pool
threads_after_start = torch.get_num_threads()
torch.set_num_threads(2)
grads = []
for fn in (selective_scan_numba, selective_scan_torch):
    leaves = [t.clone().requires_grad_() for t in xs]
    fn(*leaves[:6], delta_bias=leaves[6]).square().sum().backward()
    grads.append([t.grad for t in leaves])
err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*grads))
print(err < 1e-5, threads_after_start)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "1"]


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_without_a_writable_cache_folder_compiles_in_memory():
    """A read-only install with no writable home (a container as nobody) leaves numba no
    folder for cache=True, which it refuses with "cannot cache function". Simulated here by
    naming a locator that never applies to a plain .py file."""
    code = (
        "from samam.ops.selective_scan import numba_scan; print(numba_scan._kernels().fwd.py_func.__name__)"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["_scan_fwd"]
    assert "set NUMBA_CACHE_DIR" in out.stderr


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_kernels_run_as_python_under_numba_disable_jit():
    """NUMBA_DISABLE_JIT=1, numba's switch for debugging kernels as Python: same results."""
    code = """
import torch
from samam.ops.selective_scan import selective_scan_numba, selective_scan_torch
torch.manual_seed(0)
xs = [torch.randn(2, 4, 9), torch.randn(2, 4, 9), -torch.rand(2, 4, 3), torch.randn(2, 2, 3, 9),
      torch.randn(2, 2, 3, 9), torch.randn(2, 4), torch.randn(4)]
outs = []
for fn in (selective_scan_numba, selective_scan_torch):
    leaves = [t.clone().requires_grad_() for t in xs]
    y = fn(*leaves[:6], delta_bias=leaves[6])
    y.square().sum().backward()
    outs.append([y] + [t.grad for t in leaves])
print(max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*outs)) < 1e-5)
"""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_kernels_compiled_and_loaded_from_the_cache_agree_bit_for_bit(tmp_path):
    """The process that compiles the kernels (first run after an install or a kernel change)
    runs the helper kernels it compiled on their own; a process that loads _scan_fwd/_scan_bwd
    from numba's cache runs the copies inside them. Both must give the same bits, or a
    run's step-1 loss depends on whether the cache was warm."""
    code = """
import sys, torch
from samam.ops.selective_scan import numba_scan, selective_scan_numba
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
bt, kd, k, n, length = 2, 32, 4, 16, 300
xs = [torch.randn(bt, kd, length, generator=g), torch.randn(bt, kd, length, generator=g) * 0.5 - 2,
      -torch.exp(torch.randn(kd, n, generator=g) * 0.5), torch.randn(bt, k, n, length, generator=g),
      torch.randn(bt, k, n, length, generator=g), torch.randn(kd, generator=g), torch.randn(kd, generator=g)]
leaves = [t.requires_grad_() for t in xs]
y = selective_scan_numba(*leaves[:6], delta_bias=leaves[6])
y.square().sum().backward()
kernels = numba_scan._kernels()
print(sum(kernels.fwd.stats.cache_hits.values()) + sum(kernels.bwd.stats.cache_hits.values()))
torch.save([y.detach()] + [t.grad for t in leaves], sys.argv[1])
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    results = []
    for run in ("compiled", "cached"):
        path = tmp_path / f"{run}.pt"
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        results.append((int(out.stdout.split()[-1]), torch.load(path)))
    (hits_compiled, compiled), (hits_cached, cached) = results
    assert (hits_compiled, hits_cached) == (0, 2)  # the first compiled both kernels, the second loaded both
    for name, a, b in zip(["y", *NAMES], compiled, cached, strict=True):
        assert torch.equal(a, b), f"{name}: {((a - b).abs().max() / b.abs().max()).item():.2e} apart"


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("tile", [7, 64])
@pytest.mark.parametrize("case", ["per_sample_AD", "sharedA_perD_noBias", "noD"])
def test_numba_time_tiles(case, tile, monkeypatch):
    """The numba forward scans in time tiles, carrying each channel's state across them:
    L = 300 crosses many tiles and is no multiple of the tile (forward and backward)."""
    from samam.ops.selective_scan import numba_scan

    monkeypatch.setattr(numba_scan, "_FWD_TILE_BYTES", tile * 8 * CASES[case]["n"])
    compare(selective_scan_numba, make_inputs(**{**CASES[case], "length": 300}))


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("items_per_thread", [2, 8])
def test_numba_default_tile_matches_torch(items_per_thread, monkeypatch):
    # N = 16 at the default tile size: L crosses two tile boundaries and ends mid-tile.
    # 8 items per thread split each group's 5 channels into 4 blocks of 2, 2, 1 and 0.
    from samam.ops.selective_scan import numba_scan

    monkeypatch.setattr(numba_scan, "_ITEMS_PER_THREAD", items_per_thread)
    n = 16
    tile = numba_scan._FWD_TILE_BYTES // (8 * n)
    xs = make_inputs(1, 2, 5, n, 2 * tile + 123, per_sample_A=True, per_sample_D=True)
    y_t, g_t, gy = run(selective_scan_torch, xs)
    y_n, g_n, _ = run(selective_scan_numba, clone(xs), gy=gy)
    assert_rel_close(y_n, y_t, 1e-5, "y")
    for name, a, b in zip(NAMES, g_n, g_t):
        assert_rel_close(a, b, 1e-4, f"d{name}")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_network_through_the_mamba_wrapper_with_stand_in_kernel(monkeypatch, precision):
    """The whole network with every SS2D calling selective_scan_mamba (the reference behind
    mamba-ssm's argument checks standing in for the CUDA kernel): every call passes the
    kernel's dtype and shape checks, also under bf16 autocast, and the output equals the
    torch backend's."""
    import contextlib

    from tiny import TINY

    from samam import SaMam
    from samam.nn.ss2d import SS2D
    from samam.ops.selective_scan import mamba_scan
    from samam.ops.selective_scan.backend import ScanBackend

    calls, dtypes = [], set()
    monkeypatch.setattr(mamba_scan, "_load", lambda: _stand_in_kernel(calls, dtypes))
    torch.manual_seed(0)
    net = SaMam(**{**TINY, "backend": "torch"}).eval()
    c, s = torch.rand(2, 3, 32, 40), torch.rand(2, 3, 64, 64)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), cast:
        ref = net(c, s)
        stand_in = ScanBackend("mamba", cpu=("mamba", mamba_scan.selective_scan_mamba), cuda=("mamba", None))
        for m in net.modules():
            if isinstance(m, SS2D):
                m.backend = stand_in
        out = net(c, s)
    assert len(calls) == sum(isinstance(m, SS2D) for m in net.modules())
    assert dtypes == {torch.float32}  # bf16 u, Δ, B, C are cast up: the scan's output is fp32
    tol = 1e-5 if precision == "fp32" else 2e-2  # bf16: the convs and matmuls around the scan
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("warn_only", [False, True])
def test_mamba_backend_alerts_under_deterministic_mode_when_a_gradient_will_flow(monkeypatch, warn_only):
    """mamba-ssm's backward adds dB, dC with atomics; deterministic mode (trainer.deterministic=true)
    checks only torch's own ops, so GPU training ran on, not reproducible, without a word."""
    from samam.ops.selective_scan import mamba_scan

    monkeypatch.setattr(mamba_scan, "_load", lambda: lambda u, *args, **kwargs: u)  # a stand-in kernel
    u, dt, A, B, C = (
        torch.randn(1, 4, 5),
        torch.randn(1, 4, 5),
        -torch.rand(4, 2),
        torch.randn(1, 2, 2, 5),
        torch.randn(1, 2, 2, 5),
    )
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        mamba_scan.selective_scan_mamba(u, dt, A, B, C)  # no gradient: nothing to alert
        with torch.no_grad():
            mamba_scan.selective_scan_mamba(u.requires_grad_(), dt, A, B, C)
        if warn_only:
            with pytest.warns(UserWarning, match="model.backend=torch runs torch ops only"):
                mamba_scan.selective_scan_mamba(u, dt, A, B, C)
        else:
            with pytest.raises(RuntimeError, match="atomics.*model.backend=torch runs torch ops only"):
                mamba_scan.selective_scan_mamba(u, dt, A, B, C)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
