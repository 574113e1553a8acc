import math
import re

import pytest
import torch
from tiny import TINY as TINY_PRESET
from tiny import listening, responsive

from samam import SaMam
from samam.ops.selective_scan import numba_available

TINY = {**TINY_PRESET, "backend": "torch"}
CPU_BACKENDS = ["torch"] + (["numba"] if numba_available() else [])


def tiny(**kw) -> SaMam:
    torch.manual_seed(0)
    return SaMam(**{**TINY, **kw}).eval()


def test_default_is_the_released_architecture():
    assert sum(p.numel() for p in SaMam(backend="torch").parameters()) == 19_772_007
    assert sum(p.numel() for p in SaMam(patch_size=4, backend="torch").parameters()) == 20_140_775


def test_config_rebuilds_the_network():
    net = tiny(scan="cross", scm=False)
    clone = SaMam(**net.config)
    clone.load_state_dict(net.state_dict())
    assert net.config == clone.config


@pytest.mark.parametrize("patch_size", [4, 8])
@pytest.mark.parametrize("hw", [(64, 64), (45, 77), (16, 16), (97, 33)])
def test_output_has_the_content_size(patch_size, hw):
    net = tiny(patch_size=patch_size)
    c, s = torch.rand(1, 3, *hw), torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        y = net(c, s)
    assert y.shape == c.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batch_of_styles_equals_single_runs(backend):
    net = listening(tiny(backend=backend))
    c, s = torch.rand(3, 3, 40, 56), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        batched = net(c, s)
        single = torch.cat([net(c[i : i + 1], s[i : i + 1]) for i in range(3)])
        swapped = net(c, s.roll(1, 0))  # what a sample given its neighbour's style looks like
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert (swapped - single).abs().max() > 2e-5


def test_different_styles_give_different_outputs():
    net = listening(tiny())
    c = torch.rand(1, 3, 48, 48).expand(2, -1, -1, -1)
    s = torch.stack([torch.zeros(3, 64, 64), torch.rand(3, 64, 64)])
    with torch.no_grad():
        y = net(c, s)
        same = net(c, s[1:].expand(2, -1, -1, -1))
    assert torch.equal(same[0], same[1])
    assert (y[0] - y[1]).abs().max() > 1e-5


def test_style_embedding_path_equals_image_path():
    net = listening(tiny())
    c, s = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(c, s), net(c, style_embedding=net.embed_style(s)))
    assert net.embed_style(s).shape == (2, 16, 3, 3)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_backends_agree_on_the_network():
    c, s = torch.rand(2, 3, 40, 48), torch.rand(2, 3, 64, 64)
    a, b = tiny(backend="torch"), tiny(backend="numba")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(c, s), b(c, s), rtol=1e-4, atol=1e-5)


SWITCHES = [
    dict(scan="cross"), dict(scan="spiral"), dict(scan="hilbert"), dict(style_ssm=False),
    dict(out_norm="layernorm"), dict(out_norm="instancenorm"), dict(sconv=False), dict(scm=False),
    dict(loe=False), dict(zero_init=True), dict(mixer="attention"), dict(patch_size=4),
]  # fmt: skip


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_every_switch_trains_every_parameter(switch):
    """Every parameter is in the graph and, by the second step, gets a non-zero gradient
    (zero-initialised layers may pass none until their neighbour has moved once)."""
    torch.manual_seed(0)
    net = tiny(**switch).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    c, s = torch.rand(2, 3, 32, 40), torch.rand(2, 3, 64, 64)
    for _ in range(2):
        opt.zero_grad()
        net(c, s).square().mean().backward()
        no_grad = [n for n, p in net.named_parameters() if p.grad is None]
        assert not no_grad, f"parameters outside the graph: {no_grad}"
        opt.step()
    # A PReLU slope sees gradient only from negative inputs, which this tiny batch may lack.
    prelu = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, torch.nn.PReLU)}
    zero = [n for n, p in net.named_parameters() if n not in prelu and not p.grad.abs().sum() > 0]
    assert not zero, f"parameters with an all-zero gradient at step 2: {zero}"


