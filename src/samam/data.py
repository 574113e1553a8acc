"""Content/style image pairs for training (SPEC §5: resize 512×512, random crop 256, uniform pairs).

Shapes: B batch, H, W crop size. Images are float (3,H,W) in [0, 1].
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import math
import os
import signal
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from samam.ranks import first_process, process_group

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# A truncated file must fail, not decode into a grey half image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# PIL refuses images over ~179 MP as possible decompression bombs; the release lifts the limit
# too. Large WikiArt scans exceed it, and so does a 16K photo to stylise.
Image.MAX_IMAGE_PIXELS = None
Verify = Literal["full", "header", "none"]


def _no_file_summary(paths: Sequence[Path]) -> str:
    """How many of ``paths`` (image names that are no regular file) are broken symlinks, and one example."""
    broken, others = [], []  # one pass: looking each name up in broken was quadratic in the links
    for p in paths:
        (broken if p.is_symlink() and not p.exists() else others).append(p)
    parts = (
        [f"{len(broken)} × broken symlink (e.g. {broken[0]} → {os.readlink(broken[0])})"] if broken else []
    )
    if others:
        parts.append(f"{len(others)} × not a regular file (e.g. {others[0]})")
    return ", ".join(parts)


def list_images(folder: str | Path, what: str) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted; symlinked folders followed; hidden
    files and folders such as ``._x.jpg`` or ``.ipynb_checkpoints/`` skipped; other extensions, and
    image names that are no file to read (a broken symlink), left out with one warning that counts
    them). Run folders below
    ``folder`` (holding Hydra's ``.hydra/``: earlier train/eval/stylize runs' outputs, such as
    ``outputs/stylize/<time>/`` when the command runs inside the folder) are skipped with a
    warning; ``folder`` itself may be one. Missing or empty folders fail with what was found."""
    root = Path(folder).expanduser()
    if root.is_file():
        raise NotADirectoryError(
            f"{what} folder {str(root)!r} is a file; give the folder that holds the images"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {str(root)!r} does not exist (absolute: {root.resolve()})")
    every, seen, runs = [], {os.path.realpath(root)}, []
    for here, dirs, names in os.walk(root, followlinks=True):
        keep = []
        # Each real folder is walked once (symlink loops, two links to one folder), under the first
        # of its names in sorted order: in directory order, the name (and so the image list and its
        # digest) depended on the file system holding the folder
        for d in sorted(dirs):
            r = os.path.realpath(os.path.join(here, d))
            if not d.startswith(".") and r not in seen:
                seen.add(r)
                if os.path.isdir(os.path.join(r, ".hydra")):
                    runs.append(os.path.join(here, d))
                else:
                    keep.append(d)
        dirs[:] = keep
        every += [Path(here) / n for n in names if not n.startswith(".")]
    if runs and first_process():  # every DDP rank lists the folders alike: said once
        log.warning(
            "%s: leaving out %d run folder(s) under %s (they hold .hydra/: outputs of train, eval or "
            "stylize runs), e.g. %s",
            what,
            len(runs),
            root,
            runs[0],
        )
    # One stat per image name (200k on a shared file system). A broken symlink under an image's name
    # (a folder of links into a store that is not mounted) or a fifo: no file to read, said rather
    # than dropped without a word
    files, no_file = [], []
    for p in every:
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            (files if p.is_file() else no_file).append(p)
    files.sort()
    no_file.sort()
    if files and no_file and first_process():
        log.warning(
            "%s: leaving out %d entr%s under %s named as images that are no file to read: %s",
            what,
            len(no_file),
            "y" if len(no_file) == 1 else "ies",
            root,
            _no_file_summary(no_file),
        )
    others = Counter(
        p.suffix.lower() or "<no suffix>" for p in every if p.suffix.lower() not in IMAGE_EXTENSIONS
    )
    # A .gif or .heic among the photos must not vanish without a word (said once, not per DDP rank)
    if files and others and first_process():
        log.warning(
            "%s: leaving out %d file(s) under %s whose extension is not one of %s: %s",
            what,
            sum(others.values()),
            root,
            "/".join(IMAGE_EXTENSIONS),
            ", ".join(f"{n} × {ext}" for ext, n in others.most_common(8)),
        )
    if len(files) == 0:
        found = Counter(p.suffix.lower() or "<no suffix>" for p in every if p.is_file())
        parts = [f"{n} × {ext}" for ext, n in found.most_common(8)] + (
            [_no_file_summary(no_file)] if no_file else []
        )
        summary = ", ".join(parts) or "nothing"
        left_out = f"; {len(runs)} run folder(s) left out, e.g. {runs[0]}" if runs else ""
        raise FileNotFoundError(
            f"{what} folder {str(root)!r} holds no images ({'/'.join(IMAGE_EXTENSIONS)}, recursive); "
            f"found: {summary}{left_out}"
        )
    return files


def list_folders(folders: Sequence[tuple[str | Path, str]]) -> list[list[Path]]:
    """:func:`list_images` of each (folder, what). Under DDP rank 0 walks them and sends the lists
    to the other ranks (one broadcast_object_list): each rank used to walk COCO and WikiArt's
    200,000 files at once on the shared file system at every start. An error of rank 0's (a
    missing folder) is raised on every rank, so that none waits for lists that never come."""
    rank, world = process_group()
    if world == 1:
        return [list_images(folder, what) for folder, what in folders]
    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = [list_images(folder, what) for folder, what in folders]
        except Exception as err:  # every rank raises it below
            box[0] = err
    torch.distributed.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def _integer_white(im: Image.Image) -> float | None:
    """The white of a 16-bit grey image, from its mode or its file's header: a dark one (every value
    ≤ 255) was read as 8-bit, far too bright. Pillow opens a signed 16-bit TIFF as "I" (white 32767,
    below 0 black), and older Pillows a 16-bit PNG too (PNG has no other "I"). None where the file
    does not say (32-bit "I"): the values decide."""
    if im.mode.startswith("I;16"):
        return 65535.0
    if im.mode != "I":
        return None
    if im.format == "PNG":
        return 65535.0
    tags = getattr(im, "tag_v2", {})  # TIFF: BitsPerSample, SampleFormat (2: signed)
    if tuple(np.atleast_1d(tags.get(258, ()))) == (16,):
        return 32767.0 if tags.get(339, 1) in (2, (2,)) else 65535.0
    return None


def plan_decode(im: Image.Image, draft: int | None, max_megapixels: float | None) -> None:
    """Set ``im``'s draft (opened, not decoded: see :func:`load_rgb`), then ValueError where it
    decodes to more than ``max_megapixels`` (None: no limit); read from its header."""
    if draft is not None:
        # libjpeg's DCT scaling: a 12000×9000 painting for a 512² resize took 1.7 s and 1 GB
        # to decode whole. A reduction of ≥ 3× left to the resize is, in PIL's words,
        # indistinguishable from resizing the whole image (measured: ≤ 2/255, mean 0.12/255).
        im.draft(None, (3 * draft, 3 * draft))
    w, h = im.size  # its MP not rounded to units: an image of 100.4 MP read "(100 MP) ..., over 100"
    if max_megapixels is not None and w * h > max_megapixels * 1e6:
        raise ValueError(
            f"{w}×{h} px ({w * h / 1e6:g} MP) to decode, over data.max_megapixels={max_megapixels:g}: "
            "a training worker would hold several times that in memory"
        )


def load_rgb(
    path: str | Path, plain: bool = False, draft: int | None = None, max_megapixels: float | None = None
) -> Image.Image:
    """Decode any still image to 8-bit RGB: EXIF orientation applied; grayscale, RGBA/LA,
    palette and a transparent colour (PNG tRNS) on white, 16-bit, float, CMYK. ``plain``: PIL's
    ``convert('RGB')`` only, as the release reads images (no EXIF rotation, alpha dropped,
    16-bit saturated). ``draft``: the image is to be resized to draft×draft, so a JPEG at least
    6× that is decoded at 1/2, 1/4 or 1/8 scale, both sides kept ≥ 3·draft (PIL's draft).
    ``max_megapixels``: an image that would decode (after the draft) to more is refused from its
    header (:func:`plan_decode`)."""
    if plain:
        with Image.open(path) as im:
            return im.convert("RGB")
    # Opened from a file object, not the path: Pillow (13) memory-maps an uncompressed L, I;16 or
    # RGBA TIFF opened by path, and then drops its orientation tag without turning the pixels.
    with open(path, "rb") as f:
        try:
            im = Image.open(f)
        except UnidentifiedImageError:  # its message would name the file object
            raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None
        plan_decode(im, draft, max_megapixels)
        im.load()
        white = _integer_white(im)  # from the file's header, which the turned copy below lacks
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            hi = white or (65535.0 if arr.max() > 255 else 255.0)
            if im.mode == "F" and arr.max() <= 1.0:
                hi = 1.0
            key = im.info.get("transparency")  # a 16-bit PNG's transparent grey (tRNS), in its units
            alpha = np.where(arr == key, 0, 255).astype(np.uint8) if isinstance(key, int) else None
            # In place, the same operations as arr / hi * 255 + 0.5: each new float64 array was 8
            # bytes a pixel more (a 48 MP 16-bit scan took 1.22 GB to decode)
            arr /= hi
            arr *= 255.0
            arr += 0.5
            im = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "L")
            if alpha is not None:
                im.putalpha(Image.fromarray(alpha, "L"))  # LA
        if im.mode == "P" or (im.mode in ("1", "L", "RGB") and "transparency" in im.info):
            im = im.convert("RGBA")  # a transparent colour (PNG tRNS) becomes alpha; convert('RGB') drops it
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, rgba)
        return im.convert("RGB")


