"""eval.py end to end: the real config composed, shrunk to a CPU run of a random tiny model."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("artfid", "fid_art", "lpips", "cfsd", "fid_tf", "ms_per_image", "gmacs", "params", "peak_mem_mib")


def entry_point(name: str):
    spec = importlib.util.spec_from_file_location(f"_entry_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def compose_eval(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("eval", overrides=overrides)


def base_overrides(tiny_ckpt: Path, image_dirs, out: Path) -> list[str]:
    content, style = image_dirs
    return [
        f"ckpt_path={tiny_ckpt}",
        f"content_dir={content}",
        f"style_dir={style}",
        f"output_dir={out}",
        "device=cpu",
        "backend=torch",
        "content_size=32",
        "style_size=64",
        "style_short_side=null",
        "batch_size=2",
        "progress=false",
        "bench.content_size=32",
        "bench.style_size=64",
        "bench.warmup=0",
        "bench.repeats=2",
    ]


def test_eval_end_to_end_writes_every_key(tiny_ckpt, tiny_net, image_dirs, tmp_path):
    out = tmp_path / "eval"
    cfg = compose_eval(base_overrides(tiny_ckpt, image_dirs, out) + ["metrics.test_extractors=true"])
    res = entry_point("eval")(cfg)

    saved = json.loads((out / "results.json").read_text())
    for key in KEYS:
        assert key in saved
    for key in ("artfid", "fid_art", "lpips", "cfsd", "fid_tf", "ms_per_image", "gmacs", "params"):
        assert isinstance(saved[key], (int, float)), key
    assert saved["peak_mem_mib"] is None and "CUDA" in saved["null_reasons"]["peak_mem_mib"]
    assert saved["artfid"] == pytest.approx((1 + saved["lpips"]) * (1 + saved["fid_art"]))
    assert saved["params"] == sum(p.numel() for p in tiny_net.parameters())
    assert saved["gmacs_breakdown"]["gmacs_scan"] > 0
    assert "warning" in saved and all("TEST ONLY" in v for v in saved["metric_networks"].values())
    assert saved["protocol"]["n_images"] == 6 and res["artfid"] == saved["artfid"]

    names = sorted(p.name for p in out.glob("*_stylized_*.png"))
    assert names == [f"c{i}_stylized_s{j}.png" for i in range(2) for j in range(3)]
    assert Image.open(out / "c1_stylized_s1.png").size == (32, 32)
    md = (out / "results.md").read_text()
    assert "| ArtFID ↓ |" in md and "TEST ONLY" in md
    # 2 × 3 images at 32²: figures that must not be read beside the paper's
    assert saved["protocol_deviations"] == [
        "2 content × 3 style = 6 images, not the protocol's 20 × 40 = 800 (FID depends on the number of images)",
        "contents at 32², not the protocol's 512²",
        "random stand-in metric networks (TEST ONLY)",
    ]
    assert "Not the StyleID protocol (SPEC §6), so not comparable with the paper's figures" in md
    assert "- contents at 32², not the protocol's 512²" in md


def test_eval_refuses_to_score_outputs_that_are_not_finite(tiny_net, image_dirs, tmp_path):
    """to_uint8 turns NaN into 0: a diverged checkpoint was scored on black images."""
    import copy

    net = copy.deepcopy(tiny_net)
    with torch.no_grad():
        net.image_decoder.layers[28].bias.fill_(float("nan"))
    ckpt = tmp_path / "nan.ckpt"
    state = {"net." + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "samam": {"model": net.config, "config": None, "version": 1}}, ckpt)
    out = tmp_path / "eval"
    cfg = compose_eval(base_overrides(ckpt, image_dirs, out) + ["metrics.test_extractors=true"])
    with pytest.raises(FloatingPointError, match="c0.png with s0.png … holds NaN or inf"):
        entry_point("eval")(cfg)
    assert not (out / "results.json").exists()


def test_protocol_deviations_name_what_moves_the_numbers():
    """An evaluation on a subset or at another size gave figures that read like the paper's (FID
    grows as the image count shrinks); the protocol's own settings give none."""
    from torch import nn

    from samam import metrics as M
    from samam.evaluation import protocol_deviations

    def suite(fid_side, lpips_side):
        fid = M.FrechetDistance(M.ArtInceptionFeatures(short_side=fid_side))
        return M.StyleTransferMetrics(
            fid_art=fid, lpips=M.LPIPSDistance(nn.Identity(), short_side=lpips_side)
        )

    assert protocol_deviations(20, 40, 512, suite(512, 512)) == []
    found = protocol_deviations(20, 39, None, suite(None, 256))
    assert found == [
        "20 content × 39 style = 780 images, not the protocol's 20 × 40 = 800 (FID depends on the number of images)",
        "each content at its own size, not the protocol's 512²",
        "fid_art saw each image at its own size, not the protocol's 512 (metrics.fid_art.short_side)",
        "lpips saw a 256-px shorter side, not the protocol's 512 (metrics.lpips.short_side)",
    ]
    assert protocol_deviations(20, 40, 512, M.StyleTransferMetrics()) == []  # disabled: null, not a deviation


