"""Image decoder: tokens (B, C, H/p, W/p) → image (B, 3, H, W) with nearest ×2 upsampling."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

# Channel plans as fractions of C: ("up",) or (c_in divisor, c_out divisor); c_out 0 = RGB.
_PLANS: dict[int, list[tuple[int, ...]]] = {
    8: [(1, 2), ("up",), (2, 2), (2, 2), (2, 2), (2, 4), ("up",), (4, 4), (4, 8), ("up",), (8, 8), (8, 0)],
    4: [(1, 2), ("up",), (2, 2), (2, 2), (2, 4), ("up",), (4, 4), (4, 8), (8, 8), (8, 0)],
}


class ImageDecoder(nn.Module):
    """[ReflectionPad(1) → Conv3×3 → ReLU] layers with nearest ×2 upsampling (SPEC §2.4);
    the last conv has no ReLU. Layer indices equal the release's, so weights map 1:1.

    Large outputs are decoded in horizontal strips of token rows (an image too wide for one
    strip, in tiles of columns too) with a halo wide enough that every kept pixel sees exactly
    what the unsplit pass sees, so results are identical while peak memory stays bounded and
    no tensor outgrows 32-bit indexing (the release fails at 8192² in this decoder's
    reflection padding).
    """

    def __init__(self, channels: int, patch_size: int):
        super().__init__()
        if patch_size not in _PLANS:
            raise ValueError(f"patch_size must be one of {sorted(_PLANS)}, got {patch_size}")
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        plan = _PLANS[patch_size]
        scale, radius, peak = 1, 0.0, channels
        for i, step in enumerate(plan):
            if step == ("up",):
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                scale *= 2
                continue
            c_in, c_out = channels // step[0], (channels // step[1] if step[1] else 3)
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3)]
            if i < len(plan) - 1:
                layers.append(nn.ReLU())
            radius += 1 / scale  # a 3×3 conv sees one more pixel at this scale, in token units
            peak = max(peak, c_in * scale * scale, c_out * scale * scale)
        self.layers = nn.Sequential(*layers)
        # A strip's cut edges are reflection-padded wrongly; the error creeps inward by the
        # receptive radius. One token of slack on top keeps the kept rows exact.
        self.halo = math.ceil(radius) + 1
        self.peak_per_token = peak  # largest activation, elements per input token

    def forward(self, x: torch.Tensor, max_elements: int | None = 2**28) -> torch.Tensor:
        """x (B, C, h, w) → (B, 3, h·p, w·p). Strips (and chunks of samples, and tiles of
        columns) keep every activation ≤ max_elements."""
        b, _, h, w = x.shape
        per_row = b * w * self.peak_per_token
        if max_elements is None or per_row * h <= max_elements:
            return self.layers(x)
        # A strip holds at least 1 + 2·halo rows: past that (thousands of small images in one
        # batch), decode in chunks of samples too.
        thinnest = 1 + 2 * self.halo
        samples = max(1, max_elements // (w * self.peak_per_token * thinnest))
        if b > samples:
            return torch.cat([self(x[i : i + samples], max_elements) for i in range(0, b, samples)])
        if per_row * thinnest > max_elements:  # one image too wide for a strip: columns as well
            cols = max(1, max_elements // (b * self.peak_per_token * thinnest) - 2 * self.halo)
            return self._tiles(x, 3, cols, lambda tile: self._strips(tile, max_elements))
        return self._strips(x, max_elements)

    def _strips(self, x: torch.Tensor, max_elements: int) -> torch.Tensor:
        rows = max(1, max_elements // (x.shape[0] * x.shape[3] * self.peak_per_token) - 2 * self.halo)
        return self._tiles(x, 2, rows, self.layers)

    def _tiles(
        self, x: torch.Tensor, dim: int, size: int, decode: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """decode(x) in tiles of ``size`` token rows (dim 2) or columns (dim 3), each read with
        ``halo`` more tokens on both sides, whose outputs are cut off again."""
        n, p, out = x.shape[dim], self.patch_size, []
        for start in range(0, n, size):
            lo, hi = max(0, start - self.halo), min(n, start + size + self.halo)
            y = decode(x.narrow(dim, lo, hi - lo))
            out.append(y.narrow(dim, (start - lo) * p, (min(n, start + size) - start) * p))
        return torch.cat(out, dim=dim)
