"""stylize: sizes kept, style strength α, style mixing, bad inputs, no overwrite, grid, CLI errors."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samam.evaluation import read_image, stylize
from samam.metrics import to_uint8

ROOT = Path(__file__).resolve().parents[2]


def run(tiny_ckpt, content, style, out, **kw):
    kw = {"device": "cpu", "backend": "torch", "progress": False, "style_side": None, **kw}
    return stylize(tiny_ckpt, content, style, out, **kw)


def pixels(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).int()


@pytest.fixture()
def pair(tmp_path, make_image) -> tuple[Path, Path]:
    content = make_image(tmp_path / "odd.png", 457, 301, seed=7)  # W × H, both odd
    style = make_image(tmp_path / "art.png", 64, 80, seed=8)
    return content, style


def test_odd_size_kept_and_alpha_one_equals_net(tiny_ckpt, tiny_net, pair, tmp_path):
    content, style = pair
    summary = run(tiny_ckpt, content, style, tmp_path / "out")
    out = tmp_path / "out" / "odd_stylized_art.png"
    assert summary["written"] == [str(out)]
    assert Image.open(out).size == (457, 301)
    c, s = read_image(content)[None], read_image(style)[None]
    with torch.no_grad():
        ref = to_uint8(tiny_net(c, s))[0].int()
    assert (pixels(out) - ref).abs().max() <= 1  # same pixels up to rounding of float noise


def test_match_release_reads_plainly_and_drops_partial_patches(tiny_ckpt, tiny_net, tmp_path):
    """The release reads with convert('RGB') (no EXIF rotation, alpha dropped) and its strided
    patch embedding drops partial patches; match_release=true must give exactly that output."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (301, 457, 4), dtype=np.uint8)
    rgba[:150, :, 3] = 0  # transparent half: white in our careful decode, raw colour in convert
    content = tmp_path / "see_through.png"
    Image.fromarray(rgba, "RGBA").save(content)
    style = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° to display
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(style, exif=exif)

    run(tiny_ckpt, content, style, tmp_path / "ours")
    run(tiny_ckpt, content, style, tmp_path / "rel", match_release=True)
    p = tiny_net.cfg.patch_size
    h, w = 301 // p * p, 457 // p * p
    out = tmp_path / "rel" / "see_through_stylized_turned.png"
    assert Image.open(out).size == (w, h)
    assert Image.open(tmp_path / "ours" / out.name).size == (457, 301)
    c = torch.from_numpy(rgba[:h, :w, :3].copy()).permute(2, 0, 1)[None].float() / 255
    s = read_image(style, plain=True)[None]
    assert s.shape[-2:] == (72, 96)  # not turned
    with torch.no_grad():
        ref = to_uint8(tiny_net(c, s))[0].int()
    assert (pixels(out) - ref).abs().max() <= 1


def test_alpha_zero_reconstructs_content_embedding(tiny_ckpt, tiny_net, pair, tmp_path):
    content, style = pair
    run(tiny_ckpt, content, style, tmp_path / "out", alpha=0.0)
    out = tmp_path / "out" / "odd_stylized_art_alpha0.png"
    c = read_image(content)[None]
    with torch.no_grad():
        ref = to_uint8(tiny_net(c, c))[0].int()  # the reconstruction net(c, c)
    assert (pixels(out) - ref).abs().max() <= 1
    run(tiny_ckpt, content, style, tmp_path / "out", alpha=0.25)
    with torch.no_grad():
        e = 0.75 * tiny_net.embed_style(c) + 0.25 * tiny_net.embed_style(read_image(style)[None])
        ref = to_uint8(tiny_net(c, style_embedding=e))[0].int()
    assert (pixels(tmp_path / "out" / "odd_stylized_art_alpha0.25.png") - ref).abs().max() <= 1
    with pytest.raises(ValueError, match="alpha"):
        run(tiny_ckpt, content, style, tmp_path / "out", alpha=1.5)