def test_eval_scores_a_metric_of_ones_own_from_the_command_line(tiny_ckpt, image_dirs, tmp_path):
    """+metrics.extra.<name>._target_=… (here torchmetrics' SSIM of each output against its
    content): in results.json and results.md beside the protocol's metrics."""
    from samam import metrics as M

    out = tmp_path / "eval"
    ssim = "+metrics.extra.ssim"
    overrides = [
        "metrics.test_extractors=true",
        "bench.enabled=false",
        f"{ssim}._target_=torchmetrics.image.StructuralSimilarityIndexMeasure",
        f"{ssim}.data_range=1.0",
    ]
    res = entry_point("eval")(compose_eval(base_overrides(tiny_ckpt, image_dirs, out) + overrides))
    saved = json.loads((out / "results.json").read_text())
    assert -1 <= saved["ssim"] <= 1 and saved["ssim"] == res["ssim"] and saved["lpips"] is not None
    assert "StructuralSimilarityIndexMeasure" in saved["metric_networks"]["ssim"]
    # with its direction, as the protocol's metrics have theirs (SSIM: higher is better)
    assert f"| ssim ↑ | {saved['ssim']:.4g} |" in (out / "results.md").read_text()
    # every other key is one an extra metric may not take (M.RESERVED_NAMES): none is overwritten
    assert set(saved) - {"ssim", *M.METRIC_NAMES} <= M.RESERVED_NAMES


def test_results_md_shows_the_direction_of_each_metric_of_ones_own():
    """results.md showed ↑/↓ beside the protocol's metrics only, though the suite knows each
    extra's direction (its class's higher_is_better, or the config's); an unknown one shows none."""
    from samam.evaluation import results_markdown

    res = {"metric_networks": {"lpips": "AlexNet", "ssim": "SSIM", "mae": "MAE", "mine": "?"}}
    res |= {"lpips": 0.4, "ssim": 0.8, "mae": 0.1, "mine": 2.0}
    md = results_markdown(res, {"lpips": False, "ssim": True, "mae": False, "mine": None})
    for row in ("| LPIPS ↓ | 0.4 |", "| ssim ↑ | 0.8 |", "| mae ↓ | 0.1 |", "| mine | 2 |"):
        assert row in md.splitlines(), row


def test_eval_disabled_metrics_are_null_with_reason(tiny_ckpt, image_dirs, tmp_path):
    out = tmp_path / "eval"
    overrides = base_overrides(tiny_ckpt, image_dirs, out) + [
        "metrics.test_extractors=true",
        "metrics.lpips.enabled=false",
        "metrics.fid_tf.enabled=false",
        "bench.enabled=false",
    ]
    entry_point("eval")(compose_eval(overrides))
    saved = json.loads((out / "results.json").read_text())
    for key in ("lpips", "fid_tf", "artfid", "ms_per_image", "gmacs"):
        assert saved[key] is None and saved["null_reasons"][key], key
    assert "metrics.lpips.enabled=false" in saved["null_reasons"]["lpips"]
    assert isinstance(saved["fid_art"], float) and isinstance(saved["cfsd"], float)


def test_eval_missing_metric_weights_fail_before_stylising(tiny_ckpt, image_dirs, tmp_path):
    from samam.metrics import MissingWeightsError

    out = tmp_path / "eval"
    with pytest.raises(MissingWeightsError, match="art_inception.pth"):
        entry_point("eval")(compose_eval(base_overrides(tiny_ckpt, image_dirs, out)))
    assert not list(out.glob("*.png"))