def check_image(
    path: Path, verify: Verify, draft: int | None = None, max_megapixels: float | None = None
) -> str | None:
    """None if usable, else the reason. 'header' reads headers only; 'full' decodes. ``draft``
    and ``max_megapixels`` as :func:`load_rgb` (the size is read from the header either way)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        if verify == "header":
            with Image.open(path) as im:
                plan_decode(im, draft, max_megapixels)
                im.verify()
        elif verify == "full":
            load_rgb(path, draft=draft, max_megapixels=max_megapixels)
    except Exception as err:  # PIL raises many types for bad files
        return f"{type(err).__name__}: {err}"
    return None


def to_tensor(im: Image.Image) -> Tensor:
    """PIL RGB -> (3,H,W) float in [0,1]."""
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def check_crop(crop: int, resize: int | None) -> None:
    """A configuration error, refused at construction (not found per image while training)."""
    if crop < 1 or (resize is not None and resize < crop):
        raise ValueError(f"data.resize={resize} must be ≥ data.crop={crop} ≥ 1 (or resize=null)")


# The release's training transform is torchvision's Resize((512, 512)) on PIL images: PIL's
# bilinear filter (antialiased when shrinking).
TRAIN_RESAMPLE = Image.BILINEAR


def resized_size(size: tuple[int, int], resize: int | None, crop: int) -> tuple[int, int]:
    """(W, H) an image of ``size`` is resized to before cropping: resize×resize (aspect not kept,
    as the release); with resize=None its own size, scaled up (aspect kept) if its short side is
    below the crop."""
    check_crop(crop, resize)
    if resize is not None:
        return resize, resize
    w, h = size
    if min(w, h) < crop:
        scale = crop / min(w, h)
        return max(crop, round(w * scale)), max(crop, round(h * scale))
    return w, h


def random_crop(im: Image.Image, resize: int | None, crop: int, rng: np.random.Generator) -> Image.Image:
    """A random crop×crop window of ``im`` resized to :func:`resized_size` (bilinear, as the
    release). An image scaled up for resize=null is not resized whole: only the window is
    resampled, from the matching box of ``im`` (an image of extreme aspect, 1×4,000 px, was
    scaled up to 256×1,024,000 px, 0.8 GB, for one crop). Its pixels are those of the whole
    image resized to within 1/255 (PIL rounds between its two passes, whose order it picks)."""
    (w, h), (rw, rh) = im.size, resized_size(im.size, resize, crop)
    x = int(rng.integers(0, rw - crop + 1))
    y = int(rng.integers(0, rh - crop + 1))
    if resize is None and (rw, rh) != (w, h):
        sx, sy = w / rw, h / rh
        return im.resize((crop, crop), TRAIN_RESAMPLE, box=(x * sx, y * sy, (x + crop) * sx, (y + crop) * sy))
    if resize is not None:
        im = im.resize((rw, rh), TRAIN_RESAMPLE)
    return im.crop((x, y, x + crop, y + crop))


class PathArray(Sequence[Path]):
    """Paths as one buffer of their bytes and an array of their ends. DataLoader workers are forks
    that share the parent's memory until they write to it, and reading a Python object writes its
    reference count: drawing from a list of 200,000 Paths (COCO + WikiArt) copied their pages into
    every worker over a run (+52 MB each, +88 MB once the garbage collector walks them)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._bytes = b"".join(encoded)
        self._ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> Path:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} paths")
        i %= len(self)
        start = int(self._ends[i - 1]) if i > 0 else 0
        return Path(os.fsdecode(self._bytes[start : int(self._ends[i])]))


