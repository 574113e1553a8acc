"""Decoder normalisations. All share the call ``norm(x, style_vec)`` so the ablation arms
(`out_norm`: sain | layernorm | instancenorm) are drop-in replacements."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from samam.nn.style import StyleAffine

OutNorm = Literal["sain", "layernorm", "instancenorm"]
OUT_NORMS: tuple[str, ...] = get_args(OutNorm)


class SAIN(nn.Module):
    """Style-aware instance norm: IN(x)·γ(e_s) + β(e_s); IN has no affine and no running
    stats, and γ is used as is (not 1 + γ), as in the release."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.gamma = StyleAffine(style_dim, channels)
        self.beta = StyleAffine(style_dim, channels)

    def forward(
        self, x: torch.Tensor, style_vec: torch.Tensor, channels: slice = slice(None)
    ) -> torch.Tensor:
        """x (B, d, H, W): the map's ``channels`` (all by default); every channel is normalised alone."""
        return F.instance_norm(x) * self.gamma(style_vec)[:, channels] + self.beta(style_vec)[:, channels]


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at every pixel (VMamba's out_norm), with affine."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, style_vec: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class InstanceNorm(nn.Module):
    """Instance norm with a learned (style-independent) affine."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def forward(
        self, x: torch.Tensor, style_vec: torch.Tensor | None = None, channels: slice = slice(None)
    ) -> torch.Tensor:
        """x (B, d, H, W): the map's ``channels`` (all by default); every channel is normalised alone."""
        norm = self.norm
        return F.instance_norm(x, weight=norm.weight[channels], bias=norm.bias[channels], eps=norm.eps)


def make_norm(kind: OutNorm, channels: int, style_dim: int) -> nn.Module:
    if kind == "sain":
        return SAIN(channels, style_dim)
    if kind == "layernorm":
        return LayerNorm2d(channels)
    if kind == "instancenorm":
        return InstanceNorm(channels)
    raise ValueError(f"unknown out_norm {kind!r}; expected one of {OUT_NORMS}")
