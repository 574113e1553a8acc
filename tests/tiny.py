"""The test-size network: conf/model/tiny.yaml's overrides, so tests and the demo share one
definition. Importable from any test (pytest puts tests/ on sys.path, see pyproject.toml)."""

from pathlib import Path

import torch
import yaml

_PRESET = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml"

# SaMam keyword arguments; everything else keeps the released default.
TINY: dict = {k: v for k, v in yaml.safe_load(_PRESET.read_text()).items() if k != "defaults"}


def listening(net: torch.nn.Module) -> torch.nn.Module:
    """A random tiny net's output moves ~2e-6 with the style, under most tolerances here:
    scaled up, a sample given another's style is ~50x past them."""
    with torch.no_grad():
        net.style_embedder.fc.weight.mul_(30)
    return net


def responsive(net: torch.nn.Module, gain: float = 2.0) -> torch.nn.Module:
    """listening, and the image decoder's convs scaled by ``gain``: at random init its ten convs
    shrink the signal so far that the output is one flat colour (std 2e-4 of a [0, 1] image,
    under a uint8 step, and under bf16's resolution); doubled, pixels move by tens of steps with
    the content and a few with the style."""
    with torch.no_grad():
        for m in net.image_decoder.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(gain)
    return listening(net)
