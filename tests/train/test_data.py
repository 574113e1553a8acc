import io
import logging
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samam.data import RandomPairs, StyleTransferDataModule, list_images, load_rgb


def _save(path: Path, im: Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def _rgb(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture()
def messy(tmp_path) -> tuple[Path, Path, int]:
    """Content folder with every odd mode plus broken files; returns (content, style, n_broken)."""
    c = tmp_path / "content"
    _save(c / "rgb.jpg", _rgb())
    _save(c / "nested" / "deeper" / "gray.png", _rgb().convert("L"))
    _save(c / "rgba.png", _rgb().convert("RGBA"))
    _save(c / "palette.gif.png", _rgb().convert("P"))
    _save(c / "cmyk.jpg", _rgb().convert("CMYK"))
    _save(c / "small.webp", _rgb(6, 5))
    _save(c / "UPPER.BMP", _rgb(), "BMP")
    _save(c / "scan.tif", _rgb(), "TIFF")
    Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).save(c / "deep16.png")
    (c / "empty.jpg").write_bytes(b"")
    (c / "notes.png").write_text("this is not an image")
    buf = io.BytesIO()
    _rgb(64, 64).save(buf, "JPEG")
    (c / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (c / "readme.txt").write_text("ignored: not an image extension")
    s = tmp_path / "style"
    for i in range(3):
        _save(s / f"s{i}.png", _rgb(seed=i + 1))
    return c, s, 3


def test_every_mode_converts_to_rgb(messy):
    content, _, _ = messy
    for name in (
        "nested/deeper/gray.png",
        "rgba.png",
        "palette.gif.png",
        "cmyk.jpg",
        "deep16.png",
        "scan.tif",
    ):
        im = load_rgb(content / name)
        assert im.mode == "RGB", name
    deep = np.asarray(load_rgb(content / "deep16.png"))
    assert deep.max() > 200 and deep.min() < 10  # scaled from 16 bit, not clipped


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "RGB"])
def test_an_uncompressed_tiffs_orientation_is_applied(tmp_path, mode):
    """Orientation 6 (turn 90° clockwise to view): a 4×3 (W×H) scan is read 3×4, its top-left
    pixel at the top right."""
    from PIL import TiffImagePlugin

    planes = {"L": (), "I;16": (), "RGB": (3,), "RGBA": (4,)}[mode]
    arr = np.zeros((3, 4, *planes), np.uint16 if mode == "I;16" else np.uint8)
    arr[0, 0] = 65535 if mode == "I;16" else 255
    if mode == "RGBA":
        arr[..., 3] = 255  # opaque
    im = Image.fromarray(arr)
    assert im.mode == mode
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[274] = 6
    im.save(tmp_path / "scan.tif", tiffinfo=tags)
    rgb = np.asarray(load_rgb(tmp_path / "scan.tif"))
    assert rgb.shape == (4, 3, 3)
    assert (rgb[0, -1] == 255).all() and rgb.sum() == 3 * 255
    (tmp_path / "notes.tif").write_text("not an image")  # read from a file object, named by its path
    with pytest.raises(OSError, match=r"cannot identify image file '.*notes\.tif'"):
        load_rgb(tmp_path / "notes.tif")


def test_a_transparent_colour_is_on_white_as_alpha_is(tmp_path):
    """PNG's tRNS (one colour marked transparent, in grayscale and RGB files) is alpha too."""
    gray = np.zeros((4, 6), np.uint8)
    gray[0, 0] = 200
    Image.fromarray(gray).save(tmp_path / "gray.png", transparency=0)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    for name in ("gray.png", "rgb.png"):
        assert "transparency" in Image.open(tmp_path / name).info, name
        rgb = np.asarray(load_rgb(tmp_path / name))
        assert (rgb[0, 0] == 200).all(), name  # the opaque pixel is kept
        assert (rgb.reshape(-1, 3)[1:] == 255).all(), name  # the transparent ones are white


def test_a_transparent_grey_of_a_16_bit_png_is_on_white(tmp_path):
    """A 16-bit grayscale PNG's tRNS grey came out black: the 16-bit decoding dropped it."""
    gray = np.zeros((4, 6), np.int32)
    gray[0, 0] = 51400  # 200 in 8 bits
    Image.fromarray(gray).convert("I;16").save(tmp_path / "gray16.png", transparency=0)
    assert Image.open(tmp_path / "gray16.png").info.get("transparency") == 0
    rgb = np.asarray(load_rgb(tmp_path / "gray16.png"))
    assert (rgb[0, 0] == 200).all()  # the opaque pixel is kept
    assert (rgb.reshape(-1, 3)[1:] == 255).all()  # the transparent ones are white


def test_a_dark_16_bit_image_is_read_as_16_bit(tmp_path):
    """Pillow opens a signed 16-bit TIFF as mode "I", whose values once decided its depth: a dark
    one (all ≤ 255) was read as 8-bit, 128× too bright. The header says 16 bits."""
    gray = np.full((4, 6), 200, np.uint16)
    gray[0, 0] = 32767
    Image.fromarray(gray).save(tmp_path / "signed16.tif", tiffinfo={339: 2})  # SampleFormat: signed
    Image.fromarray(gray).save(tmp_path / "unsigned16.png")
    assert Image.open(tmp_path / "signed16.tif").mode == "I"
    signed = np.asarray(load_rgb(tmp_path / "signed16.tif"))[..., 0]
    assert signed[0, 0] == 255 and (signed.reshape(-1)[1:] == 2).all()  # 200 / 32767 of white
    assert (np.asarray(load_rgb(tmp_path / "unsigned16.png"))[1:] == 1).all()  # 200 / 65535


