"""Style conditioning: the style embedder and the modules that read its embedding e_s.

e_s is a (B, S, 3, 3) map (S = style_dim, 64 in the release). Modules that need only a
vector read GAP(e_s), computed once per forward by the caller as ``style_vec`` (B, S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StyleEmbedder(nn.Module):
    """Style features (B, C, h, w) → e_s (B, S, 3, 3).

    ``n_stages`` × [Conv3×3 reflect → LeakyReLU(0.01) → AvgPool 2], adaptive-average-pool
    to 4×4 if needed, then Linear(16·C → 9·S). Three stages suit p=8 and a 256-px style
    (32 tokens → 4), four suit p=4.
    """

    def __init__(self, channels: int, style_dim: int, n_stages: int):
        super().__init__()
        self.style_dim = style_dim
        self.n_stages = n_stages
        self.stages = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect") for _ in range(n_stages)
        )
        self.fc = nn.Linear(channels * 16, style_dim * 9)

    @property
    def min_tokens(self) -> int:
        """Smallest style token grid side: every stage needs at least 2×2 to pad and pool."""
        return 2**self.n_stages

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        for conv in self.stages:
            f = F.avg_pool2d(F.leaky_relu(conv(f), 0.01), 2)
        if f.shape[-2:] != (4, 4):
            f = F.adaptive_avg_pool2d(f, 4)
        return self.fc(f.flatten(1)).view(-1, self.style_dim, 3, 3)  # (B, S, 3, 3)


class StyleAffine(nn.Module):
    """γ or β of SAIN: LeakyReLU(0.1)(Linear(GAP e_s)), one value per channel."""

    def __init__(self, style_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(style_dim, channels)

    def forward(self, style_vec: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.proj(style_vec), 0.1)[:, :, None, None]  # (B, C, 1, 1)


class SConv(nn.Module):
    """Style-generated depthwise 3×3 conv: each sample and channel gets its own kernel,
    LeakyReLU(0.1)(Conv3×3 reflect(e_s)); input reflection-padded by 1; no bias."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.kernel_gen = nn.Conv2d(style_dim, channels, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor, e_s: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """x (B, d, H, W): the map's ``channels`` (all by default) → the same channels of the output."""
        b, d, h, w = x.shape
        kernel = F.leaky_relu(self.kernel_gen(e_s), 0.1)[:, channels]  # (B, d, 3, 3)
        # Fold the batch into the channel axis: one grouped conv for all samples.
        x = F.pad(x, (1, 1, 1, 1), mode="reflect").reshape(1, b * d, h + 2, w + 2)
        out = F.conv2d(x, kernel.reshape(b * d, 1, 3, 3), groups=b * d)
        return out.view(b, d, h, w)


class StaticDWConv(nn.Module):
    """Plain depthwise 3×3 conv (zero padding, bias): the `sconv=False` ablation arm and the
    encoder's conv. Takes and ignores e_s so both arms share one call signature."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(
        self, x: torch.Tensor, e_s: torch.Tensor | None = None, channels: slice = slice(None)
    ) -> torch.Tensor:
        """x (B, d, H, W): the map's ``channels`` (all by default) → the same channels of the output."""
        conv = self.conv
        return F.conv2d(x, conv.weight[channels], conv.bias[channels], padding=1, groups=x.shape[1])


class SCM(nn.Module):
    """Style-aware channel modulation: the gated skip E ⊙ v of a SAVSSM block,
    v = Sigmoid(Conv1×1(PReLU(Conv3×3 stride 3 (e_s))))."""

    def __init__(self, style_dim: int, channels: int, reduction: int = 4):
        super().__init__()
        hidden = style_dim // reduction
        if hidden < 1:
            raise ValueError(f"scm_reduction={reduction} leaves no channel of style_dim={style_dim}")
        self.down = nn.Conv2d(style_dim, hidden, 3, stride=3, bias=False)
        self.act = nn.PReLU()
        self.up = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, e_s: torch.Tensor) -> torch.Tensor:
        v = torch.sigmoid(self.up(self.act(self.down(e_s))))  # (B, C, 1, 1)
        return x * v
