"""Output norms of one's own, for tests that name them by import path (``user_norms:StyleGroupNorm``):
the DecoderNorm interface as a user meets it. tests/ is on the Python path (pyproject.toml)."""

import torch
import torch.nn.functional as F
from torch import nn

from samam.nn.norms import DecoderNorm, InstanceNorm
from samam.nn.style import StyleAffine


class StyleGroupNorm(DecoderNorm):
    """GroupNorm (statistics across the channels of a group) with a style-generated affine."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.groups = 4
        self.gamma = StyleAffine(style_dim, channels)
        self.beta = nn.Linear(style_dim, channels)

    def forward(self, x: torch.Tensor, style_vec: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups) * self.gamma(style_vec) + self.beta(style_vec)[:, :, None, None]

    def neutral_init_(self) -> None:  # plain GroupNorm for every style
        nn.init.zeros_(self.gamma.proj.weight)
        nn.init.ones_(self.gamma.proj.bias)
        nn.init.zeros_(self.beta.weight)
        nn.init.zeros_(self.beta.bias)


class ScaledInstanceNorm(DecoderNorm):
    """Per channel: takes the block's channel parts."""

    per_channel = True

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, channels))

    def forward(
        self, x: torch.Tensor, style_vec: torch.Tensor, channels: slice = slice(None)
    ) -> torch.Tensor:
        return F.instance_norm(x) * self.scale[channels, None, None]


class AffineFreeInstanceNorm(InstanceNorm):
    """A built-in norm, subclassed: built as every norm is, cls(channels, style_dim)."""

    def forward(self, x, style_vec, channels=slice(None)):
        return F.instance_norm(x)


class ParameterFreeNorm(DecoderNorm):
    """Plain instance norm: no tensors in a state dict."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()

    def forward(self, x, style_vec):
        return F.instance_norm(x)


class NotANorm(nn.Module):
    pass