def test_eval_missing_checkpoint(image_dirs, tmp_path):
    cfg = compose_eval(base_overrides(tmp_path / "absent.ckpt", image_dirs, tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        entry_point("eval")(cfg)
    unset = [
        o for o in base_overrides(tmp_path / "x", image_dirs, tmp_path / "o") if not o.startswith("ckpt_path")
    ]
    with pytest.raises(ValueError, match="eval.py needs ckpt_path: python eval.py ckpt_path="):
        entry_point("eval")(compose_eval(unset))


def test_eval_names_every_missing_input_at_once(tiny_ckpt, image_dirs, tmp_path):
    """A missing ckpt_path was reported alone: a mistyped content folder showed only on the next
    try, after the network and the metric networks had loaded."""
    overrides = base_overrides(tmp_path / "absent.ckpt", image_dirs, tmp_path / "o")
    overrides += [f"content_dir={tmp_path / 'photoz'}", f"style_dir={tmp_path / 'artz'}"]
    with pytest.raises(FileNotFoundError) as err:
        entry_point("eval")(compose_eval(overrides))
    for named in (
        "checkpoint not found: '.*absent.ckpt'",
        "content_dir: '.*photoz' does not exist",
        "style_dir: '.*artz'",
    ):
        assert re.search(named, str(err.value)), named
    assert not (tmp_path / "o").exists()
    # the checkpoint there, a folder missing: that folder, before the network loads
    overrides = [*base_overrides(tiny_ckpt, image_dirs, tmp_path / "o"), f"style_dir={tmp_path / 'artz'}"]
    with pytest.raises(FileNotFoundError, match="^style_dir: '.*artz' does not exist"):
        entry_point("eval")(compose_eval(overrides))


@pytest.mark.parametrize("name", ["eval", "stylize"])
def test_every_unset_value_is_named_at_once_before_the_slow_imports(name, monkeypatch):
    """OmegaConf's MissingMandatoryValue named only the first unset value (ckpt_path), and only
    after samam.evaluation (~15 s of imports on 2 cores) was loaded."""
    import sys

    monkeypatch.delitem(sys.modules, "samam.evaluation", raising=False)
    monkeypatch.setitem(sys.modules, "samam.evaluation", None)  # an import of it would fail
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(name)
    needed = "ckpt_path, content_dir, style_dir" if name == "eval" else "ckpt_path, content, style"
    with pytest.raises(ValueError, match=rf"{name}.py needs {needed}: python {name}.py ckpt_path="):
        entry_point(name)(cfg)


def test_eval_fid_reference_is_the_style_files_as_they_are(tiny_ckpt, image_dirs, tmp_path, monkeypatch):
    """FID's real set gets each style file unsquashed (aspect kept, for the art Inception's own
    512-shorter-side resize, SPEC §6), weighted by the number of contents: StyleID's reference
    folder holds each style once per stylised image. By default the network sees each style
    as the release's test script makes it: shorter side 256 (here 64), aspect kept."""
    import samam.evaluation as E
    from samam.metrics import StyleTransferMetrics

    seen, embedded = [], []
    real = StyleTransferMetrics.update_style
    monkeypatch.setattr(
        StyleTransferMetrics,
        "update_style",
        lambda self, s, weight=1: (seen.append((tuple(s.shape), weight)), real(self, s, weight)),
    )
    embed = E.embed_styles
    monkeypatch.setattr(
        E,
        "embed_styles",
        lambda net, ims, *a: (embedded.extend(tuple(i.shape) for i in ims), embed(net, ims, *a))[1],
    )
    out = tmp_path / "eval"
    overrides = base_overrides(tiny_ckpt, image_dirs, out) + [
        "metrics.test_extractors=true",
        "bench.enabled=false",
        "style_size=null",
        "style_short_side=64",
    ]
    res = entry_point("eval")(compose_eval(overrides))
    # s0 64×80, s1 96×72, s2 64×64 (W×H); 2 contents
    assert seen == [((1, 3, 80, 64), 2), ((1, 3, 72, 96), 2), ((1, 3, 64, 64), 2)]
    assert embedded == [(3, 80, 64), (3, 64, 85), (3, 64, 64)]  # 96·64/72 = 85.3, truncated
    assert "style shorter side 64 (bilinear, aspect kept)" in (out / "results.md").read_text()
    assert res["protocol"]["style_reference"] == "style files as decoded, each weighted by n_content"


def test_eval_and_stylize_refuse_inputs_whose_outputs_would_collide(tiny_ckpt, image_dirs, tmp_path):
    from samam.evaluation import stylize

    content, style = image_dirs
    styles = tmp_path / "styles"
    for sub in ("a", "b"):
        (styles / sub).mkdir(parents=True)
    (styles / "a" / "x.png").write_bytes((style / "s0.png").read_bytes())
    (styles / "b" / "x.jpg").write_bytes((style / "s1.jpg").read_bytes())
    out = tmp_path / "eval"
    overrides = base_overrides(tiny_ckpt, (content, styles), out) + ["metrics.test_extractors=true"]
    with pytest.raises(ValueError, match=r"share a file name stem.*a/x\.png and .*b/x\.jpg"):
        entry_point("eval")(compose_eval(overrides))
    with pytest.raises(ValueError, match="content images share a file name stem"):
        stylize(tiny_ckpt, [content / "c0.png", content / "c0.png"], style, out, device="cpu", progress=False)
    assert not out.exists() or not list(out.glob("*.png"))


def test_eval_checks_every_input_first_and_lists_the_skipped(
    tiny_ckpt, image_dirs, make_image, folder_copy, tmp_path
):
    """A corrupt content file and one below LPIPS's 31-px minimum (content_size=null) are skipped
    before any work and listed; the run still scores the usable pairs."""
    content, style = image_dirs
    folder = folder_copy(content, tmp_path / "content", {"corrupt.png": b"\x89PNG not really"})
    make_image(folder / "sliver.png", 200, 24, seed=9)  # W × H: fine for SaMam (≥ 16), not for LPIPS
    styles = folder_copy(style, tmp_path / "style", {"broken.jpg": b"\xff\xd8 not a jpeg"})
    out = tmp_path / "eval"
    overrides = [
        o for o in base_overrides(tiny_ckpt, (folder, styles), out) if not o.startswith("content_size")
    ]
    res = entry_point("eval")(compose_eval([*overrides, "content_size=null", "metrics.test_extractors=true"]))
    skipped = res["protocol"]["skipped_inputs"]
    assert set(skipped) == {
        str(folder / "corrupt.png"),
        str(folder / "sliver.png"),
        str(styles / "broken.jpg"),
    }
    assert "31-px minimum" in skipped[str(folder / "sliver.png")]
    assert res["protocol"]["n_content"] == 2 and res["protocol"]["n_style"] == 3 and res["lpips"] is not None
    assert "- skipped input `" in (out / "results.md").read_text()


def test_eval_scores_exactly_the_saved_pixels(tiny_ckpt, image_dirs, tmp_path, monkeypatch):
    """The metrics must see what results/ holds (uint8 PNGs), not the network's floats."""
    import numpy as np
    import torch

    from samam.metrics import StyleTransferMetrics

    scored = []
    update = StyleTransferMetrics.update
    monkeypatch.setattr(
        StyleTransferMetrics,
        "update",
        lambda self, out, content: scored.append(out.clone()) or update(self, out, content),
    )
    out = tmp_path / "eval"
    entry_point("eval")(
        compose_eval(base_overrides(tiny_ckpt, image_dirs, out) + ["metrics.test_extractors=true"])
    )
    images = torch.cat(scored)  # stylising order: contents, then styles in batches
    names = [f"c{i}_stylized_s{j}.png" for i in range(2) for j in range(3)]
    assert images.shape[0] == len(names)
    for img, name in zip(images, names):
        png = torch.from_numpy(np.array(Image.open(out / name))).permute(2, 0, 1).float() / 255
        assert torch.equal(img, png), name


def test_eval_match_release_decodes_as_art_fid_and_drops_partial_patches(
    tiny_ckpt, tiny_net, tmp_path, monkeypatch
):
    """match_release=true: content, network style and FID reference all decoded with
    convert('RGB') (art-fid's and the release's reading: no EXIF rotation, alpha dropped), and
    the content's partial edge patches dropped; by default the same files are turned and
    composited on white and every pixel is kept."""
    import numpy as np
    import torch

    from samam.metrics import StyleTransferMetrics

    rng = np.random.default_rng(4)
    content, style = tmp_path / "content", tmp_path / "style"
    content.mkdir()
    style.mkdir()
    rgba = rng.integers(0, 256, (45, 70, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 0  # transparent top: white by default, raw colour under convert('RGB')
    Image.fromarray(rgba, "RGBA").save(content / "glass.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° to display
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(style / "turned.jpg", exif=exif)

    refs, pairs = [], []
    update_style, update = StyleTransferMetrics.update_style, StyleTransferMetrics.update
    monkeypatch.setattr(
        StyleTransferMetrics,
        "update_style",
        lambda self, s, weight=1: refs.append(s.clone()) or update_style(self, s, weight),
    )
    monkeypatch.setattr(
        StyleTransferMetrics,
        "update",
        lambda self, out, c: pairs.append((out.clone(), c.clone())) or update(self, out, c),
    )
    overrides = [
        o
        for o in base_overrides(tiny_ckpt, (content, style), tmp_path / "x")
        if not o.startswith(("content_size", "output_dir"))
    ] + ["content_size=null", "metrics.test_extractors=true", "bench.enabled=false"]
    res = {}
    for flag in ("false", "true"):
        res[flag] = entry_point("eval")(
            compose_eval([*overrides, f"output_dir={tmp_path / flag}", f"match_release={flag}"])
        )

    p = tiny_net.cfg.patch_size
    h, w = 45 // p * p, 70 // p * p
    (ours_ref, rel_ref), (ours_pair, rel_pair) = refs, pairs
    assert ours_ref.shape[-2:] == (96, 72) and rel_ref.shape[-2:] == (72, 96)  # turned only by default
    assert torch.equal(
        rel_ref[0],
        torch.from_numpy(np.array(Image.open(style / "turned.jpg").convert("RGB"))).permute(2, 0, 1) / 255,
    )
    assert ours_pair[1].shape[-2:] == (45, 70) and torch.all(ours_pair[1][..., :20, :] == 1)  # white
    plain = torch.from_numpy(rgba[:h, :w, :3].copy()).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(rel_pair[1], plain)
    assert rel_pair[0].shape[-2:] == (h, w)
    assert Image.open(tmp_path / "true" / "glass_stylized_turned.png").size == (w, h)
    assert "convert('RGB')" in res["true"]["protocol"]["decoding"]
    assert "Decoding: as the release and art-fid" in (tmp_path / "true" / "results.md").read_text()
    # One stylised image: the FIDs have no covariance and are null with the reason; LPIPS is scored.
    assert res["true"]["fid_art"] is None and res["true"]["lpips"] is not None
    assert "at least 2 reference and 2 stylised" in res["true"]["null_reasons"]["fid_art"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("bench.repeats=0", "bench.repeats must be an integer ≥ 1"),
        ("bench.warmup=-1", "bench.warmup must be an integer ≥ 0"),
        ("bench.content_size=8", "bench.content_size must be an integer ≥ 16"),
        ("bench.style_size=32", "bench.style_size must be an integer ≥ 64"),
        ("batch_size=0", "batch_size must be ≥ 1"),
        # +bench.repeat=3 (for repeats) was ignored: the benchmark ran its default 10 repeats
        ("+bench.repeat=3", r"bench: no setting repeat \(it has: enabled, content_size"),
    ],
)
def test_eval_refuses_bad_settings_before_stylising(tiny_ckpt, image_dirs, tmp_path, override, message):
    out = tmp_path / "eval"
    overrides = base_overrides(tiny_ckpt, image_dirs, out) + ["metrics.test_extractors=true", override]
    with pytest.raises(ValueError, match=message):
        entry_point("eval")(compose_eval(overrides))
    assert not out.exists() or not list(out.glob("*.png"))


def test_eval_refuses_an_output_dir_that_is_a_file_before_any_work(image_dirs, tmp_path):
    """It failed with a bare FileExistsError once the network and the metrics were loaded."""
    out = tmp_path / "results"
    out.write_text("")
    overrides = base_overrides(tmp_path / "never-read.ckpt", image_dirs, out)
    with pytest.raises(NotADirectoryError, match=r"output_dir '.*results' is a file; give a folder"):
        entry_point("eval")(compose_eval(overrides))


def test_eval_refuses_a_switch_given_as_a_string(tiny_ckpt, image_dirs, tmp_path):
    out = tmp_path / "eval"
    overrides = base_overrides(tiny_ckpt, image_dirs, out) + [
        "metrics.test_extractors=true",
        "match_release=no",
    ]
    with pytest.raises(TypeError, match="match_release='no' must be true or false"):
        entry_point("eval")(compose_eval(overrides))
    assert not out.exists()


@pytest.mark.parametrize("override", ["bench.enabled=no", "metrics.fid_tf.enabled=off"])
def test_eval_refuses_a_metric_or_bench_switch_given_as_a_string(tiny_ckpt, image_dirs, tmp_path, override):
    """`off`/`no` are strings to Hydra, and truthy: the metric or the benchmark ran anyway."""
    out = tmp_path / "eval"
    overrides = base_overrides(tiny_ckpt, image_dirs, out) + ["metrics.test_extractors=true", override]
    with pytest.raises(TypeError, match=f"{override.split('=')[0]}='.*' must be true or false"):
        entry_point("eval")(compose_eval(overrides))
    assert not out.exists() or not list(out.glob("*.png"))


def test_eval_keeps_the_metrics_when_the_benchmark_fails(tiny_ckpt, image_dirs, tmp_path, monkeypatch):
    """The benchmark runs last (at 512², the likeliest to run out of memory): its failure must
    not cost the evaluation. results.json holds the metrics, the bench fields null with why."""
    import samam.evaluation as E

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(E, "measure_efficiency", oom)
    out = tmp_path / "eval"
    res = entry_point("eval")(
        compose_eval(base_overrides(tiny_ckpt, image_dirs, out) + ["metrics.test_extractors=true"])
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["lpips"] is not None and saved["fid_art"] is not None and saved["ms_per_image"] is None
    assert (
        saved["null_reasons"]["ms_per_image"]
        == "benchmark failed: RuntimeError: CUDA out of memory (simulated)"
    )
    assert res["lpips"] == saved["lpips"]


def test_eval_benchmark_waits_for_the_networks_device(monkeypatch):
    """On cuda:1 while cuda:0 is current (eval.py device=cuda:1), each timed call must wait for
    cuda:1: a bare torch.cuda.synchronize() waits for the current device, so the clock stopped
    at the launches. Simulated with fake tensors on cuda:1 and torch.cuda's calls stubbed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import samam.evaluation as E

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    for name in ("empty_cache", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: 0)
    monkeypatch.setattr(E, "count_macs", lambda *args: {})

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="cuda:1"))

        def forward(self, content, style):
            return content * self.w

    with FakeTensorMode():
        E.measure_efficiency(Net(), content_size=16, style_size=16, warmup=1, repeats=2)
    assert len(synced) == 7 and set(synced) == {torch.device("cuda", 1)}


def test_eval_gmacs_of_the_attention_arm_count_its_attention(monkeypatch):
    """mixer=attention's QKᵀ and AV (its quadratic cost): on the CPU SDPA runs as an op torch's
    FlopCounterMode has no formula for, so results.json's gmacs left them out. Counted, they equal
    the MACs of the same attention written as two matmuls."""
    from tiny import TINY

    import samam.evaluation as E
    from samam import SaMam

    net = SaMam(**{**TINY, "mixer": "attention", "backend": "torch"}).eval().requires_grad_(False)
    content, style = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    fused = E.count_macs(net, content, style)["gmacs"]

    def two_matmuls(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", two_matmuls)
    assert fused == pytest.approx(E.count_macs(net, content, style)["gmacs"], rel=1e-9)


def test_gmacs_of_a_network_being_trained_are_those_of_it_frozen():
    """count_macs of a freshly built network (parameters requiring grad, as when comparing arms
    from Python) failed inside FlopCounterMode ("Expected gradient function to be set")."""
    from tiny import TINY

    import samam.evaluation as E
    from samam import SaMam

    net = SaMam(**{**TINY, "backend": "torch"})
    content, style = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    trained = E.count_macs(net, content, style)
    assert all(p.requires_grad for p in net.parameters())
    assert trained == E.count_macs(net.requires_grad_(False), content, style)


def test_eval_results_md_states_the_content_size_the_network_saw(tiny_ckpt, image_dirs, tmp_path):
    out = tmp_path / "own"
    overrides = [o for o in base_overrides(tiny_ckpt, image_dirs, out) if not o.startswith("content_size")]
    extra = ["metrics.test_extractors=true", "bench.enabled=false"]
    entry_point("eval")(compose_eval([*overrides, "content_size=null", *extra]))
    assert "each content at its own size" in (out / "results.md").read_text()
    overrides = [o.replace(str(out), str(tmp_path / "rel")) for o in overrides]
    res = entry_point("eval")(compose_eval([*overrides, "content_size=45", "match_release=true", *extra]))
    assert res["protocol"]["content_px"] == [40, 40]  # 45 → whole 8-px patches
    assert "content 40×40" in (tmp_path / "rel" / "results.md").read_text()
    assert Image.open(tmp_path / "rel" / "c0_stylized_s0.png").size == (40, 40)


def test_eval_scores_lpips_and_cfsd_of_each_output_against_its_own_content(tiny_ckpt, image_dirs, tmp_path):
    """LPIPS and CFSD compare a stylised image with the content it was made from: recomputed here
    from the saved files, paired by their names, they equal eval's; a shuffled pairing does not."""
    import numpy as np

    from samam.evaluation import read_image
    from samam.metrics import build_metrics

    out = tmp_path / "eval"
    cfg = compose_eval(base_overrides(tiny_ckpt, image_dirs, out) + ["metrics.test_extractors=true"])
    res = entry_point("eval")(cfg)
    content_dir, _ = image_dirs
    contents = {p.stem: read_image(p, size=32)[None] for p in sorted(content_dir.iterdir())}
    outputs = {
        p.name: torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)[None].float() / 255
        for p in sorted(out.glob("*_stylized_*.png"))
    }
    assert len(outputs) == 6

    def scores(content_of) -> tuple[float, float]:
        suite = build_metrics(**cfg.metrics)
        for name, y in outputs.items():
            suite.lpips.update(y, contents[content_of(name)])
            suite.cfsd.update(y, contents[content_of(name)])
        return float(suite.lpips.compute()), float(suite.cfsd.compute())

    own = scores(lambda name: name.split("_stylized_")[0])
    swapped = scores(lambda name: {"c0": "c1", "c1": "c0"}[name.split("_stylized_")[0]])
    assert (res["lpips"], res["cfsd"]) == pytest.approx(own, rel=1e-5)
    assert res["lpips"] != pytest.approx(swapped[0], rel=1e-3)
    assert res["cfsd"] != pytest.approx(swapped[1], rel=1e-3)


@pytest.mark.parametrize("small_one", ["content", "style"])
def test_eval_skips_an_image_the_art_inception_cannot_take_at_its_size(
    small_one, tiny_ckpt, make_image, tmp_path, monkeypatch
):
    """metrics.fid_art.short_side=null keeps each image's size, and the art Inception needs 75 px.
    A 64-px content passed the check before any work (LPIPS's 31 px) and the run failed at its
    first stylised batch; a 64-px style passed too (the network sees it resized to 256, FID's
    reference set takes the file as it is). Either is skipped and listed, and the rest scored."""
    from samam import metrics as M

    monkeypatch.setattr(
        M, "art_inception", lambda weights, download, short_side: M.ArtInceptionFeatures(short_side)
    )
    folders = {"content": tmp_path / "content", "style": tmp_path / "style"}
    for folder in folders.values():
        folder.mkdir()
    make_image(folders[small_one] / "small.png", 64, 64, seed=1)
    make_image(folders["content"] / "big.png", 80, 76, seed=2)
    for i in range(2):
        make_image(folders["style"] / f"s{i}.png", 80, 80, seed=3 + i)
    out = tmp_path / "eval"
    overrides = [
        o
        for o in base_overrides(tiny_ckpt, (folders["content"], folders["style"]), out)
        if not o.startswith("content_size")
    ]
    off = ["metrics.fid_tf.enabled=false", "metrics.cfsd.enabled=false", "+metrics.lpips.pnet_rand=true"]
    res = entry_point("eval")(
        compose_eval(
            [*overrides, "content_size=null", "metrics.fid_art.short_side=null", "bench.enabled=false", *off]
        )
    )
    assert "75-px minimum" in res["protocol"]["skipped_inputs"][str(folders[small_one] / "small.png")]
    assert res["protocol"]["n_images"] == 2 and res["fid_art"] is not None  # 1 content × 2 styles
    # lpips.pnet_rand alone: the warning named test_extractors=true, which was false
    assert (
        res["warning"]
        == "the values of lpips come from random stand-in networks (TEST ONLY) and mean nothing"
    )


def test_eval_results_record_the_checkpoints_step_and_code_and_the_code_that_evaluated_it(
    tiny_ckpt, image_dirs, tmp_path
):
    from samam.checkpoint import code_version

    trained = {"samam_version": "0.0.9", "git_commit": "1" * 40, "git_dirty": True, "git_error": None}
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt["samam"]["code"], ckpt["global_step"] = trained, 7
    torch.save(ckpt, tmp_path / "coded.ckpt")
    for path, step, expected in ((tmp_path / "coded.ckpt", 7, trained), (tiny_ckpt, None, None)):
        out = tmp_path / path.stem
        overrides = [*base_overrides(path, image_dirs, out), "metrics.test_extractors=true"]
        overrides.append("bench.enabled=false")
        entry_point("eval")(compose_eval(overrides))
        saved = json.loads((out / "results.json").read_text())
        assert saved["checkpoint_code"] == expected and saved["code"] == code_version()
        assert saved["checkpoint_step"] == step  # last.ckpt moves on while a run trains


def test_eval_into_an_earlier_runs_folder_leaves_no_results_of_other_images(
    tiny_ckpt, image_dirs, folder_copy, tmp_path, monkeypatch, caplog
):
    """A second run into the same output_dir, stopped while stylising, left the first run's
    results.json beside images it had already overwritten; the first run's images of a style
    the second does not use stayed unmentioned."""
    import samam.evaluation as E

    content, style = image_dirs
    out = tmp_path / "eval"
    first = base_overrides(tiny_ckpt, image_dirs, out) + ["metrics.test_extractors=true"]
    entry_point("eval")(compose_eval(first))
    assert (out / "results.json").is_file() and (out / "c0_stylized_s2.png").is_file()

    fewer = folder_copy(style, tmp_path / "fewer", {})
    (fewer / "s2.png").unlink()
    second = base_overrides(tiny_ckpt, (content, fewer), out) + ["metrics.test_extractors=true"]

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, caplog.at_level("WARNING", logger="samam.evaluation"):
        m.setattr(E, "save_png", stopped)
        with pytest.raises(KeyboardInterrupt):
            entry_point("eval")(compose_eval(second))
    assert not (out / "results.json").exists() and not (out / "results.md").exists()
    assert "2 stylised image(s) of an earlier run" in caplog.text and "c0_stylized_s2.png" in caplog.text
    res = entry_point("eval")(compose_eval(second))
    assert (
        res["protocol"]["n_images"] == 4
        and json.loads((out / "results.json").read_text())["protocol"]["n_style"] == 2
    )


def test_eval_records_the_step_of_the_weights_it_scored_when_the_file_moves_on(
    tiny_ckpt, image_dirs, tmp_path, monkeypatch
):
    """Evaluating last.ckpt of a run still training: the file was read again after stylising, so
    results.json gave the step of a checkpoint saved meanwhile, not of the weights scored."""
    import samam.evaluation as E

    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt["global_step"] = 7
    last = tmp_path / "last.ckpt"
    torch.save(ckpt, last)
    save_png = E.save_png

    def training_saves_meanwhile(*args, **kwargs):
        torch.save({**ckpt, "global_step": 9}, last)
        save_png(*args, **kwargs)

    monkeypatch.setattr(E, "save_png", training_saves_meanwhile)
    out = tmp_path / "eval"
    overrides = [
        *base_overrides(last, image_dirs, out),
        "metrics.test_extractors=true",
        "bench.enabled=false",
    ]
    entry_point("eval")(compose_eval(overrides))
    assert json.loads((out / "results.json").read_text())["checkpoint_step"] == 7


def test_eval_holds_one_decoded_style_image_at_a_time(tiny_ckpt, image_dirs, tmp_path, monkeypatch):
    """Each style file was kept decoded at full size from its check to the FID reference update,
    all at once: 40 WikiArt scans (some past 100 MP) sat in memory together."""
    import weakref

    import samam.evaluation as E

    _, style = image_dirs
    live, most = set(), [0]
    load_rgb = E.load_rgb

    def tracked(path, plain=False):
        im = load_rgb(path, plain)
        if Path(path).parent == style:
            live.add(id(im))
            weakref.finalize(im, live.discard, id(im))
            most[0] = max(most[0], len(live))
        return im

    monkeypatch.setattr(E, "load_rgb", tracked)
    out = tmp_path / "eval"
    overrides = [
        *base_overrides(tiny_ckpt, image_dirs, out),
        "metrics.test_extractors=true",
        "bench.enabled=false",
    ]
    res = entry_point("eval")(compose_eval(overrides))
    assert res["protocol"]["n_style"] == 3 and res["fid_art"] is not None
    assert most[0] <= 2  # the last one checked may still be referenced while the next is decoded