def test_a_16_bit_image_is_scaled_to_8_bit_in_place(tmp_path):
    """Each step of the 16-bit scaling made a new float64 array: 24 bytes a pixel at the peak (a
    48 MP scan took a worker 1.22 GB, 3× an 8-bit one under the same data.max_megapixels). The
    same operations in place keep one, and the same pixels."""
    import tracemalloc

    gray = np.random.default_rng(0).integers(0, 65536, (400, 500)).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "deep.png")
    tracemalloc.start()
    try:
        rgb = np.asarray(load_rgb(tmp_path / "deep.png"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * gray.size  # bytes: one float64 copy (8 a pixel), not three
    assert np.array_equal(rgb[..., 0], np.clip(gray / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8))


def test_broken_files_skipped_and_counted(messy, caplog):
    content, style, n_broken = messy
    dm = StyleTransferDataModule(
        str(content),
        str(style),
        batch_size=2,
        crop=16,
        resize=24,
        num_workers=0,
        val_pairs=2,
        val_size=16,
        verify="full",
    )
    with caplog.at_level(logging.WARNING, logger="samam.data"):
        dm.setup("fit")
    assert dm.skipped == n_broken
    assert len(dm.content_files) == 9
    assert sum("skipping unreadable image" in r.message for r in caplog.records) == n_broken
    batch = next(iter(dm.train_dataloader()))
    assert batch["content"].shape == (2, 3, 16, 16) and batch["style"].shape == (2, 3, 16, 16)
    assert 0 <= batch["content"].min() and batch["content"].max() <= 1
    val = next(iter(dm.val_dataloader()))
    assert val["content"].shape == (2, 3, 16, 16)


@pytest.mark.parametrize("rank, node", [(1, "0"), (0, "1")])
def test_setup_lines_every_rank_would_repeat_are_left_to_the_first_process(
    messy, caplog, monkeypatch, rank, node
):
    """Every DDP rank lists and checks the same folders: each printed the batch split, the counts, the
    files left out and a warning per bad file (8 copies on 8 GPUs). Other processes still count them."""
    from lightning.pytorch.utilities import rank_zero_only

    content, style, n_broken = messy
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.setenv("NODE_RANK", node)  # the first process of another node
    dm = StyleTransferDataModule(str(content), str(style), crop=16, resize=24, val_size=16, verify="full")
    with caplog.at_level(logging.INFO, logger="samam.data"):
        dm.setup("fit")
    assert dm.skipped == n_broken
    assert caplog.records == []


@pytest.mark.parametrize("differ", [False, True])
def test_ddp_ranks_share_the_setup_check_and_end_with_the_same_lists(messy, monkeypatch, differ):
    """Every DDP rank opened every file at set-up (8 GPUs × COCO + WikiArt's 200,000 files at each
    start, at once, on the shared file system): each rank now checks its share and the ranks pool
    the bad files, so each ends with the one process's lists, counts and image records. Two ranks
    as two threads, torch.distributed's calls standing in for the process group. ``differ``: rank
    0 lists one more file than a rank 1 would (another node's copy of the folder): rank 0 lists for
    every rank, so both end with its lists."""
    import threading

    import samam.data

    content, style, n_broken = messy
    _save(content / "0.png", _rgb())  # listed by rank 0 only, with differ (a copy still syncing)
    world, here, opens = 2, threading.local(), Counter()
    meet, slots, sent = threading.Barrier(world, timeout=60), [None] * world, []

    def all_gather_object(out: list, obj) -> None:
        slots[here.rank] = obj
        meet.wait()
        out[:] = list(slots)
        meet.wait()  # no rank overwrites its slot before every rank has read them

    def broadcast_object_list(objs: list, src: int = 0) -> None:
        if here.rank == src:
            sent[:] = objs
        meet.wait()
        objs[:] = sent
        meet.wait()

    def opening(fp, *args, **kwargs):
        opens[getattr(here, "rank", None)] += 1
        return open_image(fp, *args, **kwargs)

    def listing(folder, what):
        files = list_images(folder, what)
        return files if differ and here.rank == 0 else [p for p in files if p.name != "0.png"]

    def setup(rank: int | None, out: dict) -> None:
        here.rank = rank
        dm = StyleTransferDataModule(
            str(content), str(style), crop=16, resize=24, val_pairs=0, verify="header"
        )
        dm.setup("fit")
        out[rank] = (dm.content_files, dm.style_files, sorted(dm.setup_skipped.paths), dm.images)

    open_image, results = Image.open, {}
    monkeypatch.setattr(Image, "open", opening)
    monkeypatch.setattr(samam.data, "list_images", listing)
    setup(None, results)  # one process
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: here.rank)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast_object_list)
    ranks = [threading.Thread(target=setup, args=(rank, results)) for rank in range(world)]
    for t in ranks:
        t.start()
    for t in ranks:
        t.join()
    assert len(results[None][2]) == n_broken - 1  # the truncated JPEG passes the header check
    files = 12 + 3  # files that are not empty (an empty one is not opened)
    assert opens[None] == files - 1 and max(opens[0], opens[1]) <= (files + 1) // 2
    assert results[0] == results[1]
    if not differ:
        assert results[0] == results[None]
    else:  # rank 0's list: every good file of the one process's and the file only rank 0 has
        assert set(results[0][0]) == set(results[None][0]) | {content / "0.png"}


def _set_up_as_a_rank(rank: int, store: str, content: str, style: str, out: str) -> None:
    """One rank of a 2-process gloo group (its own process): sets up the data module, counting its
    list_images calls, then one whose content folder is missing; writes what it saw to out/<rank>.json."""
    import json

    import samam.data

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        calls, listing = [], samam.data.list_images
        samam.data.list_images = lambda folder, what: calls.append(what) or listing(folder, what)
        dm = StyleTransferDataModule(content, style, crop=16, resize=24, val_pairs=0, verify="header")
        dm.setup("fit")
        seen = {"calls": list(calls), "content": [str(p) for p in dm.content_files]}
        seen["style"] = [str(p) for p in dm.style_files]
        missing = StyleTransferDataModule(f"{content}_gone", style, crop=16, resize=24, val_pairs=0)
        try:
            missing.setup("fit")
            error = None
        except FileNotFoundError as err:
            error = str(err)
        seen["error"] = error
        Path(out, f"{rank}.json").write_text(json.dumps(seen))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_under_ddp_rank_0_alone_lists_the_folders_and_every_rank_gets_its_lists(tmp_path):
    """Every rank walked the image folders (8 GPUs × COCO + WikiArt's 200,000 files at each start,
    at once, on the shared file system): rank 0 walks them and broadcasts the lists. A real gloo
    group of two processes; a folder rank 0 cannot list fails on both ranks, neither hangs."""
    import json
    import multiprocessing

    content, style = tmp_path / "content", tmp_path / "style"
    for i in range(5):
        _save(content / f"c{i}.png", _rgb(seed=i))
    for i in range(3):
        _save(style / "sub" / f"s{i}.jpg", _rgb(seed=10 + i))
    ctx = multiprocessing.get_context("spawn")
    args = (str(tmp_path / "store"), str(content), str(style), str(tmp_path))
    ranks = [ctx.Process(target=_set_up_as_a_rank, args=(rank, *args)) for rank in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=180)
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in ranks] == [0, 0]
    seen = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert seen[0]["calls"] == ["content", "style"] and seen[1]["calls"] == []
    one = [str(p) for p in list_images(content, "content")], [str(p) for p in list_images(style, "style")]
    for rank in seen:
        assert (rank["content"], rank["style"]) == one
        assert "content folder" in rank["error"] and "_gone" in rank["error"]


