"""Large images: SS2D's passes over samples, directions and channels equal the single pass,
blocks computed in channel parts equal the whole block, and at 8192² (p=8 and p=4) and
16384² (p=8) no tensor of the released network reaches 2^31 elements (32-bit index math)."""

import re

import pytest
import torch
from tiny import TINY, listening
from torch.utils._python_dispatch import TorchDispatchMode

from samam import SaMam
from samam.nn import blocks
from samam.nn.ss2d import SS2D, StyleSSMParams
from samam.ops.selective_scan import ScanBackend, numba_available, resolve_scan_backend, selective_scan_torch

CPU_BACKENDS = ["torch"] + (["numba"] if numba_available() else [])


def _ss2d(static: bool, backend: str) -> SS2D:
    torch.manual_seed(0)
    return SS2D(8, 4, 2, "zigzag", resolve_scan_backend(backend), static_params=static)


def _run(ss2d: SS2D, x: torch.Tensor, style: torch.Tensor | None, gen: StyleSSMParams | None, cap: int):
    ss2d.max_elements = cap
    params = [x, *ss2d.parameters()] + ([style, *gen.parameters()] if gen is not None else [])
    for p in params:
        p.grad = None
    A, D = gen(style) if gen is not None else (None, None)
    y = ss2d(x, A, D)
    (y * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum().backward()
    return y.detach(), [p.grad.clone() for p in params]


# (device, backend) pairs; CUDA sums and kernels round a little differently, hence its looser bounds.
PASS_CASES = [("cpu", b) for b in CPU_BACKENDS] + [
    pytest.param("cuda", b, marks=pytest.mark.gpu, id=f"cuda-{b}") for b in ("torch", "mamba")
]
TOLERANCE = {
    "cpu": (1e-6, 1e-6, 1e-5, 1e-6),
    "cuda": (1e-5, 1e-6, 1e-4, 1e-5),
}  # y rtol, atol; grad rtol, atol


@pytest.mark.parametrize("device, backend", PASS_CASES)
@pytest.mark.parametrize("static", [True, False], ids=["S6", "S7"])
def test_passes_over_samples_and_directions_equal_one_pass(static, device, backend):
    from samam.ops.selective_scan import mamba_available

    if backend == "mamba" and not mamba_available():
        pytest.skip("mamba_ssm not importable")
    ss2d = _ss2d(static, backend).to(device)
    torch.manual_seed(1)
    x = torch.randn(3, 8, 5, 7, device=device, requires_grad=True)
    gen = None if static else StyleSSMParams(6, 4, 8, 4).to(device)
    style = torch.randn(3, 6, device=device, requires_grad=True)  # per-sample A, D for S7
    per_direction = 8 * 5 * 7
    y_rtol, y_atol, g_rtol, g_atol = TOLERANCE[device]
    y_ref, g_ref = _run(ss2d, x, style, gen, cap=2**30)
    # (samples, directions) per pass: (1, 1), (1, 3) + (1, 1), (2, 4) + (1, 4); then, below one
    # direction, (1, 1) over channels 0-2, 3-5, 6-7
    for cap in (per_direction, 3 * per_direction, 8 * per_direction, 3 * 5 * 7):
        y, grads = _run(ss2d, x, style, gen, cap)
        torch.testing.assert_close(y, y_ref, rtol=y_rtol, atol=y_atol)  # matmul blocking may differ
        for g, ref in zip(grads, g_ref, strict=True):
            torch.testing.assert_close(g, ref, rtol=g_rtol, atol=g_atol)


@pytest.mark.parametrize("static", [True, False], ids=["S6", "S7"])
def test_channel_parts_equal_the_whole_map(static):
    """forward_parts on a map cut into channel parts returns the parts of forward's output,
    forward and backward (x_proj, which reads every channel, sums over the parts)."""
    ss2d = _ss2d(static, "torch")
    torch.manual_seed(1)
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    gen = None if static else StyleSSMParams(6, 4, 8, 4)
    A, D = gen(torch.randn(2, 6)) if gen is not None else (None, None)
    weights = torch.randn(2, 8, 5, 7)
    y = ss2d(x, A, D)
    grads = torch.autograd.grad((y * weights).sum(), [x, *ss2d.parameters()])
    for widths in ([3, 5], [1, 6, 1]):
        parts = ss2d.forward_parts(list(x.split(widths, dim=1)), A, D)
        assert [p.shape[1] for p in parts] == widths
        y_parts = torch.cat(parts, dim=1)
        torch.testing.assert_close(y_parts, y, rtol=1e-6, atol=1e-6)
        for g, ref in zip(
            torch.autograd.grad((y_parts * weights).sum(), [x, *ss2d.parameters()]), grads, strict=True
        ):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("static", [True, False], ids=["S6", "S7"])
def test_torch_compile_keeps_the_ops_around_an_eager_scan_kernel(static, dynamic):
    """The mamba kernel is compiler-disabled: the graph breaks at the call, and
    the rest of SS2D must still compile. A map under the cap went through the channel-part
    code, whose loops over ranges hold the call; Dynamo cannot resume after a break in a loop,
    so it ran all of SS2D._scan eagerly (x_proj and dt_proj matmuls included)."""
    kernel = ("stand-in", torch.compiler.disable(selective_scan_torch))
    ss2d = SS2D(8, 4, 2, "zigzag", ScanBackend("stand-in", cpu=kernel, cuda=kernel), static_params=static)
    x = torch.randn(2, 8, 5, 7)
    A, D = (None, None) if static else StyleSSMParams(6, 4, 8, 4)(torch.randn(2, 6))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(assume_static_by_default=not dynamic):  # torch.compile(dynamic=...)
        explained = torch._dynamo.explain(ss2d)(x, A, D)
    compiled = [node.target for graph in explained.graphs for node in graph.graph.nodes]
    assert compiled.count(torch.matmul) == 2  # x_proj and dt_proj of the one pass


@pytest.mark.parametrize(
    "switches",
    [{}, {"patch_size": 4}, {"sconv": False, "style_ssm": False, "scm": False}, {"out_norm": "instancenorm"}],
    ids=["released", "p4", "static-conv-S6-no-scm", "instancenorm"],
)
def test_blocks_in_channel_parts_equal_the_whole_blocks(monkeypatch, switches):
    """One sample whose block maps (B, D, H+2, W+2) pass MAX_BLOCK_ELEMENTS has every block
    computed in channel parts: same output and gradients as the unsplit network."""
    torch.manual_seed(0)
    # the tiny net: at embed_dim=16 the released arms' output was a constant (zero gradient)
    net = listening(SaMam(**TINY, backend="torch", **switches))
    p = net.cfg.patch_size
    c = torch.rand(2, 3, 5 * p, 6 * p, requires_grad=True)  # 5×6 tokens
    s = torch.rand(2, 3, 64, 64)
    weights = torch.rand(2, 3, 5 * p, 6 * p)
    calls: list[int] = []  # the channel parts each SS2D call is given (forward: the whole map)
    whole, split = SS2D.forward, SS2D.forward_parts
    monkeypatch.setattr(SS2D, "forward", lambda m, x, *a: calls.append(1) or whole(m, x, *a))
    monkeypatch.setattr(
        SS2D, "forward_parts", lambda m, parts, *a: calls.append(len(parts)) or split(m, parts, *a)
    )
    runs = []
    # the content blocks' maps, 2 · 64 · 7 · 8, in 7 parts (6 of 10 channels, 1 of 4); the
    # style encoder's (64 px: 10 × 10 padded tokens at p=8, 18 × 18 at p=4) in 13 or 64 parts
    for cap in (blocks.MAX_BLOCK_ELEMENTS, 2 * 10 * 7 * 8):
        monkeypatch.setattr(blocks, "MAX_BLOCK_ELEMENTS", cap)
        calls.clear()
        y = net(c, s)
        grads = torch.autograd.grad((y * weights).sum(), [c, *net.parameters()])
        runs.append((y.detach(), grads, list(calls)))
    (y1, g1, calls1), (y2, g2, calls2) = runs
    assert set(calls1) == {1} and min(calls2) > 1 and len(calls2) == len(calls1)
    assert g1[0].abs().max() > 1e-3  # the output follows the content through the blocks
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    for g, ref in zip(g2, g1, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "switches, name",
    [({"out_norm": "layernorm"}, "out_norm='layernorm'"), ({"mixer": "attention"}, "mixer='attention'")],
    ids=["layernorm", "attention"],
)
def test_blocks_that_mix_channels_run_whole_on_the_cpu_and_are_refused_elsewhere(monkeypatch, switches, name):
    """The arms that mix all channels at every token cannot run in channel parts: past
    MAX_BLOCK_ELEMENTS they run whole on the CPU (64-bit indexing) and elsewhere (here the meta
    device, standing for CUDA) raise an error naming the limit instead of failing in a kernel."""
    torch.manual_seed(0)
    net = SaMam(embed_dim=16, backend="torch", style_dim=16, **switches)
    net._check_image = lambda *args, **kwargs: None  # its checks read values
    c, s = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(c, s)
        monkeypatch.setattr(blocks, "MAX_BLOCK_ELEMENTS", 2 * 7 * 8)  # every block's maps pass it
        torch.testing.assert_close(net(c, s), ref, rtol=1e-5, atol=1e-6)  # the S6 blocks split
        net.to("meta")
        with pytest.raises(ValueError, match=rf"^{re.escape(name)} mixes .*MAX_BLOCK_ELEMENTS = 112 "):
            net(c.to("meta"), s.to("meta"))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest: dict[str, tuple[int, ...]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() > self.largest.get(str(func), (0, ()))[0]:
                self.largest[str(func)] = (t.numel(), tuple(t.shape))
        return out


@pytest.mark.parametrize(
    "patch, batch, side, style_side",
    [
        (8, 1, 8192, 256),
        (8, 2, 8192, 256),
        (8, 4, 8192, 256),
        (8, 8, 4096, 256),
        (8, 4, 8192, 8192),
        (8, 16, 256, 4096),
        (4, 1, 8192, 256),
        (4, 2, 8192, 8192),
        (8, 1, 16384, 256),
        (8, 4096, 256, 256),
    ],
)
def test_no_tensor_reaches_32_bit_index_limits_at_8192(patch, batch, side, style_side):
    """Shapes only, on the meta device: the released network at 8192² (where the release
    fails in its image decoder), a batch of 8 at 4096², and large style batches (4 styles at
    8192² or 16 at 4096² fill a (B, 512, 1024², or 512²) tensor of 2^31 in one pass), and
    4096 samples at 256² (the image decoder's thinnest strip of 3628 samples, the block
    chunk, would hold 2.7 · 10^9 elements). With p=4 at 8192², and p=8 at 16384², one
    sample's block maps (512, 2048², padded 2050²) pass 2^31 themselves: the blocks run in
    channel parts."""
    net = SaMam(backend="torch", patch_size=patch)
    scans = []

    def scan_shapes_only(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
        scans.append(u.numel())
        return torch.empty_like(u, dtype=torch.float32)

    for m in net.modules():
        if isinstance(m, SS2D):
            m.backend = scan_shapes_only
    net._check_image = lambda *args, **kwargs: None  # its NaN check reads values
    net = net.to("meta")
    mode = _LargestTensor()
    style = torch.empty(batch, 3, style_side, style_side, device="meta")
    with torch.no_grad(), mode:
        y = net(torch.empty(batch, 3, side, side, device="meta"), style)
        e_s = net.embed_style(style)
    assert y.shape == (batch, 3, side, side) and e_s.shape == (batch, 64, 3, 3)
    numel, shape, op = max((n, s, op) for op, (n, s) in mode.largest.items())
    assert numel < 2**31, f"{op} made a {shape} tensor"
    if side >= 8192:
        assert len(scans) > 8 and max(scans) <= SS2D.max_elements  # the scan ran in passes


def test_large_batches_run_in_chunks_of_samples_equal_to_one_pass(monkeypatch):
    """Past max_batch_elements the batch runs in chunks of samples: same outputs and gradients."""
    torch.manual_seed(0)
    net = listening(SaMam(**TINY, backend="torch"))  # at embed_dim=16 its output was a constant
    c = torch.rand(5, 3, 40, 48, requires_grad=True)
    s = torch.rand(5, 3, 64, 64)
    weights = torch.rand(5, 3, 40, 48)
    calls: list[int] = []
    whole = net._stylise
    monkeypatch.setattr(net, "_stylise", lambda x, e: calls.append(len(x)) or whole(x, e))
    runs = []
    for cap in (SaMam.max_batch_elements, 2 * net.d_inner * 7 * 8):  # 5 samples → chunks of 2, 2, 1
        monkeypatch.setattr(SaMam, "max_batch_elements", cap)
        calls.clear()
        y = net(c, s)
        (g,) = torch.autograd.grad((y * weights).sum(), c)
        runs.append((y.detach(), g, list(calls)))
    (y1, g1, calls1), (y2, g2, calls2) = runs
    assert calls1 == [5] and calls2 == [2, 2, 1]
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-6)


def test_large_style_batches_are_embedded_in_chunks_equal_to_one_pass(monkeypatch):
    """Styles are split by the same rule as contents, sized by the style images: the chunked
    embeddings, and the outputs through them, equal the single pass. Up to round-off only: CPU
    convs and matmuls pick their kernels by batch size, so a sample alone (the last chunk)
    can differ from the same sample in a batch in the last bit."""
    torch.manual_seed(0)
    net = listening(SaMam(**TINY, backend="torch"))
    c, s = torch.rand(5, 3, 40, 48), torch.rand(5, 3, 64, 64)  # content 5×6 tokens, style 8×8
    style_calls: list[int] = []
    whole = net._embed_chunk
    monkeypatch.setattr(net, "_embed_chunk", lambda x: style_calls.append(len(x)) or whole(x))
    runs = []
    # one pass; then chunks of 2 styles (2 · 10 · 10 per sample) and 3 contents (7 · 8 each)
    for cap in (SaMam.max_batch_elements, 2 * net.d_inner * 10 * 10):
        monkeypatch.setattr(SaMam, "max_batch_elements", cap)
        style_calls.clear()
        with torch.no_grad():
            runs.append((net.embed_style(s), net(c, s), list(style_calls)))
    (e1, y1, calls1), (e2, y2, calls2) = runs
    assert calls1 == [5, 5] and calls2 == [2, 2, 1, 2, 2, 1]  # embed_style, then forward
    # atol: 1e-6 of the embedding's scale (1e-7 before it was scaled up to listen)
    torch.testing.assert_close(e2, e1, rtol=1e-6, atol=1e-6 * e1.abs().max().item())
    torch.testing.assert_close(y2, y1, rtol=1e-6, atol=1e-7)
