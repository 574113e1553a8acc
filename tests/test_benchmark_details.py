"""benchmark.py's arithmetic and bookkeeping, case by case: which rows a ratio pairs, the slope
fits, the statistics of a row, extrapolation, --budget, --peer-style, the markdown columns, a
failing series, the no-CUDA refusal; and StyTr²'s attention wiring."""

from __future__ import annotations

import csv
import json
import time
import types

import pytest
import torch
from test_benchmark import TINY, _load_benchmark, timed_row
from test_stytr2 import _stytr2
from torch import nn


@pytest.fixture()
def bench():
    return _load_benchmark()


def test_ratios_pair_only_equal_batch_and_precision(bench):
    rows = [
        timed_row(bench, "samam", 2.0, batch=1),
        timed_row(bench, "samam", 4.0, batch=8),
        timed_row(bench, "stytr2", 8.0, batch=8),
        timed_row(bench, "samam", 2.0, precision="bf16", content=512),
        timed_row(bench, "stytr2", 6.0, content=512),
    ]
    bench.add_speedups(rows)
    assert [r["speedup_vs_stytr2"] for r in rows] == ["", 2.0, "", "", ""]


def test_small_ratios_keep_their_significant_digits(bench, tmp_path):
    """A peer 260× faster (a tiny peer, a loaded CPU): rounded to 3 decimals, 1/261.2 was written
    0.004 (4.5 % off) and shown 0.00×."""
    rows = [timed_row(bench, "samam", 261.2), timed_row(bench, "stytr2", 1.0)]
    for r in rows:
        r.update(mixer="ssm", backend="torch", min_ms=1.0, img_per_s=1.0, peak_mib=1.0, pixels=256 * 256)
    bench.add_speedups(rows)
    assert rows[0]["speedup_vs_stytr2"] == pytest.approx(1 / 261.2, rel=1e-3)
    bench.write_markdown(rows, _meta(), tmp_path / "r.md")
    ours = next(line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| samam"))
    assert "| 0.0038× |" in ours


def test_memory_slope_is_fit_on_peak_memory(bench):
    rows = [
        {
            "impl": "samam",
            "mixer": "ssm",
            "backend": "torch",
            "precision": "fp32",
            "task": "latency",
            "status": "ok",
            "pixels": p,
            "median_ms": p * p / 1e8,
            "peak_mib": p / 10,
        }
        for p in (1e4, 4e4, 16e4)
    ]
    (fit,) = bench.scaling(rows).values()
    assert fit["mem_slope"] == pytest.approx(1.0) and fit["time_slope"] == pytest.approx(2.0)


def _ctx(bench, argv, memory=None, t_start=None):
    args = bench.build_parser().parse_args(["--device", "cpu", *argv])
    memory = memory or types.SimpleNamespace(kind="rss_hwm_delta", extra_call=True, measure=lambda call: 5.0)
    return bench.Context(
        args,
        torch.device("cpu"),
        memory,
        None,
        "-",
        0.0,
        t_start=time.monotonic() if t_start is None else t_start,
    )


def test_row_statistics_median_min_throughput_and_history(bench, monkeypatch):
    monkeypatch.setattr(bench, "time_calls", lambda *a, **k: [1.0, 3.0, 0.5])
    ctx = _ctx(bench, ["--repeats", "3"])
    s = bench.Series("samam", "ssm", "torch", build=None)
    h = bench.History()
    row = bench.run_case(ctx, s, nn.Identity(), "fp32", "throughput", 4, 64, h)
    assert row["status"] == "ok"
    assert (row["median_ms"], row["min_ms"], row["repeats"]) == (1000.0, 500.0, 3)
    assert row["img_per_s"] == 4.0 and row["peak_mib"] == 5.0
    assert h.points == [(64 * 64, 1.0)] and h.mem_points == [(64 * 64, 5.0)]


def test_extrapolation_uses_the_measured_slope_and_memory_stays_conservative(bench):
    h = bench.History(points=[(10_000, 1.0), (40_000, 8.0)], mem_points=[(10_000, 100.0), (40_000, 100.0)])
    assert h.predict(160_000, 1.0) == pytest.approx(64.0)  # measured slope 1.5
    assert h.predict_mib(160_000, 2.0) == pytest.approx(1600.0)  # flat small sizes: still quadratic


def test_budget_skips_cases_once_spent(bench):
    ctx = _ctx(bench, ["--budget", "1"], t_start=time.monotonic() - 10)
    s = bench.Series("samam", "ssm", "torch", build=None)
    row = bench.run_case(ctx, s, None, "fp32", "latency", 1, 64, bench.History())
    assert row["status"] == "skipped: --budget 1 s spent"


def test_peer_style_content_changes_only_the_peers_style(bench):
    ctx = _ctx(bench, ["--peers", "stytr2", "--peer-style", "content", "--style-size", "64"])
    ours = bench.Series("samam", "ssm", "torch", build=None)
    peer = bench.Series("stytr2", "attention", "mha", build=None, peer=True)
    assert bench.new_row(ctx, ours, "fp32", "latency", 1, 128)["style"] == 64
    assert bench.new_row(ctx, peer, "fp32", "latency", 1, 128)["style"] == 128


def _meta() -> dict:
    """A record's meta.json as a CPU run writes it, before cudnn_allow_tf32 was recorded."""
    return dict(
        date="2024-01-01T00:00:00",
        cpu="cpu",
        device="cpu",
        torch="x",
        threads=1,
        commit="c",
        loadavg_start=[0, 0, 0],
        model="m",
        style=256,
        warmup=0,
        repeats=1,
        mem_kind="rss_hwm_delta",
        loss="-",
        command="c",
    )


def test_markdown_ratio_cells_sit_under_their_headers(bench, tmp_path):
    rows = [
        timed_row(bench, "samam", 2.0),
        timed_row(bench, "release", 4.0),
        timed_row(bench, "stytr2", 10.0),
    ]
    for r in rows:
        r.update(mixer="ssm", backend="torch", min_ms=1.0, img_per_s=1.0, peak_mib=1.0, pixels=256 * 256)
    meta = _meta()
    bench.add_speedups(rows)
    bench.write_markdown(rows, meta, tmp_path / "r.md")
    lines = (tmp_path / "r.md").read_text().splitlines()
    head = next(line for line in lines if line.startswith("| series"))
    ours = next(line for line in lines if line.startswith("| samam"))
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in ours.split("|")]))
    assert cells["vs release"] == "2.00×" and cells["vs StyTr²"] == "5.00×"