def test_header_check_then_runtime_skip(messy, caplog):
    """'header' misses the truncated JPEG; training skips it when drawn, once, and counts it."""
    content, style, _ = messy
    dm = StyleTransferDataModule(
        str(content), str(style), batch_size=2, crop=16, resize=None, num_workers=0, verify="header"
    )
    dm.setup("fit")
    assert dm.skipped == 2  # empty + text file
    pairs = RandomPairs(dm.content_files, dm.style_files, crop=16, resize=None, seed=0)
    stream = iter(pairs)
    with caplog.at_level(logging.WARNING, logger="samam.data"):
        samples = [next(stream) for _ in range(60)]
    assert int(samples[-1]["skipped"]) == 1
    assert any(p.name == "truncated.jpg" for p in pairs.skipped.paths)
    assert sum("truncated.jpg" in r.message for r in caplog.records) == 1
    assert samples[0]["content"].shape == (3, 16, 16)  # 6×5 webp was scaled up to the crop


def test_a_bad_file_met_earlier_does_not_change_later_draws(tmp_path):
    """A run resumed after the stream met a bad file (or another worker or rank, which has not
    met it) draws what the uninterrupted run draws: the file was dropped from the list, and
    every later draw picked from the shorter list."""
    files = [_save(tmp_path / f"{i}.png", _rgb(seed=i)) for i in range(3)]
    (tmp_path / "bad.png").write_text("not an image")
    files.append(tmp_path / "bad.png")

    def stream(start: int) -> Iterator[dict[str, torch.Tensor]]:
        return iter(RandomPairs(files, files, crop=8, resize=16, seed=0, start_step=start))

    whole = stream(0)
    head = [next(whole) for _ in range(6)]
    assert int(head[-1]["skipped"]) == 1  # met before step 6
    resumed = stream(6)
    for _ in range(6):
        a, b = next(whole), next(resumed)
        assert torch.equal(a["content"], b["content"]) and torch.equal(a["style"], b["style"])


def test_streams_differ_per_rank_and_worker_and_repeat_per_seed(tmp_path, monkeypatch):
    import types

    import samam.data

    files = [_save(tmp_path / f"{i}.png", _rgb(seed=i)) for i in range(8)]

    def first(rank: int = 0, start: int = 0, seed: int = 0, worker: int | None = None) -> torch.Tensor:
        info = None if worker is None else types.SimpleNamespace(id=worker, num_workers=2)
        monkeypatch.setattr(samam.data, "get_worker_info", lambda: info)
        pairs = RandomPairs(files, files, crop=8, resize=16, seed=seed, rank=rank, start_step=start)
        return next(iter(pairs))["content"]

    assert torch.equal(first(), first())
    assert torch.equal(first(), first(worker=0))  # the main process is worker 0
    assert not torch.equal(first(), first(rank=1))
    assert not torch.equal(first(worker=0), first(worker=1))
    assert not torch.equal(first(), first(seed=1))
    assert not torch.equal(first(), first(start=100))  # a resumed run does not replay step 0


def test_the_stream_holds_its_paths_in_a_few_objects_not_one_per_file(tmp_path):
    """DataLoader workers are forks: reading a Python object writes its reference count, so each
    worker drawing from a list of 200,000 Paths copied their pages over a run (+52 MB a worker).
    The stream keeps its paths in a few objects and draws the same files."""
    import gc

    files = [tmp_path / f"{i:012d}.jpg" for i in range(1000)] + [tmp_path / "Naïve_Art" / "café-à-l’été.jpg"]
    pairs = RandomPairs(files, files[::-1], crop=8, resize=16)
    seen, todo = set(), [pairs.content, pairs.style]
    while todo:
        obj = todo.pop()
        if id(obj) not in seen and not isinstance(obj, type):
            seen.add(id(obj))
            todo += gc.get_referents(obj)
    assert len(seen) < 100
    assert list(pairs.content) == files and list(pairs.style) == files[::-1]
    assert pairs.content[-1] == files[-1] and len(pairs.style) == 1001
    with pytest.raises(IndexError):
        pairs.content[1001]


def test_train_dataloader_starts_the_stream_at_the_restored_step(tmp_path):
    for i in range(4):
        _save(tmp_path / f"{i}.png", _rgb(seed=i))

    class RestoredTrainer:  # what Lightning has restored from a checkpoint before building loaders
        world_size, global_rank, global_step, accumulate_grad_batches = 2, 1, 1234, 1

    dm = StyleTransferDataModule(str(tmp_path), str(tmp_path), batch_size=2, crop=8, resize=16, num_workers=0)
    dm.trainer = RestoredTrainer()
    dm.setup("fit")
    dm.train_dataloader()
    assert (dm._train.rank, dm._train.start_step) == (1, 1234)