class SkipLog:
    """Bad files seen by this process: one warning each (``warn=False``: none), counted."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()

    def add(self, path: Path, reason: str, warn: bool = True) -> None:
        if path not in self.paths:
            self.paths.add(path)
            if warn:
                log.warning("skipping unreadable image %s (%s)", path, reason)

    def __len__(self) -> int:
        return len(self.paths)


class RandomPairs(IterableDataset):
    """Endless uniformly random (content, style) crops, ``batch_size`` in a row per training step.
    Each pair is drawn from its own generator, seeded by (seed, step, its index in the global
    batch); this rank's pairs are indices rank·batch_size … (rank+1)·batch_size − 1. So ranks
    never repeat each other, a step's global batch is the same pairs whatever the number of
    devices, and a run resumed at ``start_step`` (on any number of devices and workers) draws at
    each step what the uninterrupted run drew there."""

    def __init__(
        self,
        content: Sequence[Path],
        style: Sequence[Path],
        crop: int = 256,
        resize: int | None = 512,
        seed: int = 0,
        rank: int = 0,
        start_step: int = 0,
        batch_size: int = 1,
        max_megapixels: float | None = None,
    ) -> None:
        super().__init__()
        self.content, self.style = PathArray(content), PathArray(style)
        check_crop(crop, resize)
        self.crop, self.resize, self.max_megapixels = crop, resize, max_megapixels
        self.seed, self.rank, self.start_step, self.batch_size = seed, rank, start_step, batch_size
        self.skipped = SkipLog()

    def _crop(self, path: Path, rng: np.random.Generator) -> Tensor:
        # resize=None crops at the image's own scale: no draft
        im = load_rgb(path, draft=self.resize, max_megapixels=self.max_megapixels)
        return to_tensor(random_crop(im, self.resize, self.crop, rng))  # (3,crop,crop)

    def _draw(self, files: PathArray, rng: np.random.Generator) -> Tensor:
        bad = self.skipped.paths  # this process's bad files, content and style alike
        while True:
            path = files[int(rng.integers(len(files)))]
            if path in bad:
                # Passed over, not dropped from the list: the draws stay the same whichever bad
                # files this process (worker, rank, resumed run) has met so far.
                if bad.issuperset(files):
                    what = "content" if files is self.content else "style"
                    raise RuntimeError(
                        f"every {what} image ({len(files)} under {os.path.commonpath([f.parent for f in files])}) failed "
                        "to decode while training; see the warnings above"
                    )
                continue
            try:
                return self._crop(path, rng)  # draws from rng only once the image has decoded
            except Exception as err:  # corrupt/truncated: skip, never decode it again, draw again
                self.skipped.add(path, f"{type(err).__name__}: {err}")

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The DataLoader takes batch i from worker i mod workers: this worker's steps.
        for step in itertools.count(self.start_step + worker, workers):
            for k in range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size):
                rng = np.random.default_rng([self.seed, step, k])
                c = self._draw(self.content, rng)
                s = self._draw(self.style, rng)
                yield {
                    "content": c,
                    "style": s,
                    "skipped": torch.tensor(len(self.skipped)),
                    "worker": torch.tensor(worker),
                }


class FixedPairs(Dataset):
    """Deterministic validation pairs, resized to size×size (no crop)."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], size: int) -> None:
        self.pairs, self.size = list(pairs), size

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Path) -> Tensor:
        return to_tensor(load_rgb(path).resize((self.size, self.size), TRAIN_RESAMPLE))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        c, s = self.pairs[i]
        return {"content": self._load(c), "style": self._load(s)}