def test_replot_of_a_record_without_the_tf32_key_does_not_claim_off(bench, tmp_path):
    # The committed CPU records predate meta.json's cudnn_allow_tf32: --replot must not write
    # a setting that was never recorded (torch's default is on).
    meta = _meta()
    row = timed_row(bench, "samam", 2.0)
    row.update(mixer="ssm", backend="torch", min_ms=1.0, img_per_s=1.0, peak_mib=1.0, pixels=256 * 256)

    def tf32_line(meta):
        bench.write_markdown([row], meta, tmp_path / "r.md")
        return next(ln for ln in (tmp_path / "r.md").read_text().splitlines() if "fp32 math" in ln)

    assert tf32_line(meta).endswith("cuDNN TF32 convolutions ?")
    assert tf32_line({**meta, "cudnn_allow_tf32": True}).endswith("convolutions on")
    assert tf32_line({**meta, "cudnn_allow_tf32": False}).endswith("convolutions off")


def test_other_series_still_run_after_one_fails(bench, monkeypatch, tmp_path):
    class Echo(nn.Module):
        def forward(self, content, style):
            return content

    def broken():
        raise ModuleNotFoundError("No module named 'mamba_ssm'")

    monkeypatch.setattr(
        bench,
        "samam_series",
        lambda *a: [bench.Series("samam", "ssm", "x", broken), bench.Series("samam", "ssm", "y", Echo)],
    )
    argv = ["--device", "cpu", "--tasks", "latency", "--sizes", "64", "--repeats", "1", "--warmup", "0"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    with (tmp_path / "results.csv").open() as f:
        status = [r["status"] for r in csv.DictReader(f)]
    assert status[0].startswith("error:") and status[1] == "ok"


def test_a_scan_override_applies_to_the_scan_arm_only(bench):
    """--model scan=cross --mixers ssm attention: SaMam refuses a scan order with mixer=attention,
    so the attention arm is built without it."""
    kwargs = {**bench.model_kwargs("tiny", []), "scan": "cross", "style_ssm": False}
    ssm, attention = bench.samam_series(kwargs, ["ssm", "attention"], ["torch"], "cpu", False, False)
    assert (ssm.build().cfg.scan, ssm.build().cfg.style_ssm) == ("cross", False)
    assert (attention.build().cfg.mixer, attention.build().cfg.scan) == ("attention", "zigzag")


def test_stytr2_decoder_attends_to_style_and_content_encoder_gets_cape():
    st = _stytr2()
    net = st.StyTr2(dim=32, heads=4, ffn=64, encoder_layers=1, decoder_layers=1, decoder_width=16).eval()
    seen = {}
    net.decoder[0].attn2.register_forward_pre_hook(lambda m, a: seen.__setitem__("kv", a[1].shape[0]))
    net.encoder_c[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("pos", a[1]))
    with torch.no_grad():
        net(torch.rand(1, 3, 48, 80), torch.rand(1, 3, 64, 40))
    assert seen["kv"] == (64 // 8) * (40 // 8)  # style tokens, not content tokens (6·10)
    assert seen["pos"] is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_without_a_gpu_is_refused_up_front(bench, tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device visible"):
        bench.main(["--device", "cuda", "--sizes", "64", "--out", str(tmp_path)])


def test_a_size_below_the_networks_minimum_does_not_skip_the_larger_ones(bench, tmp_path):
    """`--sizes 8 32` (p=8 needs 16 px) or `--train-sizes 32 64` (the style crop needs 64): the
    refused size skipped every larger one as if it had run out of memory."""
    argv = ["--device", "cpu", "--model", *TINY, "--backend", "torch", "--style-size", "64"]
    argv += ["--tasks", "latency", "train", "--sizes", "8", "32", "--train-sizes", "32", "64"]
    argv += ["--train-batch", "1", "--loss", "mse", "--repeats", "1", "--warmup", "0"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    with (tmp_path / "results.csv").open() as f:
        status = {(r["task"], r["content"]): r["status"] for r in csv.DictReader(f)}
    assert "needs at least 16 px" in status["latency", "8"] and status["latency", "32"] == "ok"
    assert "needs at least 64 px" in status["train", "32"] and status["train", "64"] == "ok"


def test_a_value_error_after_a_smaller_size_ran_skips_the_larger_ones(bench, tmp_path, monkeypatch):
    """A block that cannot run in channel parts (mixer=attention) refuses a size past the CUDA kernels'
    32-bit index limit with a ValueError: taken for a side below the minimum, it did not skip the
    larger sizes, each built and refused again."""
    case = bench.inference_case

    def limited(series, net, device, precision, batch, size, style):
        if size >= 64:
            raise ValueError(
                "maps would pass samam.nn.blocks.MAX_BLOCK_ELEMENTS (CUDA kernels index with 32 bits)"
            )
        return case(series, net, device, precision, batch, size, style)

    monkeypatch.setattr(bench, "inference_case", limited)
    argv = ["--device", "cpu", "--model", *TINY, "--backend", "torch", "--style-size", "64"]
    argv += ["--tasks", "latency", "--sizes", "32", "64", "128", "--repeats", "1", "--warmup", "0"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    with (tmp_path / "results.csv").open() as f:
        status = {r["content"]: r["status"] for r in csv.DictReader(f)}
    assert status["32"] == "ok" and "MAX_BLOCK_ELEMENTS" in status["64"]
    assert status["128"].startswith("skipped: a smaller size failed"), status


def test_replot_of_a_record_from_before_peer_style_describes_the_peers_inputs_it_holds(bench, tmp_path):
    """experiments/results/2026-11-27-cpu-stytr2 gave the peers style = content before meta.json
    kept peer_style: --replot wrote '--peer-style same' over rows whose peers had style 512²."""
    rows = [timed_row(bench, "samam", 2.0, content=n) for n in (256, 512)]
    rows += [timed_row(bench, "stytr2", 8.0, content=n, style=n) for n in (256, 512)]
    for r in rows:
        r.update(
            mixer="ssm", backend="torch", min_ms=1.0, img_per_s=1.0, peak_mib=1.0, pixels=r["content"] ** 2
        )
    bench.write_csv(rows, tmp_path / "results.csv")
    meta = {**_meta(), "peers": ["stytr2"], "peer_model": "StyTr2() (published sizes)"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert bench.main(["--replot", str(tmp_path)]) == 0
    peers = next(ln for ln in (tmp_path / "results.md").read_text().splitlines() if ln.startswith("- peers"))
    assert "content and style both n²" in peers and "--peer-style same" not in peers


def test_a_second_run_on_the_same_day_gets_its_own_folder(tmp_path):
    """The default --out, experiments/results/<date>-<device>/, was reused: a second run that day
    replaced the first one's files without a word."""
    free_folder = _load_benchmark().free_folder
    base = tmp_path / "2026-11-28-cpu"
    assert free_folder(base) == base  # nothing there yet
    base.mkdir()
    assert free_folder(base) == base  # an empty folder holds no run
    (base / "results.csv").write_text("size\n")
    assert free_folder(base) == tmp_path / "2026-11-28-cpu-2"
    (tmp_path / "2026-11-28-cpu-2").mkdir()
    (tmp_path / "2026-11-28-cpu-2" / "meta.json").write_text("{}")
    assert free_folder(base) == tmp_path / "2026-11-28-cpu-3"
