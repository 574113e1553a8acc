"""Local enhancement (LoE): a residual conv block with RCAN-style channel attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LoE(nn.Module):
    """x + CA(Conv3×3(GELU(Conv3×3(x)))), CA(z) = z ⊙ Sigmoid(Conv1×1(ReLU(Conv1×1(GAP z))))."""

    def __init__(self, channels: int, compress_ratio: int = 8, squeeze_factor: int = 8):
        super().__init__()
        if channels // compress_ratio < 1 or channels // squeeze_factor < 1:
            raise ValueError(
                f"LoE needs channels ({channels}) >= compress_ratio ({compress_ratio}) and squeeze_factor ({squeeze_factor})"
            )
        mid = channels // compress_ratio
        self.conv1 = nn.Conv2d(channels, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, channels, 3, padding=1)
        self.ca_down = nn.Conv2d(channels, channels // squeeze_factor, 1)
        self.ca_up = nn.Conv2d(channels // squeeze_factor, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv2(F.gelu(self.conv1(x)))
        attn = torch.sigmoid(self.ca_up(F.relu(self.ca_down(z.mean((2, 3), keepdim=True)))))
        return x + z * attn
