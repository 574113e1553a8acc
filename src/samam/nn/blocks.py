"""Blocks: the encoder's VSS block, the decoder's style-aware SAVSSM, and their groups."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from samam.nn.loe import LoE
from samam.nn.norms import SAIN, DecoderNorm, norm_class
from samam.nn.ss2d import SS2D, StyleSSMParams
from samam.nn.style import SCM, SConv, StaticDWConv

Mixer = Literal["ssm", "attention"]
MIXERS: tuple[str, ...] = get_args(Mixer)


class AttentionMixer(nn.Module):
    """Softmax self-attention over all H·W tokens, in place of the scan (the `mixer=attention`
    arm): same widths, quadratic in tokens, for the linear-vs-quadratic comparison."""

    def __init__(self, d_inner: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, d_inner // head_dim)
        while d_inner % self.heads:  # the largest head count ≤ d_inner / head_dim that divides it
            self.heads -= 1
        self.qkv = nn.Conv2d(d_inner, 3 * d_inner, 1, bias=False)

    def forward(
        self, x: torch.Tensor, A: torch.Tensor | None = None, D: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, d, h, w = x.shape
        # Tokens last-but-one, so each head's q/k/v rows are contiguous: SDPA's flash and
        # memory-efficient kernels need a unit stride in the last dimension and fall back to
        # the math kernel (the full L×L matrix in memory) without it.
        tokens = x.flatten(2).transpose(1, 2)  # (B, L, d)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1))  # the 1×1 convolution, tokens-first
        q, k, v = qkv.view(b, h * w, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d/heads)
        return y.transpose(1, 2).reshape(b, h * w, d).transpose(1, 2).reshape(b, d, h, w)


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    """A bias-free Linear over channels, as a 1×1 conv so maps stay (B, C, H, W)."""
    conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    bound = c_in**-0.5  # nn.Linear's init
    nn.init.uniform_(conv.weight, -bound, bound)
    return conv


# Cap on the elements of a block's (B, D, H+2, W+2) maps (D = d_inner, +2: SConv's reflection
# padding). Past it (one sample at 8192² with p=4, or 16384² with p=8: 512 · 2050² > 2^31) a
# block computes its D-wide maps in channel parts, since CUDA kernels such as reflection
# padding index with 32 bits. Everything between in_proj and out_proj works channel by
# channel, except x_proj (SS2D sums it over the parts) and what mixes channels at every token
# (`mixer=attention`, an out_norm that is not DecoderNorm.per_channel such as layernorm): those
# run whole on the CPU, whose kernels index with 64 bits, and are refused past the cap on other
# devices.
MAX_BLOCK_ELEMENTS = 2**31 - 1


def _channel_parts(x: torch.Tensor, d_inner: int, whole: str | None = None) -> list[slice]:
    """Channel ranges of equal width for the (B, d_inner, H, W) maps of a block on x (B, C, H, W):
    one range (all channels) unless the padded maps would reach MAX_BLOCK_ELEMENTS. ``whole``
    names the switch of a block that cannot be split (it mixes channels at every token)."""
    b, _, h, w = x.shape
    per_channel = b * (h + 2) * (w + 2)
    if d_inner * per_channel <= MAX_BLOCK_ELEMENTS:
        return [slice(None)]
    if whole is not None:
        if x.device.type != "cpu":
            raise ValueError(
                f"{whole} mixes all {d_inner} channels at every token, so its blocks do not run in "
                f"channel parts, and their ({b}, {d_inner}, {h + 2}, {w + 2}) maps would pass "
                f"samam.nn.blocks.MAX_BLOCK_ELEMENTS = {MAX_BLOCK_ELEMENTS} (CUDA kernels index "
                "with 32 bits): use a smaller image, the released switches, or the CPU"
            )
        return [slice(None)]
    n = -(-d_inner // max(1, MAX_BLOCK_ELEMENTS // per_channel))
    width = -(-d_inner // n)
    return [slice(c, min(d_inner, c + width)) for c in range(0, d_inner, width)]


def _unsplittable(
    mixer: nn.Module, out_norm: str | None = None, norm: DecoderNorm | None = None
) -> str | None:
    """The switch that keeps a block whole past MAX_BLOCK_ELEMENTS (it mixes channels at every
    token), or None. ``out_norm``: the norm's name in the config, ``norm`` the module it built."""
    if not isinstance(mixer, SS2D):
        return "mixer='attention'"
    return f"out_norm={out_norm!r}" if norm is not None and not norm.per_channel else None


def _make_mixer(mixer: Mixer, d_inner: int, static_params: bool, **ss2d) -> nn.Module:
    if mixer == "ssm":
        return SS2D(d_inner, static_params=static_params, **ss2d)
    if mixer == "attention":
        return AttentionMixer(d_inner)
    raise ValueError(f"unknown mixer {mixer!r}; expected one of {MIXERS}")