def test_switches_change_the_structure():
    names = lambda net: {n for n, _ in net.named_parameters()}  # noqa: E731
    base = names(tiny())
    assert "decoder.0.blocks.0.style_params.A_gen.weight" in base
    assert "decoder.0.blocks.0.ssm.A_log" in names(tiny(style_ssm=False))
    assert not any(".scm." in n for n in names(tiny(scm=False)))
    assert not any(".loe." in n for n in names(tiny(loe=False)))
    assert "decoder.0.blocks.0.conv.conv.weight" in names(tiny(sconv=False))
    assert "decoder.0.blocks.0.out_norm.norm.weight" in names(tiny(out_norm="layernorm"))


def test_a_scan_order_of_ones_own_builds_trains_and_equals_the_built_in_it_repeats(scan_module):
    c, s = torch.rand(2, 3, 40, 48), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = listening(tiny(scan="zigzag"))(c, s)
        same = listening(tiny(scan=f"{scan_module}:zigzag_again"))
        assert same.config["scan"] == f"{scan_module}:zigzag_again"  # the checkpoint keeps the path
        assert torch.equal(same(c, s), ref)
    net = listening(tiny(scan=f"{scan_module}:diagonal")).train()
    out = net(c, s)
    assert not torch.allclose(out, ref)  # another order, another network
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_a_network_is_built_under_the_meta_device(scan_module):
    """Checking the scan order reads index values, which meta tensors do not have."""
    for scan in ("zigzag", f"{scan_module}:diagonal"):
        with torch.device("meta"):
            net = SaMam(**{**TINY, "scan": scan})
        assert next(net.parameters()).is_meta


def _style_effect_per_path(net: SaMam) -> dict[str, float]:
    """How much each path of the first decoder block changes between two styles, same input."""
    torch.manual_seed(1)
    blk = net.decoder[0].blocks[0]
    e1, e2 = (net._embed(torch.rand(1, 3, 64, 64)) for _ in range(2))
    v1, v2 = e1.mean((2, 3)), e2.mean((2, 3))
    x = torch.randn(1, blk.in_proj.in_channels, 6, 7)
    h = torch.randn(1, blk.in_proj.out_channels, 6, 7)

    def ssm(e, v):
        return blk.ssm(h, *(blk.style_params(v) if blk.style_params is not None else (None, None)))

    def skip(e):
        return blk.scm(x, e) if blk.scm is not None else x

    pairs = {
        "in_norm": (blk.in_norm(x, v1), blk.in_norm(x, v2)),
        "conv": (blk.conv(h, e1), blk.conv(h, e2)),
        "ssm": (ssm(e1, v1), ssm(e2, v2)),
        "out_norm": (blk.out_norm(h, v1), blk.out_norm(h, v2)),
        "skip": (skip(e1), skip(e2)),
    }
    return {k: (a - b).abs().max().item() for k, (a, b) in pairs.items()}


@pytest.mark.parametrize(
    "switch, cut",
    [
        ({}, None),
        ({"sconv": False}, "conv"),
        ({"style_ssm": False}, "ssm"),
        ({"mixer": "attention"}, "ssm"),  # attention has no style-generated A, D
        ({"out_norm": "layernorm"}, "out_norm"),
        ({"out_norm": "instancenorm"}, "out_norm"),
        ({"scm": False}, "skip"),
    ],
)
@torch.no_grad()
def test_each_ablation_cuts_the_style_out_of_its_path_only(switch, cut):
    """Whole-network outputs barely move with the style at random init, so each path of a
    style-aware block is compared on its own: the ablated one ignores the style, the rest not."""
    effect = _style_effect_per_path(tiny(**switch))
    for path, diff in effect.items():
        if path == cut:
            assert diff == 0.0, (path, effect)
        else:
            assert diff > 1e-6, (path, effect)


