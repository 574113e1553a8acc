"""Image decoder: tokens (B, C, H/p, W/p) → image (B, 3, H, W) with nearest ×2 upsampling."""

from __future__ import annotations

import torch
from torch import nn

# Channel plans as fractions of C: ("up",) or (c_in divisor, c_out divisor); c_out 0 = RGB.
_PLANS: dict[int, list[tuple[int, ...]]] = {
    8: [(1, 2), ("up",), (2, 2), (2, 2), (2, 2), (2, 4), ("up",), (4, 4), (4, 8), ("up",), (8, 8), (8, 0)],
    4: [(1, 2), ("up",), (2, 2), (2, 2), (2, 4), ("up",), (4, 4), (4, 8), (8, 8), (8, 0)],
}


class ImageDecoder(nn.Module):
    """[ReflectionPad(1) → Conv3×3 → ReLU] layers with nearest ×2 upsampling (SPEC §2.4);
    the last conv has no ReLU. Layer indices equal the release's, so weights map 1:1."""

    def __init__(self, channels: int, patch_size: int):
        super().__init__()
        if patch_size not in _PLANS:
            raise ValueError(f"patch_size must be one of {sorted(_PLANS)}, got {patch_size}")
        layers: list[nn.Module] = []
        plan = _PLANS[patch_size]
        for i, step in enumerate(plan):
            if step == ("up",):
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                continue
            c_in, c_out = channels // step[0], (channels // step[1] if step[1] else 3)
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3)]
            if i < len(plan) - 1:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