def test_style_mixing_weights(tiny_ckpt, image_dirs, tmp_path):
    content, style = image_dirs
    styles = sorted(style.iterdir())
    run(tiny_ckpt, content / "c0.png", styles[0], tmp_path / "single")
    summary = run(tiny_ckpt, content / "c0.png", styles, tmp_path / "mix", style_weights=[2.0, 0.0, 0.0])
    mixed = tmp_path / "mix" / "c0_stylized_s0@1+s1@0+s2@0.png"
    assert summary["written"] == [str(mixed)]
    assert torch.equal(
        pixels(mixed), pixels(tmp_path / "single" / "c0_stylized_s0.png")
    )  # normalised weights
    with pytest.raises(ValueError, match="style_weights"):
        run(tiny_ckpt, content / "c0.png", styles, tmp_path / "bad", style_weights=[1.0, 1.0])
    # another mix of the same styles is another file, not "exists, kept"
    other = run(tiny_ckpt, content / "c0.png", styles, tmp_path / "mix", style_weights=[1.0, 1.0, 2.0])
    assert other["written"] == [str(tmp_path / "mix" / "c0_stylized_s0@0.25+s1@0.25+s2@0.5.png")]
    mixes = json.loads((tmp_path / "mix" / "mixes.json").read_text())
    assert mixes["s0@0.25+s1@0.25+s2@0.5"]["weights"] == [0.25, 0.25, 0.5]


@pytest.fixture()
def seen_embeddings(tiny_net, monkeypatch):
    """The style embeddings stylize hands the network, one (B, S, 3, 3) tensor per call. At random
    init the tiny net's pixels barely depend on the style, so its inputs are checked, not pixels."""
    from samam import evaluation

    seen: list[torch.Tensor] = []
    hook = tiny_net.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["style_embedding"].clone()), with_kwargs=True
    )
    monkeypatch.setattr(evaluation, "load_network", lambda *a, **k: tiny_net)
    yield seen
    hook.remove()


@torch.no_grad()
def test_alpha_and_mixes_reach_the_network_as_the_promised_embeddings(
    tiny_ckpt, tiny_net, pair, image_dirs, seen_embeddings, tmp_path
):
    from PIL import Image as PILImage

    content, style = pair
    embed = tiny_net.embed_style
    run(tiny_ckpt, content, style, tmp_path / "a", alpha=0.25)  # styles and content at their size
    e_c, e_s = embed(read_image(content)[None]), embed(read_image(style)[None])
    torch.testing.assert_close(seen_embeddings[-1], 0.75 * e_c + 0.25 * e_s, rtol=0, atol=1e-6)

    run(tiny_ckpt, content, style, tmp_path / "b", alpha=0.5, style_side=64)  # both at shorter side 64

    def at_64(path):
        return read_image(path, short_side=64, resample=PILImage.BILINEAR)[None]

    assert at_64(content).shape[-2:] != read_image(content).shape[-2:]
    expected = 0.5 * embed(at_64(content)) + 0.5 * embed(at_64(style))
    torch.testing.assert_close(seen_embeddings[-1], expected, rtol=0, atol=1e-6)

    c_dir, s_dir = image_dirs
    styles = sorted(s_dir.iterdir())
    run(tiny_ckpt, c_dir / "c0.png", styles, tmp_path / "mix", style_weights=[1.0, 1.0, 2.0])
    e = torch.cat([embed(read_image(p)[None]) for p in styles])
    torch.testing.assert_close(seen_embeddings[-1][0], (e[0] + e[1] + 2 * e[2]) / 4, rtol=0, atol=1e-6)


def test_output_names_never_collide():
    from samam.evaluation import mix_name, output_name

    c = Path("c.png")
    alphas = (0.0, 0.001, 0.5, 0.999, 0.9999, 0.9999999, 0.1234561, 0.1234564, 1.0)
    names = {output_name(c, "s", a) for a in alphas}
    assert len(names) == len(alphas)  # six significant digits merged the last three pairs
    assert [output_name(c, "s", a) for a in (0.0, 0.5, 1)] == [
        "c_stylized_s_alpha0.png",
        "c_stylized_s_alpha0.5.png",
        "c_stylized_s.png",
    ]
    stems = [f"vincent_van_gogh_the_starry_night_{i:02d}" for i in range(10)]
    long_a, long_b = mix_name(stems, [1.0] * 10), mix_name(stems, [2.0] + [1.0] * 9)
    assert long_a.startswith("mix10-") and len(long_a) == 16 and long_a != long_b
    assert mix_name(["a", "b"], [0.7, 0.3]) == "a@0.7+b@0.3"
    assert mix_name(["a", "b", "c"], [1, 1, 1]) == "a@0.333333+b@0.333333+c@0.333333"
    # text already taken by other (exact) weights: the hash
    taken = {"a@0.7+b@0.3": {"weights": [0.7000001, 0.2999999]}}
    assert mix_name(["a", "b"], [0.7, 0.3], taken).startswith("mix2-")