def test_zero_init_starts_style_modulation_neutral():
    """SAIN = plain instance norm and SCM's gate = 0.5, whatever the style."""
    net = tiny(zero_init=True)
    blk = net.decoder[0].blocks[0]
    for style_vec in (torch.randn(2, 16), torch.zeros(2, 16)):
        assert torch.equal(blk.in_norm.gamma(style_vec), torch.ones(2, 32, 1, 1))
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(blk.in_norm(x, torch.randn(2, 16)), torch.nn.functional.instance_norm(x))
    torch.testing.assert_close(blk.scm(x, torch.randn(2, 16, 3, 3)), 0.5 * x)
    assert torch.count_nonzero(blk.scm.down.weight) > 0  # only the gate's last conv is zero


def test_s7_parameters_are_functions_of_the_style():
    blk = tiny().decoder[0].blocks[0]
    A, D = blk.style_params(torch.randn(2, 16))
    assert A.shape == (2, 4 * 64, 4) and D.shape == (2, 4 * 64)
    assert (A < 0).all()
    assert not torch.allclose(A[0], A[1])


def test_dt_bias_init_is_log_uniform_in_range():
    ssm = SaMam(backend="torch").content_encoder.blocks[0].ssm
    dt = torch.nn.functional.softplus(ssm.dt_proj_bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
    # log-uniform in [1e-3, 0.1]: its quartiles are 10^-2.5, 10^-2, 10^-1.5 (uniform: 0.026, 0.05, 0.075)
    quartiles = dt.detach().log10().flatten().quantile(torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(quartiles, torch.tensor([-2.5, -2.0, -1.5]), rtol=0, atol=0.1)
    assert ssm.dt_proj_weight.abs().max() <= 16**-0.5
    assert torch.allclose(ssm.A_log[5], torch.log(torch.arange(1.0, 17.0)))
    assert ssm.dt_rank == math.ceil(256 / 16)


class TestBadInput:
    net = None

    @pytest.fixture(autouse=True)
    def _net(self):
        self.net = tiny()

    def test_wrong_channel_count(self):
        with pytest.raises(ValueError, match=r"content must be \(B, 3, H, W\)"):
            self.net(torch.rand(1, 4, 32, 32), torch.rand(1, 3, 64, 64))

    def test_not_4d(self):
        with pytest.raises(ValueError, match="style must be"):
            self.net(torch.rand(1, 3, 32, 32), torch.rand(3, 64, 64))

    def test_smaller_than_a_patch(self):
        with pytest.raises(ValueError, match="needs at least 16 px"):
            self.net(torch.rand(1, 3, 15, 32), torch.rand(1, 3, 64, 64))

    def test_style_too_small_for_the_embedder(self):
        with pytest.raises(ValueError, match="needs at least 64 px"):
            self.net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 40, 64))

    def test_nan(self):
        c = torch.rand(1, 3, 32, 32)
        c[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN or Inf"):
            self.net(c, torch.rand(1, 3, 64, 64))

    def test_images_in_0_to_255_are_refused(self):
        """Floats in 0..255 (a forgotten / 255) ran silently and gave garbage; a resize's small
        overshoot past [0, 1] still runs, and training's unread inputs (check_finite off) too."""
        c, s = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 64)
        fix = r"SaMam takes images in \[0, 1\] \(for 0..255 values: x / 255\)"
        with pytest.raises(ValueError, match=rf"content has values up to 2\d\d(\.\d+)?: {fix}"):
            self.net(c * 255, s)
        for run in (lambda: self.net(c, s * 255), lambda: self.net.embed_style(s * 255)):
            with pytest.raises(ValueError, match=f"style has values up to .*: {fix}"):
                run()
        self.net(c * 1.1 - 0.05, s * 1.1 - 0.05)
        self.net.check_finite = False
        self.net(c * 255, s * 255)

    def test_integer_and_mismatched_float_images(self):
        with pytest.raises(TypeError, match=r"content is torch.uint8: pass floats in \[0, 1\]"):
            self.net((torch.rand(1, 3, 32, 32) * 255).to(torch.uint8), torch.rand(1, 3, 64, 64))
        with pytest.raises(TypeError, match="style is torch.float64 but the weights are torch.float32"):
            self.net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 64, dtype=torch.float64))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts: allowed
            self.net(torch.rand(1, 3, 32, 32).bfloat16(), torch.rand(1, 3, 64, 64))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # but leaves float64 as it is
            with pytest.raises(
                TypeError, match="content is torch.float64 but the weights are torch.float32: convert it$"
            ):
                self.net(torch.rand(1, 3, 32, 32, dtype=torch.float64), torch.rand(1, 3, 64, 64))

    def test_style_embedding_of_the_wrong_shape(self):
        s = self.net.cfg.style_dim
        with pytest.raises(ValueError, match=rf"style_embedding must be \(B, {s}, 3, 3\) from embed_style"):
            self.net(torch.rand(1, 3, 32, 32), style_embedding=torch.rand(1, 3, 3))

    def test_style_embedding_values_are_checked_as_images_are(self):
        c, e = torch.rand(1, 3, 32, 32), self.net.embed_style(torch.rand(1, 3, 64, 64))
        with pytest.raises(
            TypeError, match="style_embedding is torch.float64 but the weights are torch.float32"
        ):
            self.net(c, style_embedding=e.double())
        with pytest.raises(ValueError, match="style_embedding contains NaN or Inf"):
            self.net(c, style_embedding=e.clone().fill_(float("nan")))

    def test_empty_batch_gives_an_empty_output(self):
        out = self.net(torch.rand(0, 3, 40, 36), torch.rand(0, 3, 64, 64))
        assert out.shape == (0, 3, 40, 36)

    def test_attention_heads_divide_any_width(self):
        from samam.nn.blocks import AttentionMixer

        mixer = AttentionMixer(208)  # 208 // 64 = 3 heads would not divide 208
        assert 208 % mixer.heads == 0
        assert mixer(torch.rand(1, 208, 4, 4)).shape == (1, 208, 4, 4)

    def test_attention_gives_sdpa_unit_stride_rows_and_the_plain_attention(self, monkeypatch):
        import torch.nn.functional as F

        from samam.nn.blocks import AttentionMixer

        torch.manual_seed(0)
        mixer = AttentionMixer(128)  # 2 heads of 64
        x = torch.randn(2, 128, 3, 5)
        sdpa, strides = F.scaled_dot_product_attention, []
        monkeypatch.setattr(
            F,
            "scaled_dot_product_attention",
            lambda *t: strides.append([u.stride(-1) for u in t]) or sdpa(*t),
        )
        out = mixer(x)
        assert strides == [[1, 1, 1]]  # flash / memory-efficient kernels need it (else the L×L math kernel)
        q, k, v = mixer.qkv(x).view(2, 3, 2, 64, 15).transpose(-1, -2).unbind(1)  # the 1×1 conv, head by head
        a = torch.softmax(q @ k.transpose(-1, -2) / 8, dim=-1) @ v  # (B, heads, L, 64)
        torch.testing.assert_close(out, a.transpose(-1, -2).reshape(2, 128, 3, 5), rtol=1e-5, atol=1e-5)
        xc = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(mixer(xc), out, rtol=1e-5, atol=1e-5)

    def test_batch_mismatch(self):
        with pytest.raises(ValueError, match="batch sizes differ"):
            self.net(torch.rand(2, 3, 32, 32), torch.rand(1, 3, 64, 64))

    def test_style_and_embedding_exclusive(self):
        with pytest.raises(ValueError, match="exactly one"):
            self.net(torch.rand(1, 3, 32, 32))

    @pytest.mark.parametrize(
        "kw, msg",
        [
            (dict(scan="diagonal"), "scan='diagonal' is not one of"),
            (dict(scan="zigzg"), r"scan='zigzg' is not one of \(.*'hilbert', 'package.module:function'\)"),
            (dict(scan="no_such_orders:diagonal"), "scan order 'no_such_orders:diagonal' does not import"),
            (dict(out_norm="batchnorm"), "out_norm='batchnorm'"),
            (dict(patch_size=16), "patch_size=16"),
            (dict(mixer="conv"), "mixer='conv'"),
            (dict(backend="cuda_magic"), "cuda_magic"),
            (dict(embed_dim=36), "multiple of 8"),
            (dict(scm_reduction=32), "scm_reduction=32 leaves no channel of style_dim=16"),
        ],
    )
    def test_unknown_names(self, kw, msg):
        with pytest.raises(ValueError, match=msg):
            SaMam(**{**TINY, **kw})

    @pytest.mark.parametrize(
        "kw, named",
        [
            (dict(scan="cross"), "scan='cross'"),
            (dict(scan="hilbert", style_ssm=False), "scan='hilbert', style_ssm=False"),
            (dict(style_ssm=False), "style_ssm=False"),
        ],
    )
    def test_attention_refuses_the_scan_switches_it_ignores(self, kw, named):
        """Attention has no scan order and no A, D: these switches would build the same network
        (same weights, same outputs) under another name, so they are refused, not ignored."""
        with pytest.raises(ValueError, match=rf"{re.escape(named)} has no effect with mixer='attention'"):
            SaMam(**{**TINY, "mixer": "attention", **kw})
        SaMam(**{**TINY, "mixer": "ssm", **kw})  # the scan arm takes them
        SaMam(**{**TINY, "mixer": "attention", "scan": "zigzag", "style_ssm": True})  # the defaults

    @pytest.mark.parametrize("function", ["three", "repeated"])
    def test_a_malformed_scan_order_of_ones_own_fails_at_construction(self, scan_module, function):
        with pytest.raises(ValueError, match=f"scan order '{scan_module}:{function}' (gave|for a)"):
            SaMam(**{**TINY, "scan": f"{scan_module}:{function}"})

    @pytest.mark.parametrize("kw", [dict(sconv="off"), dict(loe="no"), dict(style_ssm="flase"), dict(scm=0)])
    def test_switches_that_are_not_booleans(self, kw):
        """`model.sconv=off` reaches SaMam as the string 'off', which is truthy: the other arm."""
        with pytest.raises(TypeError, match=f"{next(iter(kw))}=.* must be true or false"):
            SaMam(**{**TINY, **kw})

    @pytest.mark.parametrize(
        "kw, msg",
        [
            (dict(d_state=4.5), "d_state=4.5 must be an integer"),
            (dict(patch_size=8.0), "patch_size=8.0 must be an integer"),
            (dict(embed_dim=32.0), "embed_dim=32.0 must be an integer"),
            (dict(dt_rank=True), "dt_rank=True must be an integer"),
            (dict(expand="two"), "expand='two' must be a number"),
        ],
    )
    def test_numbers_of_the_wrong_kind(self, kw, msg):
        """`model.d_state=4.5` or `model.patch_size=8.0` on the command line failed deep in torch
        ("empty(): argument 'size' ... got float"), `model.expand=two` with "invalid literal for int()"."""
        with pytest.raises(TypeError, match=msg):
            SaMam(**{**TINY, **kw})