def test_a_resumed_stream_draws_the_uninterrupted_runs_batches_whatever_the_workers(tmp_path):
    for i in range(4):
        _save(tmp_path / f"{i}.png", _rgb(seed=i))

    class Restored:  # a trainer as Lightning has restored it from a checkpoint at `global_step`
        world_size, global_rank, accumulate_grad_batches = 1, 0, 1

        def __init__(self, global_step: int) -> None:
            self.global_step = global_step

    def batches(step: int, workers: int, n: int) -> list[torch.Tensor]:
        dm = StyleTransferDataModule(
            str(tmp_path),
            str(tmp_path),
            batch_size=2,
            crop=8,
            resize=16,
            num_workers=workers,
            pin_memory=False,
        )
        dm.trainer = Restored(step)
        dm.setup("fit")
        stream = iter(dm.train_dataloader())
        return [torch.cat([b["content"], b["style"]]) for b in (next(stream) for _ in range(n))]

    whole = batches(0, 0, 5)
    assert all(torch.equal(a, b) for a, b in zip(whole[3:], batches(3, 0, 2), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(whole, batches(0, 2, 5), strict=True))
    # resumed and with workers: worker i's first step is 3 + i (not 3·workers + i)
    assert all(torch.equal(a, b) for a, b in zip(whole[3:], batches(3, 2, 2), strict=True))
    assert not torch.equal(whole[0], whole[1])


def test_a_resume_on_images_other_than_the_checkpoints_says_so(tmp_path, caplog):
    """A folder still syncing when the run started, files added or renamed since: the resumed stream
    and validation pairs are drawn from another list, which nothing said. A moved copy is the same."""
    import shutil

    content, style = tmp_path / "content", tmp_path / "style"
    for folder in (content, style):
        for i in range(3):
            _save(folder / f"{i}.png", _rgb(seed=i))

    class Restored:
        world_size, global_rank, global_step, accumulate_grad_batches = 1, 0, 5, 1

    def module(c: Path) -> StyleTransferDataModule:
        dm = StyleTransferDataModule(str(c), str(style), batch_size=2, crop=8, resize=16, num_workers=0)
        dm.trainer = Restored()
        dm.setup("fit")
        return dm

    dm = module(content)
    dm.train_dataloader()
    saved = dm.state_dict()

    def resumed_on(c: Path) -> str:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="samam"):
            module(c).load_state_dict(saved)
        return caplog.text

    assert resumed_on(content) == ""
    shutil.copytree(content, tmp_path / "moved")
    assert resumed_on(tmp_path / "moved") == ""
    _save(content / "3.png", _rgb(seed=3))
    assert f"content {content}: 3 usable images then, 4 now" in resumed_on(content)
    Restored.global_rank = 1  # said once, by rank 0, not by every DDP rank
    assert resumed_on(content) == ""
    Restored.global_rank = 0
    (content / "3.png").unlink()
    (content / "2.png").rename(content / "2b.png")
    assert "3 usable images then, 3 now (others)" in resumed_on(content)