def test_stems_that_differ_in_case_only_are_refused(tiny_ckpt, make_image, pair, tmp_path):
    """Cat.png and cat.jpg write one file on macOS's (or a USB drive's) case-insensitive file
    system: the second output was kept as the first's, or overwrote it."""
    _, style = pair
    folder = tmp_path / "photos"
    folder.mkdir()
    make_image(folder / "Cat.png", 32, 32, seed=1)
    make_image(folder / "cat.jpg", 32, 32, seed=2)
    with pytest.raises(
        ValueError, match=r"share a file name stem \(ignoring case\).*Cat\.png and .*cat\.jpg"
    ):
        run(tiny_ckpt, folder, style, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.png"))


def test_shorter_side_resize_is_torchvision_resize():
    from torchvision.transforms import Resize

    from samam.evaluation import resize_image

    for w, h in ((103, 103), (640, 427), (427, 640), (999, 1001), (17, 1000), (333, 500)):
        im = Image.new("RGB", (w, h))
        assert resize_image(im, short_side=256).size == Resize(256)(im).size, (w, h)


def test_folders_corrupt_input_overwrite_and_grid(tiny_ckpt, image_dirs, folder_copy, tmp_path):
    content, style = image_dirs
    mixed = folder_copy(content, tmp_path / "content", {"broken.png": b"not an image at all"})
    out = tmp_path / "out"
    first = run(tiny_ckpt, mixed, style, out, batch_size=2, grid=True, grid_cell=32)
    assert len(first["written"]) == 6
    assert first["skipped_unreadable"] == [str(mixed / "broken.png")] and first["skipped_unusable"] == []
    assert Image.open(out / "grid.png").size == ((1 + 3) * 32, (1 + 2) * 32)
    assert Image.open(out / "c1_stylized_s2.png").size == (64, 48)

    before = (out / "c0_stylized_s0.png").stat().st_mtime_ns
    second = run(tiny_ckpt, mixed, style, out)
    assert second["written"] == [] and len(second["skipped_existing"]) == 6
    assert (out / "c0_stylized_s0.png").stat().st_mtime_ns == before
    third = run(tiny_ckpt, mixed, style, out, overwrite=True)
    assert len(third["written"]) == 6


def test_the_grid_holds_thumbnails_of_the_contents_not_the_images(
    tiny_ckpt, image_dirs, tmp_path, monkeypatch
):
    """Each content's row waits for the grid until the last content is done: kept whole, a folder
    of large photos was held in memory all at once."""
    import samam.evaluation

    content, style = image_dirs
    seen, make_grid = [], samam.evaluation.make_grid
    monkeypatch.setattr(samam.evaluation, "make_grid", lambda c, *rest: seen.extend(c) or make_grid(c, *rest))
    run(tiny_ckpt, content, style, tmp_path / "out", grid=True, grid_cell=16)
    assert [tuple(c.shape) for c in seen] == [(3, 16, 16)] * 2


def test_each_style_is_embedded_before_the_next_is_decoded(tiny_ckpt, image_dirs, tmp_path, monkeypatch):
    """Only embeddings outlive a style's turn: decoded all first, a folder of large scans kept at
    full size (style_side=null) was held in memory at once."""
    import samam.evaluation

    content, style = image_dirs
    decoded, at_embedding = [], []
    read_image, embed_styles = samam.evaluation.read_image, samam.evaluation.embed_styles
    monkeypatch.setattr(
        samam.evaluation, "read_image", lambda *a, **k: decoded.append(1) or read_image(*a, **k)
    )
    monkeypatch.setattr(
        samam.evaluation,
        "embed_styles",
        lambda *a, **k: at_embedding.append(len(decoded)) or embed_styles(*a, **k),
    )
    summary = run(tiny_ckpt, content / "c0.png", style, tmp_path / "out", grid=True, grid_cell=16)
    assert at_embedding == [1, 2, 3] and len(summary["written"]) == 3
    assert Image.open(tmp_path / "out" / "grid.png").size == (4 * 16, 2 * 16)


def test_content_below_the_network_minimum_is_skipped_not_fatal(tiny_ckpt, image_dirs, make_image, tmp_path):
    """Patch size 8 needs ≥ 16 px per side; with α < 1 the content is also embedded as a
    style (≥ 64 px here). Such images are skipped and counted; the others are written."""
    _, style = image_dirs
    folder = tmp_path / "content"
    folder.mkdir()
    make_image(folder / "big.png", 72, 64, seed=0)  # usable both ways
    make_image(folder / "thin.png", 40, 12, seed=1)  # W × H: 12 px < 2 patches
    make_image(folder / "small.png", 40, 24, seed=2)  # enough as content, too small as a style
    s0 = sorted(style.iterdir())[0]
    full = run(tiny_ckpt, folder, s0, tmp_path / "a1")
    assert full["skipped_unusable"] == [str(folder / "thin.png")] and full["skipped_unreadable"] == []
    assert len(full["written"]) == 2
    mixed = run(tiny_ckpt, folder, s0, tmp_path / "a05", alpha=0.5)
    assert mixed["skipped_unusable"] == [str(folder / "small.png"), str(folder / "thin.png")]
    assert mixed["written"] == [str(tmp_path / "a05" / "big_stylized_s0_alpha0.5.png")]


def test_max_side_shrinks_content(tiny_ckpt, pair, tmp_path):
    content, style = pair
    run(tiny_ckpt, content, style, tmp_path / "out", max_side=100)
    assert Image.open(tmp_path / "out" / "odd_stylized_art.png").size == (100, 66)


def test_a_rerun_with_another_checkpoint_or_size_does_not_keep_the_earlier_images_as_its_own(
    tiny_ckpt, pair, tmp_path
):
    """A rerun into the same folder with the next checkpoint kept every earlier image under its name
    ("exists, not overwritten"), wrote nothing and succeeded: the folder held the other one's outputs."""
    content, style = pair
    out, image = tmp_path / "out", tmp_path / "out" / "odd_stylized_art.png"
    run(tiny_ckpt, content, style, out, max_side=64)
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["state_dict"]["net.style_embedder.fc.bias"] += 1
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    made = image.read_bytes()
    for ckpt_path, kw, differ in (
        (other, {}, "weights_sha256: '"),
        (tiny_ckpt, {"max_side": 48}, "max_side: 64 → 48"),
    ):
        with pytest.raises(
            ValueError, match=f"holds 1 of this run's outputs .*other settings \\({differ}.*overwrite=true"
        ):
            run(ckpt_path, content, style, out, **{"max_side": 64, **kw})
    assert image.read_bytes() == made
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(tiny_ckpt.read_bytes())  # the same weights elsewhere: the outputs are this run's
    assert run(copy, content, style, out, max_side=64)["skipped_existing"] == [str(image)]
    assert run(other, content, style, out, max_side=64, overwrite=True)["written"] == [str(image)]
    assert image.read_bytes() != made
    assert run(other, content, style, out, max_side=64)["skipped_existing"] == [str(image)]  # recorded
    assert json.loads((out / "stylize.json").read_text())["ckpt_path"] == str(other)


def test_an_overwrite_with_other_weights_does_not_vouch_for_the_earlier_images_beside_its_own(
    tiny_ckpt, pair, tmp_path, make_image
):
    """stylize.json described only the folder's last run: after run A (checkpoint 1) on content a and
    an overwrite=true run B (checkpoint 2) on b, a run with checkpoint 2 on a and b kept a's image,
    made by checkpoint 1, as its own."""
    content, style = pair
    other_content = make_image(tmp_path / "b.png", 64, 48, seed=9)
    out, image = tmp_path / "out", tmp_path / "out" / "odd_stylized_art.png"
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["state_dict"]["net.style_embedder.fc.bias"] += 1
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    run(tiny_ckpt, content, style, out, max_side=64)
    run(other, other_content, style, out, max_side=64, overwrite=True)
    made = image.read_bytes()
    with pytest.raises(
        ValueError, match="holds 1 of this run's outputs \\(e.g. odd_stylized_art.png\\) that stylize.json"
    ):
        run(other, [content, other_content], style, out, max_side=64)
    assert image.read_bytes() == made
    summary = run(other, [content, other_content], style, out, max_side=64, overwrite=True)
    assert str(image) in summary["written"]
    assert run(other, content, style, out, max_side=64)["skipped_existing"] == [str(image)]


def test_stylize_json_records_the_weights_loaded_not_the_file_read_later(
    tiny_ckpt, pair, tmp_path, monkeypatch
):
    """The file was hashed after the styles were embedded: a last.ckpt replaced by the training run in
    between was recorded as the maker of images its predecessor made (and a rerun kept them as the new
    one's), and a file with the same weights but other bytes (the step checkpoint saved beside
    last.ckpt, a re-saved copy) was refused as another checkpoint."""
    import samam.evaluation as evaluation

    content, style = pair
    out, image = tmp_path / "out", tmp_path / "out" / "odd_stylized_art.png"
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    resaved = tmp_path / "step0000002.ckpt"  # same weights, another step counter: other bytes
    torch.save({**ckpt, "global_step": ckpt.get("global_step", 0) + 1}, resaved)
    assert resaved.read_bytes() != tiny_ckpt.read_bytes()
    run(tiny_ckpt, content, style, out)
    assert run(resaved, content, style, out)["skipped_existing"] == [str(image)]

    last = tmp_path / "last.ckpt"
    last.write_bytes(tiny_ckpt.read_bytes())
    ckpt["state_dict"]["net.style_embedder.fc.bias"] += 1
    load = evaluation.load_network

    def load_then_replaced(*args, **kwargs):  # the training run saves its next last.ckpt meanwhile
        net = load(*args, **kwargs)
        torch.save(ckpt, last)
        return net

    monkeypatch.setattr(evaluation, "load_network", load_then_replaced)
    run(last, content, style, out, overwrite=True)
    monkeypatch.setattr(evaluation, "load_network", load)
    with pytest.raises(ValueError, match="made with other settings \\(weights_sha256"):
        run(last, content, style, out)  # the images are the earlier weights'


def test_bf16_precision_runs(tiny_ckpt, pair, tmp_path):
    content, style = pair
    run(tiny_ckpt, content, style, tmp_path / "out", precision="bf16")
    assert Image.open(tmp_path / "out" / "odd_stylized_art.png").size == (457, 301)
    with pytest.raises(ValueError, match="precision"):
        run(tiny_ckpt, content, style, tmp_path / "out", precision="fp16")


def test_cuda_graph_on_cpu_fails_before_writing(tiny_ckpt, pair, tmp_path):
    content, style = pair
    with pytest.raises(ValueError, match="CUDA device"):
        run(tiny_ckpt, content, style, tmp_path / "out", cuda_graph=True)
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_clear_message(pair, tmp_path):
    content, style = pair
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run(tmp_path / "nope.ckpt", content, style, tmp_path / "out")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # a run folder exists: "not found" misleads
    with pytest.raises(IsADirectoryError, match="'.*run' is a folder; give a checkpoint file"):
        run(tmp_path / "run", content, style, tmp_path / "out")


def test_every_missing_input_is_named_at_once(pair, tmp_path):
    """A missing ckpt_path was reported alone: a mistyped content or style showed only on the next
    try, once the network had loaded."""
    content, style = pair
    with pytest.raises(FileNotFoundError) as err:
        run(tmp_path / "nope.ckpt", tmp_path / "photoz", [style, tmp_path / "artz.png"], tmp_path / "out")
    lines = str(err.value).splitlines()
    assert lines[0] == "missing inputs:" and len(lines) == 4
    for line, named in zip(
        lines[1:],
        (
            "checkpoint not found: '.*nope.ckpt'",
            "content: '.*photoz' does not",
            "style: '.*artz.png' does not",
        ),
    ):
        assert re.search(named, line), (named, line)


def test_a_folder_as_checkpoint_is_named_with_the_other_missing_inputs(pair, tmp_path):
    """A folder given as ckpt_path passed the early check and was named only by the network's
    load: a mistyped content folder beside it was the whole error, the folder the next try's."""
    _, style = pair
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        run(tmp_path / "run", tmp_path / "photoz", style, tmp_path / "out")
    lines = str(err.value).splitlines()
    assert lines[0] == "missing inputs:" and len(lines) == 3
    assert re.search("ckpt_path '.*run' is a folder; give a checkpoint file", lines[1])
    assert re.search("content: '.*photoz' does not exist", lines[2])


def test_a_switch_given_as_a_string_is_refused_before_any_work(pair, tmp_path):
    """`match_release=yes` arrives as the string 'yes': truthy, it read images as the release does."""
    content, style = pair
    with pytest.raises(TypeError, match="match_release='yes' must be true or false"):
        run(tmp_path / "never-read.ckpt", content, style, tmp_path / "out", match_release="yes")
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(pair, tmp_path):
    """It failed with a bare FileExistsError once the network was loaded."""
    content, style = pair
    with pytest.raises(NotADirectoryError, match=r"output_dir '.*odd\.png' is a file; give a folder"):
        run(tmp_path / "never-read.ckpt", content, style, content)
    with pytest.raises(
        NotADirectoryError, match=r"output_dir '.*odd\.png/out' lies below the file '.*odd\.png'"
    ):
        run(tmp_path / "never-read.ckpt", content, style, content / "out")


@pytest.mark.parametrize("tool", ["stylize", "evaluate"])
def test_an_output_dir_that_cannot_be_written_is_refused_before_any_work(
    pair, tmp_path, refuse_files_in, tool
):
    """Not writable (permissions; a read-only mount, simulated: root writes anywhere): eval.py failed
    at its first image, once every input had been decoded and checked."""
    from samam.evaluation import evaluate

    content, style = pair
    locked = tmp_path / "locked"
    locked.mkdir()
    refuse_files_in(locked, errno.EACCES)
    call = stylize if tool == "stylize" else lambda ckpt, c, s, out: evaluate(ckpt, c, s, out)
    with pytest.raises(
        PermissionError, match=f"output_dir '.*out': no permission to create files in {locked}; give"
    ):
        call(tmp_path / "never-read.ckpt", content, style, locked / "new" / "out")
    assert not (locked / "new").exists()


@pytest.mark.parametrize(
    "kw, msg",
    [({"batch_size": 0}, "batch_size must be ≥ 1"), ({"grid_cell": 0}, "grid_cell must be ≥ 1"),
     ({"max_side": -5}, "max_side must be ≥ 1"), ({"style_side": 0}, "style_side must be ≥ 1")],
)  # fmt: skip
def test_bad_numbers_are_refused_before_any_work(pair, tmp_path, kw, msg):
    content, style = pair
    with pytest.raises(ValueError, match=msg):
        run(tmp_path / "never-read.ckpt", content, style, tmp_path / "out", **kw)


def test_sizes_below_the_networks_minimum_are_refused(tiny_ckpt, pair, tmp_path):
    content, style = pair
    with pytest.raises(ValueError, match="style_side=32 is below this network's 64-px minimum"):
        run(tiny_ckpt, content, style, tmp_path / "out", style_side=32)
    with pytest.raises(ValueError, match="max_side=8 is below this network's 16-px minimum"):
        run(tiny_ckpt, content, style, tmp_path / "out", max_side=8)


def test_cli_fails_when_nothing_could_be_written(tiny_ckpt, pair, make_image, tmp_path):
    _, style = pair
    tiny = make_image(tmp_path / "tiny.png", 10, 10, seed=3)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stylize.py"), f"ckpt_path={tiny_ckpt}", f"content={tiny}", f"style={style}",
         f"output_dir={tmp_path / 'out'}", "device=cpu", "backend=torch", "progress=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "nothing written" in proc.stderr


def test_cli_rerun_with_every_output_present_succeeds(tiny_ckpt, pair, tmp_path):
    """A resumed batch job whose outputs all exist has nothing to do: that is success, not exit 1."""
    from hydra import compose, initialize_config_dir
    from test_eval_cli import entry_point

    content, style = pair
    overrides = [f"ckpt_path={tiny_ckpt}", f"content={content}", f"style={style}", f"output_dir={tmp_path / 'out'}",
                 "device=cpu", "backend=torch", "progress=false", "style_side=null"]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("stylize", overrides=overrides)
    main = entry_point("stylize")
    assert len(main(cfg)["written"]) == 1
    again = main(cfg)
    assert again["written"] == [] and len(again["skipped_existing"]) == 1


def test_cli_refuses_missing_checkpoint(pair, tmp_path):
    content, style = pair
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stylize.py"), f"ckpt_path={tmp_path / 'nope.ckpt'}", f"content={content}",
         f"style={style}", f"output_dir={tmp_path / 'out'}", "device=cpu"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "checkpoint not found" in proc.stderr and "nope.ckpt" in proc.stderr


@pytest.mark.parametrize(("tool", "setting"), [("stylize", "alpha: 1.0"), ("eval", "content_size: 512")])
def test_cli_help_lists_the_tools_settings_not_the_training_groups(tool, setting, tmp_path):
    """--help listed every config group under conf/ (trainer, callbacks, logger, ...): train.py's, unused here."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / f"{tool}.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ckpt_path: ???" in proc.stdout and setting in proc.stdout
    assert not re.search(r"^(trainer|callbacks|logger|model|data|experiment):", proc.stdout, re.M), (
        proc.stdout
    )


def test_rerun_into_a_folder_inside_the_content_folder_stylises_only_the_contents(
    tiny_ckpt, image_dirs, tmp_path
):
    """output_dir inside the content folder: a rerun must not take the last run's outputs as
    content (c0_stylized_s0_stylized_s0.png); output_dir = the content folder is refused."""
    import shutil

    content, style = image_dirs
    photos = tmp_path / "photos"
    shutil.copytree(content, photos)
    out = photos / "stylized"
    first = run(tiny_ckpt, photos, style / "s0.png", out)
    second = run(tiny_ckpt, photos, style / "s0.png", out)
    assert len(first["written"]) == 2 and second["written"] == []
    assert sorted(p.name for p in out.iterdir()) == [
        "c0_stylized_s0.png",
        "c1_stylized_s0.png",
        "stylize.json",
    ]
    with pytest.raises(ValueError, match="is the content folder"):
        run(tiny_ckpt, photos, style / "s0.png", photos)


def test_earlier_runs_folders_inside_the_content_folder_are_not_content(tiny_ckpt, image_dirs, tmp_path):
    """Run inside the photo folder with content=. and the default output_dir
    (outputs/stylize/<time>): each run writes a new folder, and Hydra puts .hydra/ in it."""
    import shutil

    from samam.data import list_images

    content, style = image_dirs
    photos = tmp_path / "photos"
    shutil.copytree(content, photos)
    runs = [photos / "outputs" / "stylize" / t for t in ("t1", "t2")]
    for out in runs:
        (out / ".hydra").mkdir(parents=True)
        summary = run(tiny_ckpt, photos, style / "s0.png", out)
        assert sorted(Path(p).name for p in summary["written"]) == [
            "c0_stylized_s0.png",
            "c1_stylized_s0.png",
        ]
    assert len(list_images(runs[0], "content")) == 2  # a run folder given itself is read


def test_rerun_into_an_output_folder_reached_through_a_symlink_in_the_content_folder(
    tiny_ckpt, image_dirs, tmp_path
):
    """photos/out is a symlink to a folder elsewhere: its files are the outputs all the same."""
    import shutil

    content, style = image_dirs
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    shutil.copytree(content, photos)
    elsewhere.mkdir()
    (photos / "out").symlink_to(elsewhere, target_is_directory=True)
    first = run(tiny_ckpt, photos, style / "s0.png", photos / "out")
    second = run(tiny_ckpt, photos, style / "s0.png", photos / "out")
    assert len(first["written"]) == 2 and second["written"] == []
    assert sorted(p.name for p in elsewhere.iterdir()) == [
        "c0_stylized_s0.png",
        "c1_stylized_s0.png",
        "stylize.json",
    ]
    # the other way round, a content folder inside the output folder (output_dir=.): all of it is content
    inside = tmp_path / "work" / "photos"
    shutil.copytree(content, inside)
    assert len(run(tiny_ckpt, inside, style / "s0.png", tmp_path / "work")["written"]) == 2


def test_long_names_a_short_temp_file_and_a_refusal_before_any_work(
    tiny_ckpt, tiny_net, tmp_path, make_image
):
    """A legal 252-byte output name is written (its temp file must not be longer); names past
    the file system's limit are refused before any output is written."""
    from samam.evaluation import save_png

    name = "x" * 248 + ".png"
    old = os.umask(0o027)
    try:
        save_png(torch.zeros(3, 4, 4), tmp_path / name)
    finally:
        os.umask(old)
    assert (tmp_path / name).is_file() and [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o640  # the umask, as open() would give
    content = make_image(tmp_path / ("c" * 119 + ".png"), 40, 40, seed=1)
    ok_style = make_image(tmp_path / "s.png", 64, 64, seed=2)
    long_style = make_image(tmp_path / ("s" * 130 + ".png"), 64, 64, seed=3)
    with pytest.raises(ValueError, match=r"exceed this file system's \d+-byte limit"):
        run(tiny_ckpt, content, [ok_style, long_style], tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_style_weights_must_be_finite():
    from samam.evaluation import mix_embeddings

    with pytest.raises(ValueError, match="finite"):
        mix_embeddings(torch.ones(2, 4, 3, 3), [float("inf"), 1.0])
    with pytest.raises(ValueError, match="finite"):
        mix_embeddings(torch.ones(2, 4, 3, 3), [float("nan"), 1.0])


def test_a_batch_of_styles_lands_each_in_its_own_file(tiny_ckpt, tiny_net, image_dirs, tmp_path):
    """batch_size=2 over 3 styles: each file holds the network's output for its own style."""
    content, style = image_dirs
    run(tiny_ckpt, content / "c1.png", style, tmp_path / "out", batch_size=2)
    c = read_image(content / "c1.png")[None]
    with torch.no_grad():
        for p in sorted(style.iterdir()):
            ref = to_uint8(tiny_net(c, read_image(p)[None]))[0].int()
            assert (pixels(tmp_path / "out" / f"c1_stylized_{p.stem}.png") - ref).abs().max() <= 1, p.name


def test_outputs_that_are_not_finite_stop_the_run_naming_the_pair(
    tiny_ckpt, image_dirs, tmp_path, monkeypatch
):
    """to_uint8 turns NaN into 0: a diverged checkpoint's outputs were saved as black PNGs and the
    run exited 0. Here c1 with s1 (the middle of a batch of three) holds NaN: the images before it
    stay written, none after."""
    import samam.evaluation as evaluation

    load = evaluation.load_network

    def nan_for_c1_s1(*args, **kwargs):
        net = load(*args, **kwargs)

        def hook(module, inputs, y):  # c1 is 64 px wide, c0 40
            if inputs[0].shape[-1] == 64:
                y = y.clone()
                y[1] = float("nan")
            return y

        net.register_forward_hook(hook)
        return net

    monkeypatch.setattr(evaluation, "load_network", nan_for_c1_s1)
    content, style = image_dirs
    out = tmp_path / "out"
    with pytest.raises(
        FloatingPointError, match=r"c1.png with s1.jpg holds NaN or inf.*the 4 images written"
    ):
        run(tiny_ckpt, content, style, out, batch_size=4)
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == [f"c0_stylized_s{i}.png" for i in range(3)] + ["c1_stylized_s0.png"]