def test_numpy_numbers_are_taken_and_stored_plain():
    """A sweep written in Python (np.arange, np.float32) was refused: "embed_dim=np.int64(32) must
    be an integer". Stored as Python numbers: the config travels in weights_only checkpoints."""
    import numpy as np

    net = SaMam(**{**TINY, "embed_dim": np.int64(TINY["embed_dim"]), "expand": np.float32(1.5)})
    assert type(net.config["embed_dim"]) is int and type(net.config["expand"]) is float
    assert net.config["embed_dim"] == TINY["embed_dim"] and net.config["expand"] == 1.5
    for bad in (np.bool_(True), np.float64(8.0)):  # still refused: not an integer
        with pytest.raises(TypeError, match="patch_size=.* must be an integer"):
            SaMam(**{**TINY, "patch_size": bad})


@pytest.mark.parametrize("patch_size", [4, 8])
def test_strip_decoding_equals_the_unsplit_decoder(patch_size):
    from samam.nn.decoder import ImageDecoder

    torch.manual_seed(0)
    dec = ImageDecoder(32, patch_size)
    x = torch.randn(2, 32, 37, 11)
    with torch.no_grad():
        full = dec(x, max_elements=None)
        per_row = 2 * 11 * dec.peak_per_token
        for rows in (1, 3, 8):  # strips of 1, 3 and 8 token rows (plus halo)
            split = dec(x, max_elements=per_row * (rows + 2 * dec.halo))
            torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-6)
    assert full.shape == (2, 3, 37 * patch_size, 11 * patch_size)