def ignore_job_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SLURM signals every process of a job (SIGTERM on preemption,
    time limit or scancel; SIGUSR2 from submitit before the time limit). A worker killed by one
    made the main process fail mid-step ("DataLoader worker ... is killed by signal") instead of
    stopping at the step boundary with a checkpoint. The main process acts on them and ends its
    workers itself; a worker also exits once the main process is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


_training_streams: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register  # after torch's and multiprocessing's exit hooks, so it runs before them
def _end_training_workers() -> None:
    """At exit, torch leaves DataLoader workers to multiprocessing, which ends daemonic children
    with SIGTERM and waits for them; but training workers ignore SIGTERM, so a process that left
    with a training iterator alive (a script or notebook reading train_dataloader(), anything
    that skips Lightning's teardown) never exited. Its workers are ended as the iterator ends them."""
    for stream in list(_training_streams):
        stream._shutdown_workers()


class TrainingLoader(DataLoader):
    """A DataLoader whose workers run :func:`ignore_job_signals`: they are ended at exit too."""

    def _get_iterator(self) -> Any:
        stream = super()._get_iterator()
        if hasattr(stream, "_shutdown_workers"):  # workers: not with num_workers=0
            _training_streams.add(stream)
        return stream


def image_list_record(files: Sequence[Path], folder: str | Path) -> list[int | str]:
    """[number of files, digest of their paths below ``folder``] (``files`` from :func:`list_images`):
    equal for a moved copy of the folder, different once a file is added, removed or renamed."""
    root = Path(folder).expanduser()
    names = "\n".join(str(p.relative_to(root)) for p in files)
    return [len(files), hashlib.sha1(names.encode()).hexdigest()]


