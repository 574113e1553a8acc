"""experiments/stytr2.py, the StyTr² timing peer: shapes, both attention paths agree, published size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(dim=32, heads=4, ffn=64, encoder_layers=2, decoder_layers=2, decoder_width=16)


def _stytr2():
    spec = importlib.util.spec_from_file_location("stytr2", REPO / "experiments" / "stytr2.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_output_has_the_content_shape_for_non_square_sides():
    net = _stytr2().StyTr2(**SMALL).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 48, 80), torch.rand(2, 3, 64, 40))
    assert out.shape == (2, 3, 48, 80)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 3, 48, 84), torch.rand(1, 3, 64, 64))


def test_mha_and_sdpa_give_the_same_output_for_the_same_weights():
    stytr2 = _stytr2()
    mha = stytr2.StyTr2(**SMALL, attention="mha").eval()
    sdpa = stytr2.StyTr2(**SMALL, attention="sdpa").eval()
    sdpa.load_state_dict(mha.state_dict())
    # Batch 2, unequal content and style token counts: a wrong head or batch split would show.
    content, style = torch.rand(2, 3, 48, 80), torch.rand(2, 3, 64, 40)
    with torch.no_grad():
        a, b = mha(content, style), sdpa(content, style)
    assert a.abs().mean() > 0
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'mha' or 'sdpa'"):
        stytr2.StyTr2(**SMALL, attention="flash")


def test_default_config_has_the_published_parameter_count():
    # Patch embedding (shared by content and style) 98,816 + CAPE 1×1 conv 262,656 + two 3-layer
    # encoders 2 × 9,457,152 + 3 decoder layers 12,612,096 + final LayerNorm 1,024 + CNN decoder
    # 3,505,219 = 35.4 M. The release's frozen VGG-19 (loss only) is not part of the peer.
    net = _stytr2().StyTr2()
    assert sum(p.numel() for p in net.parameters()) == 35_394_115