def _check_split_decoding(dec, x: torch.Tensor, cap: int) -> None:
    """``dec`` under ``max_elements=cap`` makes no activation past the cap and equals one pass."""
    largest = []
    hooks = [m.register_forward_hook(lambda m, i, o: largest.append(o.numel())) for m in dec.layers]
    with torch.no_grad():
        split = dec(x, max_elements=cap)
        assert max(largest) <= cap * 1.2  # the count leaves out the reflection pads' 2 extra pixels
        for h in hooks:
            h.remove()
        torch.testing.assert_close(split, dec(x, max_elements=None), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("patch_size", [4, 8])
def test_strip_decoding_cuts_an_image_too_wide_for_one_strip_into_columns(patch_size):
    """When even one sample's thinnest strip passes max_elements (a very wide, short image:
    88 × 763,000 px at p=8 would pass 2^31 at the default cap), each strip is decoded in
    tiles of columns: same output, no activation past the cap."""
    from samam.nn.decoder import ImageDecoder

    torch.manual_seed(0)
    dec = ImageDecoder(32, patch_size)
    x = torch.randn(2, 32, 13, 47)
    cap = 15 * dec.peak_per_token * (1 + 2 * dec.halo)  # the thinnest strip of 15 token columns
    _check_split_decoding(dec, x, cap)


@pytest.mark.parametrize("patch_size", [4, 8])
def test_strip_decoding_splits_a_batch_too_large_for_one_strip(patch_size):
    """When even the thinnest strip (1 + 2·halo rows) of the whole batch passes max_elements,
    the batch is decoded in chunks of samples: same output, no activation past the cap."""
    from samam.nn.decoder import ImageDecoder

    torch.manual_seed(0)
    dec = ImageDecoder(32, patch_size)
    x = torch.randn(5, 32, 13, 11)
    cap = 2 * 11 * dec.peak_per_token * (1 + 2 * dec.halo)  # the thinnest strip of 2 samples
    _check_split_decoding(dec, x, cap)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "mamba"])
