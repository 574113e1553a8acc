"""Each module against its definition written out by hand (SPEC §1–2), on tiny inputs: SS2D's
four directions, the SAVSSM block (its two SAINs and SCM gate), SConv, LoE, the style embedder,
the image decoder, the InstanceNorm arm, the group residual, the style vector and the
pad-and-crop of sizes that are not multiples of the patch. The release comparison
(experiments/release_equivalence.py) cannot run in CI; these pin the same maths."""

import pytest
import torch
import torch.nn.functional as F
from tiny import TINY as TINY_PRESET

from samam import SaMam
from samam.nn.loe import LoE
from samam.nn.norms import InstanceNorm
from samam.nn.ss2d import SS2D, StyleSSMParams
from samam.nn.style import SConv
from samam.ops.scan_orders import scan_indices
from samam.ops.selective_scan import resolve_scan_backend, selective_scan_ref

TINY = {**TINY_PRESET, "backend": "torch"}


def _ss2d_by_hand(m: SS2D, x: torch.Tensor, A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Per direction k: gather by order k, x_proj → [Δ rank | B | C], dt_proj, selective scan
    with softplus(Δ + bias), scatter back by order k; the four directions summed."""
    b, d, h, w = x.shape
    order, _ = scan_indices(m.scan_order, h, w)
    out = torch.zeros(b, d, h * w)
    r, n = m.dt_rank, m.d_state
    for k in range(m.k):
        xs = x.reshape(b, d, -1)[:, :, order[k]]  # (B, D, L)
        proj = torch.einsum("cd,bdl->bcl", m.x_proj_weight[k], xs)
        dt, bk, ck = proj[:, :r], proj[:, r : r + n], proj[:, r + n :]
        dt = torch.einsum("dr,brl->bdl", m.dt_proj_weight[k], dt)
        ak, dk = A[..., k * d : (k + 1) * d, :], D[..., k * d : (k + 1) * d]
        y = selective_scan_ref(xs, dt, ak, bk[:, None], ck[:, None], dk, m.dt_proj_bias[k], True)
        out[:, :, order[k]] += y
    return out.view(b, d, h, w)


@pytest.mark.parametrize("static", [True, False], ids=["S6", "S7"])
@torch.no_grad()
def test_ss2d_equals_its_definition(static):
    torch.manual_seed(0)
    m = SS2D(6, 3, 2, "zigzag", resolve_scan_backend("torch"), static_params=static)
    x = torch.randn(2, 6, 3, 4)
    if static:
        A, D = -torch.exp(m.A_log), m.D
        got = m(x)
    else:
        gen, s = StyleSSMParams(5, 4, 6, 3), torch.randn(2, 5)
        A, D = gen(s)
        # A_gen's output channel (k·D + d)·N + n holds A[k·D + d, n], negated through exp
        assert torch.equal(A, -torch.exp(gen.A_gen(s)).view(2, 4 * 6, 3))
        got = m(x, A, D)
    torch.testing.assert_close(got, _ss2d_by_hand(m, x, A, D), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_sconv_is_a_reflect_padded_per_sample_depthwise_conv():
    torch.manual_seed(0)
    m, x, e = SConv(3, 4), torch.randn(2, 3, 5, 6), torch.randn(2, 4, 3, 3)
    kernel = F.leaky_relu(m.kernel_gen(e), 0.1)  # (B, C, 3, 3)
    ref = torch.cat(
        [
            F.conv2d(F.pad(x[i : i + 1], (1, 1, 1, 1), mode="reflect"), kernel[i, :, None], groups=3)
            for i in range(2)
        ]
    )
    torch.testing.assert_close(m(x, e), ref)


@torch.no_grad()
def test_loe_is_a_residual_with_channel_attention_on_its_branch():
    torch.manual_seed(0)
    m, x = LoE(8, 2, 2), torch.randn(2, 8, 5, 5)
    z = m.conv2(F.gelu(m.conv1(x)))
    attention = torch.sigmoid(m.ca_up(F.relu(m.ca_down(z.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(m(x), x + z * attention)


@torch.no_grad()
def test_instancenorm_arm_is_instance_norm_with_its_affine():
    m = InstanceNorm(4)
    m.norm.weight.normal_()
    m.norm.bias.normal_()
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(m(x), F.instance_norm(x, weight=m.norm.weight, bias=m.norm.bias))


@torch.no_grad()
def test_decoder_group_adds_its_input_back():
    torch.manual_seed(0)
    net = SaMam(**{**TINY, "loe": False}).eval()
    group = net.decoder[0]
    x, e = torch.randn(2, 32, 4, 5), torch.randn(2, 16, 3, 3)
    v = e.mean((2, 3))
    expected = x
    for blk in group.blocks:
        expected = blk(expected, e, v)
    torch.testing.assert_close(group(x, e, v), expected + x)


@torch.no_grad()
def test_style_vector_is_the_global_average_of_the_embedding(monkeypatch):
    torch.manual_seed(0)
    net = SaMam(**TINY).eval()
    seen = []
    forward = type(net.decoder[0]).forward
    monkeypatch.setattr(
        type(net.decoder[0]), "forward", lambda self, x, e, v: seen.append((e, v)) or forward(self, x, e, v)
    )
    net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 64))
    e, v = seen[0]
    torch.testing.assert_close(v, e.mean((2, 3)))


@torch.no_grad()
def test_other_sizes_are_reflect_padded_at_the_bottom_right_then_cropped():
    torch.manual_seed(0)
    net = SaMam(**TINY).eval()
    p = net.cfg.patch_size
    c, s = torch.rand(1, 3, 37, 45), torch.rand(1, 3, 64, 64)
    padded = F.pad(c, (0, -45 % p, 0, -37 % p), mode="reflect")
    torch.testing.assert_close(net(c, s), net(padded, s)[..., :37, :45])


@torch.no_grad()
def test_vss_block_equals_its_definition():
    """The encoder block: x + out_proj(S6(SiLU(DWConv3×3 zero-padded(in_proj(x))))), no norm."""
    torch.manual_seed(0)
    blk = SaMam(**TINY).eval().content_encoder.blocks[0]
    x = torch.randn(2, 32, 4, 5)
    h = F.conv2d(x, blk.in_proj.weight)
    h = F.silu(F.conv2d(h, blk.conv.conv.weight, blk.conv.conv.bias, padding=1, groups=h.shape[1]))
    y = _ss2d_by_hand(blk.ssm, h, -torch.exp(blk.ssm.A_log), blk.ssm.D)
    torch.testing.assert_close(blk(x), x + F.conv2d(y, blk.out_proj.weight), rtol=1e-5, atol=1e-5)


def _sain_by_hand(norm, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """IN without affine (biased variance, eps 1e-5), then γ·IN + β with γ, β =
    LeakyReLU(0.1)(Linear(v)), each from its own weights, γ used as is."""
    mu, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
    gamma = F.leaky_relu(F.linear(v, norm.gamma.proj.weight, norm.gamma.proj.bias), 0.1)[..., None, None]
    beta = F.leaky_relu(F.linear(v, norm.beta.proj.weight, norm.beta.proj.bias), 0.1)[..., None, None]
    return (x - mu) / (var + 1e-5).sqrt() * gamma + beta


@torch.no_grad()
def test_savssm_block_equals_its_definition():
    """out_proj(SAIN_D(S7(SiLU(SConv(in_proj(SAIN_C(E))))))) + E ⊙ v, v = Sigmoid(Conv1×1(
    PReLU(Conv3×3 stride 3 (e_s)))): the SAINs and the gate were checked only through the
    whole network, where a γ/β swap or a wrong slope moves the output by ~1e-6."""
    torch.manual_seed(0)
    net = SaMam(**TINY).eval()
    blk = net.decoder[0].blocks[0]
    for p in blk.parameters():  # random weights everywhere: zero-init biases would hide terms
        p.normal_(0, 0.3)
    blk.scm.act.weight.fill_(0.25)  # PReLU's slope, away from ReLU's 0 and LeakyReLU's 0.01
    x, e = torch.randn(2, 32, 4, 5), torch.randn(2, 16, 3, 3)
    v = e.mean((2, 3))
    h = F.conv2d(_sain_by_hand(blk.in_norm, x, v), blk.in_proj.weight)
    h = F.silu(blk.conv(h, e))  # SConv: test_sconv_is_a_reflect_padded_per_sample_depthwise_conv
    gen = blk.style_params
    A = -torch.exp(F.linear(v, gen.A_gen.weight, gen.A_gen.bias)).view(2, -1, gen.d_state)
    D = F.linear(v, gen.D_gen.weight, gen.D_gen.bias)
    y = _sain_by_hand(blk.out_norm, _ss2d_by_hand(blk.ssm, h, A, D), v)
    z = F.conv2d(e, blk.scm.down.weight, stride=3)
    gate = torch.sigmoid(F.conv2d(torch.where(z > 0, z, 0.25 * z), blk.scm.up.weight))
    expected = F.conv2d(y, blk.out_proj.weight) + x * gate
    torch.testing.assert_close(blk(x, e, v), expected, rtol=1e-5, atol=1e-5)


# SPEC §2.4, channels as divisors of C ((c_in, c_out), 0 = RGB), "up" = nearest ×2.
_DECODER_PLAN = {
    8: [(1, 2), "up", (2, 2), (2, 2), (2, 2), (2, 4), "up", (4, 4), (4, 8), "up", (8, 8), (8, 0)],
    4: [(1, 2), "up", (2, 2), (2, 2), (2, 4), "up", (4, 4), (4, 8), (8, 8), (8, 0)],
}


@pytest.mark.parametrize("p", [4, 8])
@torch.no_grad()
def test_image_decoder_equals_its_definition(p):
    """[ReflectionPad(1) → Conv3×3 → ReLU] with nearest ×2 upsampling, no ReLU after the last
    conv: only its shapes and its strip split were tested, so bilinear upsampling passed."""
    from samam.nn.decoder import ImageDecoder

    torch.manual_seed(0)
    c = 16
    dec = ImageDecoder(c, p)
    convs = [m for m in dec.layers if isinstance(m, torch.nn.Conv2d)]
    plan = [s for s in _DECODER_PLAN[p] if s != "up"]
    assert [tuple(m.weight.shape) for m in convs] == [(c // o if o else 3, c // i, 3, 3) for i, o in plan]
    for m in convs:  # at random init the ten convs shrink the signal to one flat colour
        m.weight.mul_(3)
        m.bias.normal_()
    x = torch.randn(2, c, 3, 5)
    expected, i = x, 0
    for step in _DECODER_PLAN[p]:
        if step == "up":
            expected = F.interpolate(expected, scale_factor=2, mode="nearest")
            continue
        expected = F.conv2d(F.pad(expected, (1, 1, 1, 1), mode="reflect"), convs[i].weight, convs[i].bias)
        i += 1
        expected = F.relu(expected) if i < len(convs) else expected
    assert (expected < 0).any()  # the output is not clipped
    torch.testing.assert_close(dec(x), expected)


@pytest.mark.parametrize("tokens", [(32, 32), (24, 40)], ids=["4x4-after-stages", "adaptive-pool"])
@torch.no_grad()
def test_style_embedder_equals_its_definition(tokens):
    """n_stages × [Conv3×3 reflect → LeakyReLU(0.01) → AvgPool 2], adaptive-average-pool to 4×4
    if needed, Linear(16·C → 9·S) reshaped to (S, 3, 3)."""
    from samam.nn.style import StyleEmbedder

    torch.manual_seed(0)
    m = StyleEmbedder(8, 4, 3)
    f = torch.randn(2, 8, *tokens)
    expected = f
    for conv in m.stages:
        z = F.conv2d(F.pad(expected, (1, 1, 1, 1), mode="reflect"), conv.weight, conv.bias)
        expected = F.avg_pool2d(torch.where(z > 0, z, 0.01 * z), 2)
    expected = F.adaptive_avg_pool2d(expected, 4)
    expected = F.linear(expected.flatten(1), m.fc.weight, m.fc.bias).view(2, 4, 3, 3)
    torch.testing.assert_close(m(f), expected)
