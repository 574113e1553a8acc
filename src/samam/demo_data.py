"""Offline, license-clean demo data, generated on first use (deterministic).

content/: public-domain / CC0 photographs that ship inside the scikit-image wheel (no download).
style/:   procedurally generated paintings: brush strokes, mosaics, colour fields, stripes,
          pointillism, concentric rings, shards, marbling.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from samam.data import StyleTransferDataModule, Verify

log = logging.getLogger(__name__)

# (file in skimage/data, licence as stated by scikit-image)
CONTENT_PHOTOS = {
    "astronaut.png": "NASA, public domain",
    "chelsea.png": "CC0, Stefan van der Walt",
    "coffee.png": "CC0, Rachel Michetti",
    "rocket.jpg": "SpaceX, public domain",
    "hubble_deep_field.jpg": "NASA, public domain",
    "retina.jpg": "CC0, Mikael Häggström",
    "camera.png": "CC0, Lav Varshney",
    "coins.png": "Brooklyn Museum, no known copyright restrictions",
    "ihc.png": "CMMI, no known copyright restrictions",
}
SIZE = 512  # generation size
SAVE_SIZE = 256  # short side on disk
VERSION = "2"


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """n harmonious colours: random base hue, spread in HSV, as uint8 RGB (n,3)."""
    base = rng.random()
    hues = (base + rng.normal(0, 0.12, n) + rng.integers(0, 2, n) * 0.5) % 1.0
    sat = rng.uniform(0.4, 1.0, n)
    val = rng.uniform(0.35, 1.0, n)
    hsv = np.stack([hues, sat, val], axis=1)
    rgb = np.array(Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB"))[0]
    return rgb


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8), "L")
    return np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


def brush_strokes(rng: np.random.Generator) -> Image.Image:
    pal = _palette(rng, 6)
    im = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in pal[0]))
    draw = ImageDraw.Draw(im)
    flow = _smooth_noise(rng, SIZE, 4) * 2 * np.pi
    for _ in range(1800):
        x, y = rng.integers(0, SIZE, 2)
        angle = flow[y, x]
        length = rng.uniform(10, 40)
        dx, dy = np.cos(angle) * length, np.sin(angle) * length
        color = pal[rng.integers(len(pal))].astype(int) + rng.integers(-20, 21, 3)
        draw.line(
            (x - dx, y - dy, x + dx, y + dy),
            fill=tuple(np.clip(color, 0, 255).tolist()),
            width=int(rng.integers(3, 9)),
        )
    return im.filter(ImageFilter.SMOOTH)


def mosaic(rng: np.random.Generator) -> Image.Image:
    pal = _palette(rng, 7)
    n = int(rng.integers(60, 160))
    seeds = rng.uniform(0, SIZE, (n, 2))
    from scipy.spatial import cKDTree

    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dist, owner = cKDTree(seeds).query(np.stack([xx.ravel(), yy.ravel()], 1), k=2)  # (S·S, 2)
    colors = pal[rng.integers(len(pal), size=n)]
    img = colors[owner[:, 0]].reshape(SIZE, SIZE, 3).astype(np.float32)
    grout = (dist[:, 1] - dist[:, 0]).reshape(SIZE, SIZE) < 3.0
    img[grout] = 30
    return Image.fromarray(img.astype(np.uint8))


def colour_fields(rng: np.random.Generator) -> Image.Image:
    pal = _palette(rng, 4)
    img = np.zeros((SIZE, SIZE, 3), np.float32) + pal[0]
    edges = np.sort(rng.integers(40, SIZE - 40, 2))
    for i, (a, b) in enumerate(((30, edges[0]), (edges[0] + 20, edges[1]), (edges[1] + 20, SIZE - 30))):
        img[a:b, 40 : SIZE - 40] = pal[i + 1]
    blurred = Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(6))
    grain = (rng.normal(0, 8, (SIZE, SIZE, 1))).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(blurred, np.float32) + grain, 0, 255).astype(np.uint8))


def stripes(rng: np.random.Generator) -> Image.Image:
    pal = _palette(rng, 3).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    warp = _smooth_noise(rng, SIZE, 3) * rng.uniform(20, 60)
    freq = rng.uniform(0.04, 0.12)
    angle = rng.uniform(0, np.pi)
    t = np.sin((xx * np.cos(angle) + yy * np.sin(angle) + warp) * freq)
    w = (t[..., None] + 1) / 2
    img = pal[0] * w + pal[1] * (1 - w)
    return Image.fromarray(img.astype(np.uint8))


def pointillism(rng: np.random.Generator) -> Image.Image:
    pal = _palette(rng, 5)
    field = _smooth_noise(rng, SIZE, 5)
    im = Image.new("RGB", (SIZE, SIZE), (245, 240, 225))
    draw = ImageDraw.Draw(im)
    for _ in range(6000):
        x, y = rng.integers(0, SIZE, 2)
        k = int(field[y, x] * (len(pal) - 1) + rng.integers(0, 2)) % len(pal)
        r = int(rng.integers(2, 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in pal[k]))
    return im


def rings(rng: np.random.Generator) -> Image.Image:
    pal = _palette(rng, 4).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cx, cy = rng.uniform(0, SIZE, 2)
    r = np.hypot(xx - cx, yy - cy) + _smooth_noise(rng, SIZE, 6) * 25
    band = (r / rng.uniform(12, 30)).astype(int) % len(pal)
    return Image.fromarray(pal[band].astype(np.uint8)).filter(ImageFilter.SMOOTH_MORE)


def shards(rng: np.random.Generator) -> Image.Image:
    pal = _palette(rng, 6)
    im = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in pal[0]))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(40, 90))):
        pts = rng.uniform(-60, SIZE + 60, (3, 2))
        draw.polygon(
            [tuple(p) for p in pts],
            fill=tuple(int(v) for v in pal[rng.integers(len(pal))]),
            outline=(20, 20, 20),
        )
    return im


def marbling(rng: np.random.Generator) -> Image.Image:
    pal = _palette(rng, 3).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    n = _smooth_noise(rng, SIZE, 8) + 0.5 * _smooth_noise(rng, SIZE, 24)
    t = (np.sin((xx + yy) * rng.uniform(6, 14) + n * rng.uniform(6, 12)) + 1) / 2
    img = pal[0] * t[..., None] + pal[1] * (1 - t[..., None])
    veins = np.abs(t - 0.5) < 0.03
    img[veins] = pal[2]
    return Image.fromarray(img.astype(np.uint8))


GENERATORS = (brush_strokes, mosaic, colour_fields, stripes, pointillism, rings, shards, marbling)


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def generate(root: Path, styles_per_kind: int = 2, seed: int = 0) -> None:
    """Write content/ and style/ under root (overwrites)."""
    (root / "content").mkdir(parents=True, exist_ok=True)
    (root / "style").mkdir(parents=True, exist_ok=True)
    src = skimage_data_dir()
    lines = ["# Demo content photos (shipped with scikit-image; licences as scikit-image states them)"]
    for name, licence in CONTENT_PHOTOS.items():
        path = src / name
        if not path.is_file():
            log.warning("demo data: %s is not in this scikit-image install; skipped", path)
            continue
        im = Image.open(path).convert("RGB")
        scale = SAVE_SIZE / min(im.size)  # small files: decoding dominates a CPU demo step
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        im.save(root / "content" / (Path(name).stem + ".png"))
        lines.append(f"{name}: {licence}")
    for k, gen in enumerate(GENERATORS):
        for j in range(styles_per_kind):
            rng = np.random.default_rng([seed, k, j])
            gen(rng).resize((SAVE_SIZE, SAVE_SIZE), Image.LANCZOS).save(
                root / "style" / f"{gen.__name__}_{j}.png"
            )
    lines.append("style/: generated by samam.demo_data (procedural, no third-party content)")
    (root / "SOURCES.txt").write_text("\n".join(lines) + "\n")


def ensure_demo_data(root: str | Path) -> Path:
    """Generate the demo set into root once; concurrent callers are safe (build in tmp, rename).
    An existing folder is replaced only if it is an older demo set (a ``.complete-v*`` marker):
    anything else there is refused, never deleted."""
    root = Path(root)
    stamp = root / f".complete-v{VERSION}"
    if stamp.is_file():
        return root
    if root.exists() and any(root.iterdir()) and not any(root.glob(".complete-v*")):
        raise FileExistsError(
            f"data.root={str(root)!r} exists and is not a generated demo set (no .complete-v* marker); "
            "point data.root at an empty or new folder, or use data=folders for your own images"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        log.info("generating demo data into %s (first use, ~10 s)", root)
        generate(tmp)
        (tmp / f".complete-v{VERSION}").touch()
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if stamp.is_file():  # another process finished meanwhile: keep its set (it may be in use)
            return root
        if root.exists():  # an older demo set: moved aside, then removed
            old = Path(tempfile.mkdtemp(prefix=".demo-old-", dir=root.parent))
            os.replace(root, old / "set")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first
            if not stamp.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class DemoDataModule(StyleTransferDataModule):
    """StyleTransferDataModule over the generated demo set in ``root`` (created on first use)."""

    def __init__(
        self,
        root: str = "data/demo",
        batch_size: int = 4,
        crop: int = 128,
        resize: int | None = 256,
        num_workers: int = 0,
        val_pairs: int = 4,
        val_size: int = 128,
        verify: Verify = "none",
        seed: int = 0,
        pin_memory: bool = False,
        max_megapixels: float | None = 100,
    ) -> None:
        super().__init__(
            content_dir=str(Path(root) / "content"),
            style_dir=str(Path(root) / "style"),
            batch_size=batch_size,
            crop=crop,
            resize=resize,
            num_workers=num_workers,
            val_pairs=val_pairs,
            val_size=val_size,
            verify=verify,
            seed=seed,
            pin_memory=pin_memory,
            max_megapixels=max_megapixels,
        )
        self.root = root

    def prepare_data(self) -> None:
        ensure_demo_data(self.root)

    def setup(self, stage: str | None = None) -> None:
        # prepare_data runs on local rank 0 only; other callers (tests, notebooks) may skip it.
        ensure_demo_data(self.root)
        super().setup(stage)
