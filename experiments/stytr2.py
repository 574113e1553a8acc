"""StyTr² (Deng et al., CVPR 2022), re-implemented as a timing peer for experiments/benchmark.py.

Random weights, eval only: it has the published network's shapes and work, not its results.
Architecture as in github.com/diyiiyiii/StyTR-2 (models/StyTR.py, models/transformer.py):

    8×8 stride-8 patch embedding 3→512, shared by content and style
    CAPE: content embedding → adaptive avg-pool 18×18 → 1×1 conv → bilinear back to the token
          grid; added to content queries and keys (the style has no positional term)
    content encoder 3 layers, style encoder 3 layers (512 wide, 8 heads, FFN 2048, ReLU, post-norm)
    decoder 3 layers, final LayerNorm; CNN decoder of AdaIN (3 nearest ×2 upsamplings) → RGB

What differs from the authors' code, none of it changing the work at equal content and style sides:
- no VGG encoder and no losses: the release's test.py runs its training forward (VGG features
  of content, style and output, two identity passes) and keeps the first output; this peer
  times only the stylisation path, embedding → transformer → CNN decoder;
- no dropout modules (dropout does nothing in eval); default PyTorch init instead of Xavier;
- CAPE is resized to the content's token grid (the release resizes it to the style's) and the
  output is reshaped to (h, w) tokens (the release assumes a square grid), so non-square
  images work.
- As in the authors' code, both attentions of a decoder layer take content queries and style
  keys and values (the first is named self-attention there but attends to the style).

`attention` picks how the same weights run:
- "mha": nn.MultiheadAttention, sequence-first, need_weights at its default, as published; it
  materialises the (B·heads, L, S) attention weights, quadratic memory in tokens;
- "sdpa": the same projections through F.scaled_dot_product_attention (fused kernels), an
  optimised peer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Attention = Literal["mha", "sdpa"]
PATCH = 8  # fixed by the CNN decoder's three ×2 upsamplings


class MultiHeadAttention(nn.Module):
    """nn.MultiheadAttention weights, run as published ("mha") or through SDPA ("sdpa").

    Sequence-first: q (L, B, C), k and v (S, B, C) → (L, B, C).
    """

    def __init__(self, dim: int, heads: int, attention: Attention):
        super().__init__()
        if attention not in ("mha", "sdpa"):
            raise ValueError(f"attention must be 'mha' or 'sdpa', got {attention!r}")
        self.mha = nn.MultiheadAttention(dim, heads)
        self.attention = attention

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.attention == "mha":
            return self.mha(q, k, v)[0]  # need_weights=True (default): the L×S weights are built
        heads, (L, B, C) = self.mha.num_heads, q.shape
        w = self.mha.in_proj_weight.chunk(3)
        b = self.mha.in_proj_bias.chunk(3)

        def split(x: torch.Tensor, i: int) -> torch.Tensor:  # (S, B, C) → (B, heads, S, C/heads)
            return F.linear(x, w[i], b[i]).view(x.shape[0], B, heads, C // heads).permute(1, 2, 0, 3)

        out = F.scaled_dot_product_attention(split(q, 0), split(k, 1), split(v, 2))  # (B, heads, L, C/heads)
        return self.mha.out_proj(out.permute(2, 0, 1, 3).reshape(L, B, C))


def feed_forward(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Post-norm self-attention + FFN; `pos` is added to queries and keys only."""

    def __init__(self, dim: int, heads: int, hidden: int, attention: Attention):
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, attention)
        self.ffn = feed_forward(dim, hidden)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:  # (L, B, C)
        qk = x if pos is None else x + pos
        x = self.norm1(x + self.attn(qk, qk, x))
        return self.norm2(x + self.ffn(x))


class DecoderLayer(nn.Module):
    """Post-norm: two attentions from content (+ CAPE) queries to style keys/values, then FFN."""

    def __init__(self, dim: int, heads: int, hidden: int, attention: Attention):
        super().__init__()
        self.attn1 = MultiHeadAttention(dim, heads, attention)
        self.attn2 = MultiHeadAttention(dim, heads, attention)
        self.ffn = feed_forward(dim, hidden)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn1(x + pos, style, style))  # x (L, B, C), style (S, B, C)
        x = self.norm2(x + self.attn2(x + pos, style, style))
        return self.norm3(x + self.ffn(x))


def cnn_decoder(dim: int, width: int) -> nn.Sequential:
    """AdaIN's decoder: 3×3 reflection-padded convs, widths width, width/2, width/4, three ×2 upsamplings."""

    def conv(c_in: int, c_out: int, relu: bool = True) -> list[nn.Module]:
        return [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3)] + ([nn.ReLU()] if relu else [])

    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2, mode="nearest")]

    w1, w2, w4 = width, width // 2, width // 4
    return nn.Sequential(
        *conv(dim, w1), *up(), *conv(w1, w1), *conv(w1, w1), *conv(w1, w1), *conv(w1, w2),
        *up(), *conv(w2, w2), *conv(w2, w4),
        *up(), *conv(w4, w4), *conv(w4, 3, relu=False),
    )  # fmt: skip


class StyTr2(nn.Module):
    """net(content (B,3,H,W), style (B,3,H',W')) in [0, 1] → (B,3,H,W); sides divisible by 8.

    Defaults are the published sizes (35.4 M parameters); smaller ones are for tests.
    """

    def __init__(
        self,
        dim: int = 512,
        heads: int = 8,
        ffn: int = 2048,
        encoder_layers: int = 3,
        decoder_layers: int = 3,
        cape_grid: int = 18,
        decoder_width: int = 256,
        attention: Attention = "mha",
    ):
        super().__init__()
        self.attention = attention
        self.cape_grid = cape_grid
        self.embed = nn.Conv2d(3, dim, PATCH, stride=PATCH)
        self.cape = nn.Conv2d(dim, dim, 1)
        self.encoder_c = nn.ModuleList(
            EncoderLayer(dim, heads, ffn, attention) for _ in range(encoder_layers)
        )
        self.encoder_s = nn.ModuleList(
            EncoderLayer(dim, heads, ffn, attention) for _ in range(encoder_layers)
        )
        self.decoder = nn.ModuleList(DecoderLayer(dim, heads, ffn, attention) for _ in range(decoder_layers))
        self.norm = nn.LayerNorm(dim)
        self.cnn = cnn_decoder(dim, decoder_width)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        for name, x in (("content", content), ("style", style)):
            if x.shape[-2] % PATCH or x.shape[-1] % PATCH:
                raise ValueError(f"StyTr2: {name} sides {tuple(x.shape[-2:])} must be divisible by {PATCH}")
        c, s = self.embed(content), self.embed(style)  # (B, C, h, w), (B, C, h', w')
        B, C, h, w = c.shape
        pos = self.cape(F.adaptive_avg_pool2d(c, self.cape_grid))  # (B, C, 18, 18)
        pos = F.interpolate(pos, size=(h, w), mode="bilinear")  # (B, C, h, w)
        c, s, pos = (t.flatten(2).permute(2, 0, 1) for t in (c, s, pos))  # (L, B, C), (S, B, C), (L, B, C)
        for layer in self.encoder_c:
            c = layer(c, pos)
        for layer in self.encoder_s:
            s = layer(s, None)
        for layer in self.decoder:
            c = layer(c, s, pos)
        c = self.norm(c).permute(1, 2, 0).reshape(B, C, h, w)
        return self.cnn(c)  # (B, 3, H, W)