class VSSBlock(nn.Module):
    """Encoder block: x + out_proj(SS2D(SiLU(DWConv(in_proj(x))))). No norm, no gate."""

    def __init__(self, dim: int, d_inner: int, mixer: Mixer = "ssm", **ss2d):
        super().__init__()
        self.in_proj = _conv1x1(dim, d_inner)
        self.conv = StaticDWConv(d_inner)
        self.ssm = _make_mixer(mixer, d_inner, static_params=True, **ss2d)
        self.out_proj = _conv1x1(d_inner, dim)
        self.whole = _unsplittable(self.ssm)  # set by the switches: the error of a block kept whole

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = _channel_parts(x, self.in_proj.out_channels, self.whole)
        if len(parts) == 1:
            y = self.ssm(F.silu(self.conv(self.in_proj(x))))
            return x + self.out_proj(y.to(x.dtype))
        hs = [F.silu(self.conv(F.conv2d(x, self.in_proj.weight[c]), channels=c)) for c in parts]
        out = x  # out_proj sums over channels, so over the parts
        for y, c in zip(self.ssm.forward_parts(hs), parts, strict=True):
            out = out + F.conv2d(y.to(x.dtype), self.out_proj.weight[:, c])
        return out


class SAVSSM(nn.Module):
    """Style-aware block: out_proj(norm(S7(SiLU(SConv(in_proj(SAIN(E))))))) + SCM(E).

    Ablation switches: ``style_ssm`` (S7 vs S6), ``out_norm`` (norms.norm_class), ``sconv`` (style-generated vs
    plain depthwise kernel), ``scm`` (gated skip E ⊙ v vs identity E)."""

    def __init__(
        self,
        dim: int,
        d_inner: int,
        style_dim: int,
        *,
        style_ssm: bool = True,
        out_norm: str = "sain",
        sconv: bool = True,
        scm: bool = True,
        scm_reduction: int = 4,
        mixer: Mixer = "ssm",
        **ss2d,
    ):
        super().__init__()
        self.in_norm = SAIN(dim, style_dim)
        self.in_proj = _conv1x1(dim, d_inner)
        self.conv = SConv(d_inner, style_dim) if sconv else StaticDWConv(d_inner)
        use_style_params = style_ssm and mixer == "ssm"
        self.ssm = _make_mixer(mixer, d_inner, static_params=not use_style_params, **ss2d)
        self.style_params = (
            StyleSSMParams(style_dim, ss2d.get("k", 4), d_inner, ss2d["d_state"])
            if use_style_params
            else None
        )
        self.out_norm = norm_class(out_norm)(d_inner, style_dim)
        self.out_proj = _conv1x1(d_inner, dim)
        self.scm = SCM(style_dim, dim, scm_reduction) if scm else None
        self.whole = _unsplittable(self.ssm, out_norm, self.out_norm)  # as in VSSBlock

    def forward(self, x: torch.Tensor, e_s: torch.Tensor, style_vec: torch.Tensor) -> torch.Tensor:
        parts = _channel_parts(x, self.in_proj.out_channels, self.whole)
        if len(parts) > 1:
            return self._forward_parts(x, e_s, style_vec, parts)
        h = self.in_proj(self.in_norm(x, style_vec))
        h = F.silu(self.conv(h, e_s))
        A, D = self.style_params(style_vec) if self.style_params is not None else (None, None)
        y = self.out_norm(self.ssm(h, A, D).to(x.dtype), style_vec)
        skip = self.scm(x, e_s) if self.scm is not None else x
        return self.out_proj(y) + skip

    def _forward_parts(
        self, x: torch.Tensor, e_s: torch.Tensor, style_vec: torch.Tensor, parts: list[slice]
    ) -> torch.Tensor:
        """forward with the D-wide maps held as channel parts (B, D_i, H, W): equal up to round-off."""
        xn = self.in_norm(x, style_vec)
        hs = [F.silu(self.conv(F.conv2d(xn, self.in_proj.weight[c]), e_s, channels=c)) for c in parts]
        A, D = self.style_params(style_vec) if self.style_params is not None else (None, None)
        out = self.scm(x, e_s) if self.scm is not None else x
        for y, c in zip(self.ssm.forward_parts(hs, A, D), parts, strict=True):
            y = self.out_norm(y.to(x.dtype), style_vec, channels=c)
            out = out + F.conv2d(y, self.out_proj.weight[:, c])  # out_proj sums over the parts
        return out


class Encoder(nn.Module):
    """Patch embedding (Conv p×p, stride p) → VSS blocks → LoE."""

    def __init__(
        self,
        dim: int,
        patch_size: int,
        depth: int,
        d_inner: int,
        loe: bool,
        loe_compress: int,
        loe_squeeze: int,
        **block,
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(VSSBlock(dim, d_inner, **block) for _ in range(depth))
        self.loe = LoE(dim, loe_compress, loe_squeeze) if loe else nn.Identity()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img)  # (B, C, H/p, W/p)
        for blk in self.blocks:
            x = blk(x)
        return self.loe(x)


class SAVSSGroup(nn.Module):
    """SAVSSG(x) = LoE(SAVSSM_n(…SAVSSM_1(x)…) + x)."""

    def __init__(self, dim: int, depth: int, loe: bool, loe_compress: int, loe_squeeze: int, **block):
        super().__init__()
        self.blocks = nn.ModuleList(SAVSSM(dim, **block) for _ in range(depth))
        self.loe = LoE(dim, loe_compress, loe_squeeze) if loe else nn.Identity()

    def forward(self, x: torch.Tensor, e_s: torch.Tensor, style_vec: torch.Tensor) -> torch.Tensor:
        h = x
        for blk in self.blocks:
            h = blk(h, e_s, style_vec)
        return self.loe(h + x)
