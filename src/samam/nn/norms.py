"""Decoder normalisations. All share the call ``norm(x, style_vec)`` so the ablation arms
(`out_norm`: sain | layernorm | instancenorm, or a :class:`DecoderNorm` of one's own by import
path) are drop-in replacements."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from samam.nn.style import StyleAffine
from samam.user_code import resolve

NORM_PATH_FORM = "package.module:Class"  # how model.out_norm names a norm of one's own


class DecoderNorm(nn.Module):
    """What a SAVSSM block's out_norm is. A norm of one's own subclasses it and is named by
    import path (``model.out_norm=my_norms:GroupNormOut``); each block builds one as
    ``cls(channels, style_dim)`` and calls ``norm(x, style_vec)``: x (B, channels, H, W) the
    mixer's output, style_vec (B, style_dim) the style code e_s averaged over its 3×3; it
    returns x's shape.

    ``per_channel``: True only if every channel is normalised from its own values alone (SAIN,
    InstanceNorm). forward must then also take ``channels``, a slice: x holds only those channels
    of the block's map, which blocks on images past ``samam.nn.blocks.MAX_BLOCK_ELEMENTS`` run in
    parts. False (GroupNorm, LayerNorm: statistics across channels) keeps the block whole: on the
    CPU, and refused past that size on other devices.

    ``neutral_init_``: what ``model.zero_init=true`` does to it (start with no style effect);
    nothing unless overridden."""

    per_channel: ClassVar[bool] = False

    def neutral_init_(self) -> None:
        pass


class SAIN(DecoderNorm):
    """Style-aware instance norm: IN(x)·γ(e_s) + β(e_s); IN has no affine and no running
    stats, and γ is used as is (not 1 + γ), as in the release."""

    per_channel = True

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.gamma = StyleAffine(style_dim, channels)
        self.beta = StyleAffine(style_dim, channels)

    def forward(
        self, x: torch.Tensor, style_vec: torch.Tensor, channels: slice = slice(None)
    ) -> torch.Tensor:
        """x (B, d, H, W): the map's ``channels`` (all by default); every channel is normalised alone."""
        return F.instance_norm(x) * self.gamma(style_vec)[:, channels] + self.beta(style_vec)[:, channels]

    def neutral_init_(self) -> None:
        """Plain instance norm for every style: γ = 1, β = 0, the generators' weights zero."""
        for affine, start in ((self.gamma, 1.0), (self.beta, 0.0)):
            nn.init.zeros_(affine.proj.weight)
            nn.init.constant_(affine.proj.bias, start)


class LayerNorm2d(DecoderNorm):
    """LayerNorm over channels at every pixel (VMamba's out_norm), with affine."""

    def __init__(
        self, channels: int, style_dim: int | None = None
    ):  # style_dim: unused, as every norm is built
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, style_vec: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class InstanceNorm(DecoderNorm):
    """Instance norm with a learned (style-independent) affine."""

    per_channel = True

    def __init__(
        self, channels: int, style_dim: int | None = None
    ):  # style_dim: unused, as every norm is built
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def forward(
        self, x: torch.Tensor, style_vec: torch.Tensor | None = None, channels: slice = slice(None)
    ) -> torch.Tensor:
        """x (B, d, H, W): the map's ``channels`` (all by default); every channel is normalised alone."""
        norm = self.norm
        return F.instance_norm(x, weight=norm.weight[channels], bias=norm.bias[channels], eps=norm.eps)


BUILT_IN_NORMS: dict[str, type[DecoderNorm]] = {
    "sain": SAIN,
    "layernorm": LayerNorm2d,
    "instancenorm": InstanceNorm,
}
OUT_NORMS: tuple[str, ...] = tuple(BUILT_IN_NORMS)


def norm_class(name: str) -> type[DecoderNorm]:
    """The class ``model.out_norm`` names: one of OUT_NORMS, or ``"package.module:Class"`` (its
    module importable), a subclass of :class:`DecoderNorm`. Checked when the config is built, so
    a typo fails there, not in the first block; each block builds it as ``cls(channels, style_dim)``."""
    if name in BUILT_IN_NORMS:
        return BUILT_IN_NORMS[name]
    if not (isinstance(name, str) and ":" in name):
        raise ValueError(f"out_norm={name!r} is not one of {(*OUT_NORMS, NORM_PATH_FORM)}")
    cls = resolve(name, "out_norm", NORM_PATH_FORM)
    if not (isinstance(cls, type) and issubclass(cls, DecoderNorm)):
        raise ValueError(
            f"out_norm {name!r} is {cls!r}, not a subclass of samam.nn.norms.DecoderNorm: "
            "subclass it (its docstring says how the style code and channel parts reach forward)"
        )
    return cls