def split_batch(batch_size: int, world: int) -> int:
    """The per-device share of the global ``data.batch_size`` over ``world`` processes."""
    if batch_size % world != 0:
        raise ValueError(
            f"data.batch_size={batch_size} (global) does not divide over {world} devices "
            f"(devices × num_nodes); choose a multiple of {world}"
        )
    return batch_size // world


class StyleTransferDataModule(L.LightningDataModule):
    """Content and style folders -> endless random training pairs + fixed validation pairs.

    ``batch_size`` is the global batch; each device gets batch_size / world_size.
    ``verify`` checks every file at setup (under DDP each rank a share of them): 'header' (fast,
    catches empty and non-image files), 'full' (decodes everything; small folders), 'none'. Files
    that fail later are skipped while training. Either way each bad file is warned about once and
    counted (``skipped``). So is an image whose header says it decodes (a JPEG reduced by its draft,
    see :func:`load_rgb`) to more than ``max_megapixels`` (None: no limit): a worker decoding a
    13,500² RGB PNG (182 MP) grew by 1.45 GB, a few in one batch had it killed for memory.
    """

    def __init__(
        self,
        content_dir: str,
        style_dir: str,
        batch_size: int = 8,
        crop: int = 256,
        resize: int | None = 512,
        num_workers: int = 4,
        val_pairs: int = 4,
        val_size: int = 256,
        verify: Verify = "header",
        seed: int = 0,
        pin_memory: bool = True,
        max_megapixels: float | None = 100,
    ) -> None:
        super().__init__()
        for key, value in (("content_dir", content_dir), ("style_dir", style_dir)):
            if not value:
                raise ValueError(f"data.{key} is not set: pass data.{key}=<folder of images>")
        self.content_dir, self.style_dir = content_dir, style_dir
        if verify not in get_args(Verify):
            raise ValueError(f"verify={verify!r}: choose one of {', '.join(get_args(Verify))}")
        check_crop(crop, resize)
        # DataLoader refuses these only as fit starts, after the networks (and a first validation);
        # val_pairs=-1 trained with no validation at all.
        for key, value, least in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("val_pairs", val_pairs, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"data.{key}={value}: give an integer ≥ {least}")
        if max_megapixels is not None and not max_megapixels > 0:
            raise ValueError(f"data.max_megapixels={max_megapixels}: give a positive limit, or null for none")
        if val_pairs and not isinstance(val_size, int):  # else a TypeError at the first validation
            raise ValueError(
                f"data.val_size={'null' if val_size is None else val_size}: the validation pairs are batched at one size, val_size×val_size "
                "px; give it (data.val_size=256, say)"
            )
        self.batch_size, self.crop, self.resize = batch_size, crop, resize
        self.num_workers, self.val_pairs, self.val_size = num_workers, val_pairs, val_size
        self.verify, self.seed, self.pin_memory = verify, seed, pin_memory
        self.max_megapixels = max_megapixels
        self.setup_skipped = SkipLog()
        self.worker_skips: dict[int, int] = {}  # training workers' running skip counts, this rank
        self.content_files: list[Path] = []
        self.style_files: list[Path] = []
        self.fixed_pairs: list[tuple[Path, Path]] = []
        self.images: dict[str, list[int | str]] = {}  # set by setup: image_list_record per folder
        self._train: RandomPairs | None = None
        # (optimizer step, training batches drawn before it) where this fit's stream starts
        self._stream_start: tuple[int, int] | None = None
        self._resumed_batches: int | None = None  # from a checkpoint's state_dict

    @property
    def per_device_batch_size(self) -> int:
        return split_batch(self.batch_size, 1 if self.trainer is None else self.trainer.world_size)

    def _usable(self, *lists: list[Path]) -> list[list[Path]]:
        """Each of ``lists`` less its files that fail the ``verify`` check. Under DDP each rank
        checks every world-th file and the ranks pool what they found (one all_gather_object), so
        all end with the same lists; each rank used to open every file (8 GPUs × COCO + WikiArt's
        200,000 files at each start, at once, on the shared file system)."""
        if self.verify == "none":
            return list(lists)
        rank, world = process_group()
        every = [p for files in lists for p in files]
        mine = {
            p: reason
            for p in every[rank::world]
            if (reason := check_image(p, self.verify, self.resize, self.max_megapixels))
        }
        found: list[Any] = [mine]
        if world > 1:
            found = [None] * world
            torch.distributed.all_gather_object(found, mine)
        # By path, not position: setup gives every rank rank 0's lists, but lists that differ per
        # rank (listed by each) must not drop another rank's n-th file
        bad = {p: reason for share in found for p, reason in share.items()}
        for p in every:  # every rank counts them; said once, in the order of the lists
            if p in bad:
                self.setup_skipped.add(p, bad[p], warn=first_process())
        return [[p for p in files if p not in bad] for files in lists]

    def setup(self, stage: str | None = None) -> None:
        if len(self.content_files) > 0:
            return
        per_device = self.per_device_batch_size  # fails early on an indivisible batch
        if first_process():  # these lines say the same on every DDP rank
            log.info(
                "data: global batch %d = %d per device × %d devices",
                self.batch_size,
                per_device,
                1 if self.trainer is None else self.trainer.world_size,
            )
        content, style = self._usable(
            *list_folders([(self.content_dir, "content"), (self.style_dir, "style")])
        )
        for files, what, folder in ((content, "content", self.content_dir), (style, "style", self.style_dir)):
            if len(files) == 0:
                raise FileNotFoundError(f"{what} folder {folder!r}: every image failed to decode")
        self.content_files, self.style_files = content, style
        self.images = {  # what the stream and the validation pairs draw from, for a resume to compare
            what: image_list_record(files, folder)
            for what, files, folder in (
                ("content", content, self.content_dir),
                ("style", style, self.style_dir),
            )
        }
        self.fixed_pairs = self._pick_val_pairs()
        if first_process():
            log.info(
                "data: %d content, %d style images, %d skipped at setup, %d validation pairs",
                len(content),
                len(style),
                len(self.setup_skipped),
                len(self.fixed_pairs),
            )

    def _pick_val_pairs(self) -> list[tuple[Path, Path]]:
        rng = np.random.default_rng([self.seed, 9173])
        pairs: list[tuple[Path, Path]] = []
        c_order = rng.permutation(len(self.content_files))
        s_order = rng.permutation(len(self.style_files))
        # Fully decode the few validation images so a bad one is replaced now, not at step 1000.
        c_ok = [
            self.content_files[i]
            for i in c_order[: 4 * self.val_pairs]
            if check_image(self.content_files[i], "full", max_megapixels=self.max_megapixels) is None
        ]
        s_ok = [
            self.style_files[i]
            for i in s_order[: 4 * self.val_pairs]
            if check_image(self.style_files[i], "full", max_megapixels=self.max_megapixels) is None
        ]
        nc, ns = len(c_ok), len(s_ok)
        if self.val_pairs > nc * ns:
            log.info("data: %d validation pairs asked, %d distinct ones exist", self.val_pairs, nc * ns)
        # k ↦ (k mod nc, k mod ns) is one-to-one below lcm(nc, ns); each later round shifts the
        # style, so the first nc·ns pairs are all distinct.
        period = math.lcm(nc, ns) if nc and ns else 1
        for k in range(min(self.val_pairs, nc * ns)):
            pairs.append((c_ok[k % nc], s_ok[(k % ns + k // period) % ns]))
        return pairs

    @property
    def skipped(self) -> int:
        return len(self.setup_skipped)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Take a training batch's skip counter off while it is still on the host, so reading it
        never waits for the device. Each batch comes from one worker; its count is that
        worker's running total."""
        if isinstance(batch, dict) and "worker" in batch:
            self.worker_skips[int(batch.pop("worker")[0])] = int(batch.pop("skipped").max())
        return batch

    def train_dataloader(self) -> DataLoader:
        rank = 0 if self.trainer is None else self.trainer.global_rank
        step = 0 if self.trainer is None else self.trainer.global_step
        # Batches drawn before this (re)start, as the checkpoint counted them: a run resumed with
        # another trainer.accumulate_grad_batches goes on where the stream stopped (steps × the
        # new value would redraw or skip batches). Checkpoints without the count: steps × it.
        start = self._resumed_batches
        if start is None:
            start = 0 if self.trainer is None else step * self.trainer.accumulate_grad_batches
        self._stream_start = (step, start)
        batch = self.per_device_batch_size
        self._train = RandomPairs(
            self.content_files,
            self.style_files,
            self.crop,
            self.resize,
            self.seed,
            rank,
            start,
            batch,
            max_megapixels=self.max_megapixels,
        )
        return TrainingLoader(
            self._train,
            batch_size=batch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=ignore_job_signals,
        )

    def state_dict(self) -> dict[str, Any]:
        """The training batches (micro-batches) drawn by the optimizer steps done, for a resume, and
        the image lists they were drawn from (:func:`image_list_record`)."""
        if self.trainer is None or self._stream_start is None:
            return {}
        step, start = self._stream_start
        return {
            "train_batches": start + (self.trainer.global_step - step) * self.trainer.accumulate_grad_batches,
            "images": self.images,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """After setup (Lightning restores after it): a folder whose images changed since the
        checkpoint (a copy still syncing when the run started, files added or removed) is said
        once, as the stream no longer draws the uninterrupted run's batches."""
        self._resumed_batches = state_dict.get("train_batches")
        saved = state_dict.get("images") or {}
        folders = {"content": self.content_dir, "style": self.style_dir}
        changed = [
            f"{what} {folders[what]}: {saved[what][0]} usable images then, {n} now"
            + (" (others)" if saved[what][0] == n else "")
            for what, (n, digest) in self.images.items()
            if what in saved and list(saved[what]) != [n, digest]
        ]
        if changed and getattr(self.trainer, "global_rank", 0) == 0:  # once, not once per DDP rank
            log.warning(
                "data: the images differ from those of the checkpoint's run (%s): from here on the run draws "
                "other batches than the uninterrupted run would have, and its validation pairs may differ",
                "; ".join(changed),
            )

    def val_dataset(self) -> FixedPairs:
        return FixedPairs(self.fixed_pairs, self.val_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=max(1, len(self.fixed_pairs)), num_workers=0)