def test_a_steps_global_batch_is_the_same_pairs_on_any_number_of_devices(tmp_path):
    """data.batch_size is global: 2 devices × 2 train on the 1 device × 4 run's pairs (ranks
    split them), so a run resumed on another number of devices draws what it would have."""
    for i in range(6):
        _save(tmp_path / f"{i}.png", _rgb(seed=i))

    def global_batch(step: int, world: int) -> torch.Tensor:  # (batch_size·2, 3, H, W): contents, styles
        parts = []
        for rank in range(world):

            class Resumed:  # a trainer restored at `step` on rank `rank` of `world`
                world_size, global_rank, global_step, accumulate_grad_batches = world, rank, step, 1

            dm = StyleTransferDataModule(
                str(tmp_path), str(tmp_path), batch_size=4, crop=8, resize=16, num_workers=0, pin_memory=False
            )
            dm.trainer = Resumed()
            dm.setup("fit")
            parts.append(next(iter(dm.train_dataloader())))
        return torch.cat([torch.cat([b["content"] for b in parts]), torch.cat([b["style"] for b in parts])])

    for step in (0, 7):
        one = global_batch(step, 1)
        assert torch.equal(one, global_batch(step, 2))
        assert torch.equal(one, global_batch(step, 4))
    assert not torch.equal(global_batch(0, 1), global_batch(7, 1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_training_workers_leave_job_signals_to_the_main_process(tmp_path, signum):
    """SLURM signals every process of a job: a worker killed by it made the main process fail
    mid-step instead of stopping at the step boundary with a checkpoint."""
    for i in range(4):
        _save(tmp_path / f"{i}.png", _rgb(seed=i))
    dm = StyleTransferDataModule(
        str(tmp_path), str(tmp_path), batch_size=2, crop=8, resize=16, num_workers=1, pin_memory=False
    )
    dm.setup("fit")
    stream = iter(dm.train_dataloader())
    next(stream)
    (worker,) = stream._workers
    try:
        os.kill(worker.pid, signum)
        worker.join(timeout=1.0)  # returns at once if the signal ended it
        assert worker.is_alive()
        assert next(stream)["content"].shape == (2, 3, 8, 8)
    finally:
        stream._shutdown_workers()
    assert not worker.is_alive()  # the main process still ends it


def test_a_process_leaving_with_a_training_stream_alive_exits(tmp_path):
    """At exit multiprocessing ends DataLoader workers with SIGTERM and waits for them; training
    workers ignore it, so a script that read train_dataloader() and returned never exited."""
    import subprocess
    import sys

    for i in range(2):
        _save(tmp_path / f"{i}.png", _rgb(seed=i))
    script = (
        "from samam.data import StyleTransferDataModule as D\n"
        f"dm = D({str(tmp_path)!r}, {str(tmp_path)!r}, batch_size=2, crop=8, resize=16, num_workers=2, val_pairs=0)\n"
        "dm.setup('fit')\n"
        "stream = iter(dm.train_dataloader())\n"
        "print(next(stream)['content'].shape)\n"
    )
    try:
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the process did not exit: {err.stdout!r}")
    assert run.returncode == 0, run.stderr
    assert "torch.Size([2, 3, 8, 8])" in run.stdout
    assert "killed by signal" not in run.stderr


def test_data_folders_must_be_given(compose):
    """data=folders inherits coco_wikiart: a ??? there could not override its folders."""
    from hydra.utils import instantiate

    cfg = compose(["data=folders"])
    assert cfg.data.content_dir is None and cfg.data.style_dir is None
    with pytest.raises(Exception, match="data.content_dir is not set"):  # hydra wraps the ValueError
        instantiate(cfg.data)


def test_missing_and_empty_folders_fail_with_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing", "content")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"holds no images.*1 × \.txt"):
        list_images(tmp_path / "empty", "style")


def test_a_file_given_as_the_folder_is_named_a_file_not_missing(tmp_path):
    """data.style_dir=starry_night.jpg: the file exists, so "does not exist" would mislead."""
    _save(tmp_path / "starry_night.jpg", _rgb())
    with pytest.raises(NotADirectoryError, match="starry_night.jpg' is a file"):
        list_images(tmp_path / "starry_night.jpg", "style")


def test_global_batch_must_divide_over_devices(tmp_path):
    class FakeTrainer:
        world_size, global_rank, global_step = 4, 0, 0

    dm = StyleTransferDataModule(str(tmp_path), str(tmp_path), batch_size=6)
    dm.trainer = FakeTrainer()
    with pytest.raises(ValueError, match="does not divide over 4 devices"):
        _ = dm.per_device_batch_size
    dm.batch_size = 8
    assert dm.per_device_batch_size == 2


def test_skipped_total_counts_setup_once_and_sums_workers_then_ranks():
    """And in the same all-reduce: the loss terms averaged, the stop votes summed."""
    from samam.module import reduce_step

    calls = []

    def two_ranks(t):  # stands in for the DDP all-reduce (a sum): the other rank skipped 3, voted to stop
        calls.append("sum")
        return t + torch.tensor([3.0, 3.0, 1.0])  # its loss was 3

    losses, skipped, votes = reduce_step({"loss": torch.tensor(1.0)}, 2, {0: 1, 1: 4}, False, 2, two_ranks)
    assert skipped == 2 + (1 + 4) + 3
    assert calls == ["sum"]
    assert losses["loss"] == 2.0 and votes == 1
    one = reduce_step({"loss": torch.tensor(1.0)}, 2, {0: 1, 1: 4}, True, 1, two_ranks)
    assert one[1] == 2 + (1 + 4) and one[2] == 1 and calls == ["sum"]  # one process: no reduce


def test_one_process_counts_skips_exactly_under_a_bfloat16_default_dtype():
    """trainer.precision=bf16-true sets the default dtype to bfloat16 during the step: one process's
    skip count was a bfloat16 tensor, 257 skipped images logged as 256."""
    from samam.module import reduce_step

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        _, skipped, _ = reduce_step({"loss": torch.tensor(1.0)}, 0, {0: 257}, False, 1, lambda t: t)
    finally:
        torch.set_default_dtype(old)
    assert skipped.item() == 257


@pytest.mark.gpu
def test_the_step_counts_go_to_the_gpu_from_pinned_memory(monkeypatch):
    """A non_blocking copy from pageable memory waits for the host-side staging all the same:
    the counts were an unpinned tensor, converted on the way when the losses were fp64."""
    from samam.module import reduce_step

    pinned, to = [], torch.Tensor.to

    def spy(t, *args, **kwargs):
        if kwargs.get("non_blocking") and t.device.type == "cpu":
            pinned.append(t.is_pinned())
        return to(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        loss = torch.tensor(1.0, device="cuda", dtype=dtype)
        losses, skipped, votes = reduce_step({"loss": loss}, 2, {0: 300, 1: 4}, True, 2, lambda t: t * 2)
        assert skipped.item() == 2 + 2 * 304 and votes.item() == 2 and losses["loss"].item() == 1.0
    assert pinned == [True, True, True]


def test_skip_counter_leaves_the_batch_on_the_host():
    """The datamodule takes each training batch's counter off before the batch is moved, so
    logging it never waits for the device; a later batch of a worker replaces its count."""
    dm = StyleTransferDataModule(".", ".")
    image = torch.zeros(2, 3, 8, 8)
    for worker, count in ((0, 1), (1, 4), (0, 2)):
        batch = {
            "content": image,
            "style": image,
            "skipped": torch.tensor([count - 1, count]),
            "worker": torch.tensor([worker] * 2),
        }
        assert set(dm.on_before_batch_transfer(batch, 0)) == {"content", "style"}
    assert dm.worker_skips == {0: 2, 1: 4}
    val = {"content": image, "style": image}
    assert dm.on_before_batch_transfer(val, 0) is val and dm.worker_skips == {0: 2, 1: 4}


def test_training_logs_bad_files(compose, tiny, demo_root, tmp_path):
    """End to end: a file that fails the header check at setup is in data/skipped."""
    import shutil

    from samam.train import main

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    (root / "content" / "notes.png").write_text("not an image")
    cfg = compose([*tiny(tmp_path / "run"), f"data.root={root}", "data.verify=header", "debug=fdr"])
    metrics = main(cfg)
    assert metrics["data/skipped"] == 1.0


def test_a_resumed_run_counts_bad_files_on_from_its_checkpoint(compose, tiny, demo_root, tmp_path):
    """data/skipped restarted from the setup count after a resume (new workers, new counts), so
    the log fell and a resumed run under-reported; it now goes on from the checkpoint's count."""
    import csv
    import shutil

    from samam.train import main

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    for i in range(20):  # pass the header check, fail to decode while training
        buf = io.BytesIO()
        _rgb(64, 64, seed=i).save(buf, "JPEG")
        (root / "content" / f"truncated{i}.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    run = [*tiny(tmp_path / "run"), f"data.root={root}", "data.verify=header"]
    main(compose([*run, "trainer.max_steps=2"]))
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["samam"]
    main(compose([*run, "trainer.max_steps=4"]))  # ckpt_path=auto
    logged = []
    for version in ("version_0", "version_1"):
        with open(tmp_path / "run" / "csv" / version / "metrics.csv") as f:
            logged += [
                (int(r["step"]), float(r["data/skipped"])) for r in csv.DictReader(f) if r["data/skipped"]
            ]
    counts = [n for _, n in sorted(logged)]
    assert [s for s, _ in sorted(logged)] == [0, 1, 2, 3]
    assert counts[1] > 0 and counts == sorted(counts), counts
    assert saved["train_skipped"] == counts[1]


def test_a_checkpoint_without_the_skip_count_loads_and_counts_from_zero():
    from torch import nn

    from samam.module import StyleTransferModule

    module = StyleTransferModule(nn.Linear(1, 1), nn.Module(), optimizer=torch.optim.Adam)
    module.on_load_checkpoint({"state_dict": {}, "global_step": 3, "samam": {"version": 1}})
    assert module._skipped_before == 0


def test_listing_follows_symlinked_folders_once_and_skips_hidden_files(tmp_path):
    from samam.data import list_images

    real = tmp_path / "elsewhere"
    (real / "sub").mkdir(parents=True)
    for p in (real / "a.png", real / "sub" / "b.jpg"):
        Image.new("RGB", (8, 8)).save(p)
    root = tmp_path / "styles"
    (root / ".ipynb_checkpoints").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "c.png")
    Image.new("RGB", (8, 8)).save(root / ".ipynb_checkpoints" / "c-checkpoint.png")
    (root / "._c.png").write_bytes(b"AppleDouble")  # macOS metadata beside every file
    (root / "linked").symlink_to(real, target_is_directory=True)
    (real / "sub" / "loop").symlink_to(root, target_is_directory=True)  # a cycle is walked once
    names = sorted(p.name for p in list_images(root, "style"))
    assert names == ["a.png", "b.jpg", "c.png"]


def test_listing_names_the_files_it_leaves_out(tmp_path, caplog):
    """A .gif or .heic among the photos is not read, and says so; a folder of images alone says nothing."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger="samam.data"):
        list_images(tmp_path, "content")
    assert caplog.records == []
    Image.new("RGB", (8, 8)).save(tmp_path / "b.gif")
    (tmp_path / "c.HEIC").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    with caplog.at_level(logging.WARNING, logger="samam.data"):
        assert [p.name for p in list_images(tmp_path, "content")] == ["a.png"]
    assert "leaving out 3 file(s)" in caplog.text and "1 × .gif" in caplog.text and "1 × .heic" in caplog.text


def test_listing_names_broken_symlinks_and_other_non_files_under_image_names(tmp_path, caplog):
    """A folder of links into a store that is not mounted lost them without a word, and with all
    of them broken said it found "nothing"."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "gone" / "b.jpg")
    os.mkfifo(tmp_path / "c.png")
    with caplog.at_level(logging.WARNING, logger="samam.data"):
        assert [p.name for p in list_images(tmp_path, "style")] == ["a.png"]
    assert "leaving out 2 entries" in caplog.text and "1 × broken symlink (e.g. " in caplog.text
    assert f"b.jpg → {tmp_path / 'gone' / 'b.jpg'}" in caplog.text and "1 × not a regular file" in caplog.text
    (tmp_path / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="holds no images .* found: 1 × broken symlink .*b.jpg"):
        list_images(tmp_path, "style")


def test_counting_broken_symlinks_compares_no_paths(tmp_path, monkeypatch):
    """Each name that was no broken link was looked for in the list of broken ones: a folder of
    many unmounted links and one fifo compared paths n²/2 times (here 20,000 for 200 links)."""
    from pathlib import PurePath

    from samam.data import _no_file_summary

    links = [tmp_path / f"{i:03d}.jpg" for i in range(200)]
    for p in links:
        p.symlink_to(tmp_path / "gone" / p.name)
    os.mkfifo(tmp_path / "z.png")
    compared = Counter()
    equal = PurePath.__eq__

    def counted(self, other):
        compared["=="] += 1
        return equal(self, other)

    monkeypatch.setattr(PurePath, "__eq__", counted)
    summary = _no_file_summary([*links, tmp_path / "z.png"])
    assert summary.startswith("200 × broken symlink (e.g. ") and summary.endswith(
        f"1 × not a regular file (e.g. {tmp_path / 'z.png'})"
    )
    assert compared["=="] <= len(links), compared


def test_resize_below_crop_is_a_config_error_not_bad_images(tmp_path):
    with pytest.raises(ValueError, match="data.resize=32 must be ≥ data.crop=64"):
        StyleTransferDataModule(str(tmp_path), str(tmp_path), crop=64, resize=32)
    with pytest.raises(ValueError, match="verify='fulll': choose one of full, header, none"):
        StyleTransferDataModule(str(tmp_path), str(tmp_path), verify="fulll")


def test_val_size_null_is_a_config_error_not_a_failure_at_the_first_validation(tmp_path):
    """As resize=null: it failed with a TypeError at the first validation, val_check_interval steps
    into the run and before their checkpoint."""
    with pytest.raises(ValueError, match="data.val_size=null: the validation pairs are batched at one size"):
        StyleTransferDataModule(str(tmp_path), str(tmp_path), val_size=None)
    # with no validation pairs the size is never used: nothing to refuse
    assert StyleTransferDataModule(str(tmp_path), str(tmp_path), val_pairs=0, val_size=None).val_size is None


def test_validation_pairs_are_distinct_while_distinct_ones_exist(tmp_path):
    for folder, n in (("content", 2), ("style", 3)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(tmp_path / folder / f"{i}.png")
    for asked, got in ((4, 4), (6, 6), (9, 6)):
        dm = StyleTransferDataModule(
            str(tmp_path / "content"), str(tmp_path / "style"), crop=16, resize=None, val_pairs=asked
        )
        dm.setup("fit")
        assert len(dm.fixed_pairs) == got and len(set(dm.fixed_pairs)) == got, asked


def test_demo_data_never_deletes_a_folder_that_is_not_a_demo_set(tmp_path, monkeypatch):
    from samam import demo_data

    monkeypatch.setattr(demo_data, "generate", lambda root: (root / "x.png").write_bytes(b"png"))
    mine = tmp_path / "my_images"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="is not a generated demo set"):
        demo_data.ensure_demo_data(mine)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    old = tmp_path / "demo"  # an older version of the demo set is replaced
    old.mkdir()
    (old / ".complete-v0").touch()
    assert demo_data.ensure_demo_data(old) == old
    assert sorted(p.name for p in old.iterdir()) == [f".complete-v{demo_data.VERSION}", "x.png"]
    assert oct(old.stat().st_mode & 0o777) == "0o755"
    assert not list(tmp_path.glob(".demo-*"))  # no temporary folders left behind


def test_training_crops_follow_the_release_transform(tmp_path):
    """The release trains on transforms.Compose([Resize((512, 512)), RandomCrop(256), ToTensor()])
    over Image.open(f).convert('RGB'): each crop must be a window of exactly that resized image."""
    from torchvision import transforms

    path = _save(tmp_path / "s.png", _rgb(300, 200, seed=5))
    resized = transforms.ToTensor()(transforms.Resize((96, 96))(Image.open(path).convert("RGB")))
    pairs = RandomPairs([path], [path], crop=32, resize=96, seed=0)
    batch = next(iter(pairs))
    windows = resized.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 65, 65, 32, 32)
    err = (windows - batch["content"][:, None, None]).abs().amax(dim=(0, 3, 4))
    assert err.min().item() == 0.0


def test_resize_null_crops_an_extreme_aspect_image_without_scaling_it_up_whole(tmp_path, monkeypatch):
    """With data.resize=null a 1×4,000 px image was scaled up whole to 64×256,000 px for one 64-px
    crop (256×1,024,000 px, 0.8 GB, at the paper's crop): now only the window is resampled, with
    the pixels of a window of the whole image scaled up (to within PIL's 8-bit rounding)."""
    tall = _save(tmp_path / "tall.png", _rgb(1, 4000, seed=1))
    wide = _save(tmp_path / "wide.png", _rgb(300, 2))
    sizes, resize = [], Image.Image.resize

    def spy(im, size, *args, **kwargs):
        sizes.append(tuple(size))
        return resize(im, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    stream = iter(RandomPairs([tall], [wide], crop=64, resize=None, seed=0))
    sample = next(stream)
    assert sample["content"].shape == sample["style"].shape == (3, 64, 64)
    assert max(w * h for w, h in sizes) <= 64 * 64
    whole = torch.from_numpy(np.asarray(resize(Image.open(wide), (9600, 64), Image.BILINEAR)) / 255.0)
    windows = whole.permute(2, 0, 1).float().unfold(2, 64, 1)  # (3, 64, 9537, 64)
    err = (windows - sample["style"][:, :, None]).abs().amax(dim=(0, 1, 3))
    assert err.min().item() <= 1 / 255 + 1e-6


def test_images_over_pils_bomb_limit_are_used(tmp_path):
    """13500² = 182 MP: PIL's default limit (179 MP) refuses it; the release and we do not."""
    from samam.data import check_image

    big = tmp_path / "big.png"
    Image.new("1", (13500, 13500)).save(big)  # 22 kB on disk
    assert check_image(big, "header") is None


def test_an_image_just_over_max_megapixels_is_refused_with_its_size_unrounded(tmp_path):
    """The size was rounded to whole MP: 10,020² px (100.4 MP) read "(100 MP) to decode, over
    data.max_megapixels=100", and a 400² one under a limit of 0.1 "(0 MP)"."""
    from samam.data import check_image

    for side, limit, size in ((10020, 100, "100.4"), (400, 0.1, "0.16")):
        path = tmp_path / f"{side}.png"
        Image.new("1", (side, side)).save(path)
        reason = check_image(path, "header", max_megapixels=limit)
        assert f"{side}×{side} px ({size} MP) to decode, over data.max_megapixels={limit:g}" in str(reason)


def test_an_image_too_large_for_a_worker_is_skipped_from_its_header(tmp_path, caplog):
    """A 13,500² RGB PNG (182 MP) was decoded whole in a training worker, which grew by 1.45 GB:
    a few in a batch had it killed for memory, where README promises bad images are skipped and
    counted. By default (data.max_megapixels=100) the header check skips it, naming its size."""
    big = tmp_path / "content" / "big.png"
    _save(big, Image.new("1", (13500, 13500)))  # 22 kB on disk
    _save(tmp_path / "content" / "ok.png", _rgb())
    _save(tmp_path / "style" / "s.png", _rgb())
    dm = StyleTransferDataModule(str(tmp_path / "content"), str(tmp_path / "style"), crop=16, resize=24)
    with caplog.at_level(logging.WARNING, logger="samam.data"):
        dm.setup("fit")
    assert [p.name for p in dm.content_files] == ["ok.png"] and dm.skipped == 1
    assert (
        "big.png (ValueError: 13500×13500 px (182.25 MP) to decode, over data.max_megapixels=100"
        in caplog.text
    )


@pytest.mark.parametrize("verify", ["header", "full", "none"])
def test_the_pixel_limit_counts_what_a_jpeg_draft_decodes(tmp_path, verify):
    """A JPEG decoded reduced (PIL's draft) is held at its reduced size: only what is decoded counts,
    at set-up (verify=header/full) or, with verify=none, when drawn (skipped and counted, as any bad
    image). 1200×900 = 1.08 MP decodes at 300×225 for resize=64, whole for resize=null."""
    path = _save(tmp_path / "c" / "big.jpg", _rgb(48, 36, seed=3).resize((1200, 900), Image.BILINEAR))
    small = _save(tmp_path / "c" / "small.png", _rgb())
    style = _save(tmp_path / "s" / "s.png", _rgb())
    for resize, kept in ((64, True), (None, False)):
        dm = StyleTransferDataModule(
            str(tmp_path / "c"),
            str(tmp_path / "s"),
            crop=16,
            resize=resize,
            verify=verify,
            max_megapixels=0.1,
        )
        dm.setup("fit")
        assert (path in dm.content_files) == (kept or verify == "none"), resize
        stream = iter(RandomPairs([path, small], [style], crop=16, resize=resize, seed=0, max_megapixels=0.1))
        drawn = [next(stream) for _ in range(12)]
        assert int(drawn[-1]["skipped"]) == (0 if kept else 1), resize
    with pytest.raises(ValueError, match="data.max_megapixels=0: give a positive limit, or null for none"):
        StyleTransferDataModule(str(tmp_path / "c"), str(tmp_path / "s"), max_megapixels=0)


def test_a_jpeg_far_larger_than_its_resize_is_decoded_reduced(tmp_path, monkeypatch):
    """A 12000×9000 WikiArt painting was decoded whole for each 512² resize (3.6 s and 0.8 GB a
    draw): a JPEG ≥ 6× the resize is decoded at 1/2-1/8 scale, ≥ 3× the resize, and its crops are
    windows of the whole image's resize to within 2/255."""
    from torchvision import transforms

    path = _save(tmp_path / "big.jpg", _rgb(48, 36, seed=3).resize((1200, 900), Image.BILINEAR))
    sizes, resize = [], Image.Image.resize

    def spy(im, size, *args, **kwargs):
        sizes.append(im.size)
        return resize(im, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    crop = next(iter(RandomPairs([path], [path], crop=32, resize=64, seed=0)))["content"]
    assert sizes == [(300, 225)] * 2  # 1/4 scale: 225 ≥ 3 × 64; the whole image at 1/8 would be below
    monkeypatch.setattr(Image.Image, "resize", resize)
    whole = transforms.ToTensor()(transforms.Resize((64, 64))(Image.open(path).convert("RGB")))
    windows = whole.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 33, 33, 32, 32)
    assert (windows - crop[:, None, None]).abs().amax(dim=(0, 3, 4)).min().item() <= 2 / 255 + 1e-6


def test_validation_pairs_are_torchvisions_resize(tmp_path):
    from torchvision import transforms

    from samam.data import FixedPairs

    c, s = _save(tmp_path / "c.png", _rgb(300, 200, seed=6)), _save(tmp_path / "s.png", _rgb(90, 140, seed=7))
    pair = FixedPairs([(c, s)], size=96)[0]
    for key, path in (("content", c), ("style", s)):
        expected = transforms.ToTensor()(transforms.Resize((96, 96))(Image.open(path).convert("RGB")))
        assert torch.equal(pair[key], expected), key


def test_listing_walks_a_folder_reached_twice_once_and_sorts(tmp_path):
    from samam.data import list_images

    root = tmp_path / "root"
    for name in ("z.png", "a.png", "m.png", "A/x.png"):
        _save(root / name, _rgb(8, 8))
    (root / "B").mkdir()
    (root / "B" / "toA").symlink_to(root / "A", target_is_directory=True)  # reached after A itself
    files = list_images(root, "style")
    assert [p.relative_to(root).as_posix() for p in files] == ["A/x.png", "a.png", "m.png", "z.png"]
    # two links side by side to one folder outside: walked once (it was listed twice)
    _save(tmp_path / "outside" / "o.png", _rgb(8, 8))
    for link in ("l1", "l2"):
        (root / link).symlink_to(tmp_path / "outside", target_is_directory=True)
    files = list_images(root, "style")
    assert [p.relative_to(root).as_posix() for p in files] == [
        "A/x.png",
        "a.png",
        "l1/o.png",
        "m.png",
        "z.png",
    ]


def test_a_folder_reached_twice_is_listed_under_one_name_whatever_the_directory_order(tmp_path, monkeypatch):
    """os.walk gives a folder's entries in the file system's order (ext4: by hash; tmpfs: newest
    first): which of two links to one folder was listed, hence the image list and the digest a
    resume compares, changed with the file system holding a copy of the folder."""
    import samam.data

    _save(tmp_path / "outside" / "o.png", _rgb(8, 8))
    root = tmp_path / "root"
    for link in ("l1", "l2"):
        (root / link).parent.mkdir(exist_ok=True)
        (root / link).symlink_to(tmp_path / "outside", target_is_directory=True)
    walk, listed = os.walk, []
    for order in (sorted, lambda names: sorted(names, reverse=True)):

        def walk_in(top, *args, order=order, **kwargs):
            for here, dirs, names in walk(top, *args, **kwargs):
                dirs[:] = order(dirs)  # the list os.walk goes on to walk
                yield here, dirs, names

        monkeypatch.setattr(samam.data.os, "walk", walk_in)
        listed.append([p.relative_to(root).as_posix() for p in list_images(root, "style")])
    assert listed == [["l1/o.png"]] * 2


def test_a_bad_file_shared_by_content_and_style_is_counted_once(tmp_path):
    from samam.data import StyleTransferDataModule

    for i in range(2):
        _save(tmp_path / f"{i}.png", _rgb(8, 8))
    (tmp_path / "bad.png").write_text("not an image")
    dm = StyleTransferDataModule(
        str(tmp_path), str(tmp_path), batch_size=2, crop=8, resize=16, num_workers=0, verify="header"
    )
    dm.setup("fit")
    assert dm.skipped == 1


def test_demo_data_refuses_a_user_folder_with_hidden_files(tmp_path, monkeypatch):
    from samam import demo_data

    monkeypatch.setattr(demo_data, "generate", lambda root: (root / "x.png").write_bytes(b"png"))
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / ".DS_Store").write_bytes(b"mac")
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        demo_data.ensure_demo_data(mine)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"


def test_a_stream_whose_images_all_fail_names_their_folder(tmp_path):
    """Every style image decoding badly only once drawn ('header' checks passed them) stopped
    training with a message that named no folder."""
    content = [_save(tmp_path / "c" / "0.png", _rgb(seed=0))]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "bad.png").write_text("not an image")
    pairs = RandomPairs(content, [tmp_path / "s" / "bad.png"], crop=8, resize=16, seed=0)
    with pytest.raises(RuntimeError, match=rf"every style image \(1 under {re.escape(str(tmp_path / 's'))}"):
        next(iter(pairs))


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("num_workers", -1), ("val_pairs", -1)])
def test_a_count_out_of_range_is_refused_as_the_data_module_is_built(tmp_path, key, value):
    """DataLoader refused batch_size=0 and num_workers=-1 only as fit started, after the networks
    were built; val_pairs=-1 trained with no validation at all, silently."""
    with pytest.raises(ValueError, match=rf"data.{key}={value}: give an integer ≥"):
        StyleTransferDataModule(str(tmp_path), str(tmp_path), **{key: value})