def test_gpu_batch_of_styles_equals_single_runs_and_cpu(backend):
    from samam.ops.selective_scan import mamba_available

    if backend == "mamba" and not mamba_available():
        pytest.skip("mamba_ssm not importable")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 vs fp32
    try:
        cpu = listening(tiny())
        gpu = tiny(backend=backend).cuda()
        gpu.load_state_dict(cpu.state_dict())
        c, s = torch.rand(3, 3, 40, 56), torch.rand(3, 3, 64, 64)
        with torch.no_grad():
            batched = gpu(c.cuda(), s.cuda())
            single = torch.cat([gpu(c[i : i + 1].cuda(), s[i : i + 1].cuda()) for i in range(3)])
            ref = cpu(c, s)
    finally:  # later tests in this process see the defaults
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.cpu(), ref, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_torch_compile_runs_around_the_numba_scan():
    net = tiny(backend="numba")
    eager = SaMam(**net.config).eval()
    eager.load_state_dict(net.state_dict())
    # aot_eager: autograd through the custom ops is what is tested; inductor codegen takes minutes
    net.compile(backend="aot_eager", dynamic=False)
    c, s = torch.rand(2, 3, 32, 40), torch.rand(2, 3, 64, 64)
    out = net(c, s)
    out.square().mean().backward()
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), eager(c, s), rtol=1e-4, atol=1e-5)
    assert net.content_encoder.patch_embed.weight.grad is not None


