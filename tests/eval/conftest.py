"""Fixtures for the evaluation tests: a random-weight tiny checkpoint and small image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY as TINY_PRESET
from tiny import responsive

TINY = {**TINY_PRESET, "backend": "torch"}


def write_image(path: Path, w: int, h: int, seed: int) -> Path:
    """A smooth random RGB image (w × h) saved as PNG/JPEG by suffix."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path)
    return path


@pytest.fixture(scope="session")
def make_image():
    return write_image


@pytest.fixture(scope="session")
def tiny_net():
    import samam

    torch.manual_seed(0)
    return responsive(samam.SaMam(**TINY).eval())  # pixels that follow the content and style


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_net, tmp_path_factory) -> Path:
    """Our checkpoint format: ``net.*`` weights + ``samam.model`` config."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    state = {"net." + k: v for k, v in tiny_net.state_dict().items()}
    torch.save({"state_dict": state, "samam": {"model": tiny_net.config, "config": None, "version": 1}}, path)
    return path


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """2 content images (different sizes) and 3 style images (one JPEG; ≥ 64 px, the tiny net's minimum)."""
    root = tmp_path_factory.mktemp("images")
    content, style = root / "content", root / "style"
    content.mkdir()
    style.mkdir()
    write_image(content / "c0.png", 40, 52, seed=1)
    write_image(content / "c1.png", 64, 48, seed=2)
    write_image(style / "s0.png", 64, 80, seed=3)
    write_image(style / "s1.jpg", 96, 72, seed=4)
    write_image(style / "s2.png", 64, 64, seed=5)
    return content, style


@pytest.fixture(scope="session")
def folder_copy():
    """folder_copy(src, dest, extra) → dest holding src's files plus ``extra`` {name: bytes}
    (a corrupt file, say)."""

    def make(src: Path, dest: Path, extra: dict[str, bytes]) -> Path:
        dest.mkdir(parents=True)
        for p in src.iterdir():
            (dest / p.name).write_bytes(p.read_bytes())
        for name, data in extra.items():
            (dest / name).write_bytes(data)
        return dest

    return make