def test_inductor_compile_follows_a_new_content_size_with_the_torch_scan():
    """torch.compile(net) at its defaults recompiles for a second size with dynamic shapes; the
    edge padding's symbolic modulo made inductor fail there (the pure-torch scan is what CUDA
    runs without mamba-ssm)."""
    net = tiny(backend="torch")
    compiled = torch.compile(net)
    s = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for hw in ((33, 41), (49, 57)):
            c = torch.rand(1, 3, *hw)
            torch.testing.assert_close(compiled(c, s), net(c, s), rtol=1e-4, atol=1e-5)


def test_compile_with_dynamic_shapes_traces_the_torch_scan_network_in_one_graph():
    """Dynamo (torch 2.14) could not unpack ``order.shape`` in scan_orders.scan with dynamic
    shapes and broke the graph there, inside SS2D's loops over passes: every SS2D call then ran
    eagerly, its pieces compiled as frames of their own (19 graphs, 18 breaks for the tiny net)."""
    net = tiny(backend="torch")
    c, s = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 64, 64)
    torch._dynamo.reset()
    # what torch.compile(dynamic=True) sets
    with torch.no_grad(), torch._dynamo.config.patch(assume_static_by_default=False):
        explained = torch._dynamo.explain(net)(c, s)
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_with_dynamic_shapes_serves_new_content_sizes_without_recompiling(backend):
    """torch.compile(fullgraph=True, dynamic=True): the scan indices were graph constants and the
    torch scan's loops were traced, so each content size recompiled the network (eager past
    Dynamo's limit of 8); the numba scan broke the graph at every call. Now one graph."""
    from torch._dynamo.testing import CompileCounter

    net = tiny(backend=backend)
    s = torch.rand(1, 3, 64, 64)
    torch._dynamo.reset()
    counter = CompileCounter()  # Dynamo's graph as is: breaks and recompiles are what is tested
    compiled = torch.compile(net, backend=counter, dynamic=True, fullgraph=True)
    with torch.no_grad():
        for hw in ((32, 40), (40, 48), (48, 56)):
            c = torch.rand(1, 3, *hw)
            torch.testing.assert_close(compiled(c, s), net(c, s), rtol=0, atol=0)
    assert counter.frame_count == 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bf16_autocast_keeps_the_output_close_and_trains(backend):
    # responsive: the plain tiny net's output varies less than bf16's spacing at its level (and
    # than the bound below), so a bf16 path that lost the content entirely still passed
    net = responsive(tiny(backend=backend), gain=1.5)
    c, s = torch.rand(2, 3, 48, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(c, s)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(c, s)
    assert ((y.float() - ref).abs().max() / ref.abs().max()) < 3e-2  # bf16 has 8 mantissa bits
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(c, s).float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_network_pickles_whole_and_the_copy_runs(backend, tmp_path):
    """torch.save(net) / pickle (DataLoader workers, multiprocessing): the scan backend is
    pickled by name (its compiler-disabled mamba kernel cannot be pickled by reference)."""
    import copy
    import pickle

    net = tiny(backend=backend)
    c, s = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(c, s)
        back = pickle.loads(pickle.dumps(net))
        torch.save(net, tmp_path / "whole.pt")
        loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
        for other in (back, loaded):
            assert other.scan_backend.name == backend
            assert all(m.backend is other.scan_backend for m in other.modules() if hasattr(m, "backend"))
            torch.testing.assert_close(other(c, s), ref, rtol=0, atol=0)
    assert copy.deepcopy(net).scan_backend is net.scan_backend  # stateless: shared
