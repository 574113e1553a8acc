"""experiments/benchmark.py runs end to end on a tiny network (and tiny StyTr² peers) and writes its outputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from tiny import TINY as TINY_PRESET
from torch import nn

REPO = Path(__file__).resolve().parents[1]
TINY = [f"{k}={v}" for k, v in TINY_PRESET.items()]  # --model overrides


def test_benchmark_writes_csv_markdown_and_plot(tmp_path):
    out = tmp_path / "bench"
    cmd = [
        sys.executable, str(REPO / "experiments" / "benchmark.py"), "--device", "cpu", "--model", *TINY,
        "--mixers", "ssm", "attention", "--backend", "torch", "--sizes", "64", "96",
        "--throughput-sizes", "64", "--throughput-batch", "2", "--train-sizes", "64", "--train-batch", "2",
        "--style-size", "64", "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out), "--matmul-precision", "high",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "load average" in proc.stdout and "torch" in proc.stdout

    with (out / "results.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    expected = {"impl", "mixer", "backend", "precision", "task", "batch", "content", "pixels", "median_ms"}
    expected |= {"min_ms", "repeats", "img_per_s", "peak_mib", "mem_kind", "speedup_vs_release", "status"}
    assert expected <= set(reader.fieldnames)
    cases = {(r["mixer"], r["task"], r["batch"], r["content"]) for r in rows}
    for mixer in ("ssm", "attention"):
        assert {(mixer, "latency", "1", "64"), (mixer, "latency", "1", "96")} <= cases
        assert {(mixer, "throughput", "2", "64"), (mixer, "train", "2", "64")} <= cases
    assert all(r["status"] == "ok" for r in rows), [(r["mixer"], r["task"], r["status"]) for r in rows]
    assert all(float(r["median_ms"]) > 0 and r["repeats"] == "1" for r in rows)

    md = (out / "results.md").read_text()
    assert "| series | task | batch | content | median ms | min ms | img/s | peak MiB | status |" in md
    assert "vs release" not in md  # no release timed in this run
    assert "time slope" in md and "samam attention" in md
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "- fp32 math: matmul precision high; cuDNN TF32 convolutions on" in md

    # --replot rebuilds the table and the plot from the CSV and meta.json alone
    (out / "scaling.png").unlink()
    (out / "results.md").write_text("")
    assert _load_benchmark().main(["--replot", str(out)]) == 0
    assert (out / "results.md").read_text() == md
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "meta.json").read_text())["float32_matmul_precision"] == "high"


def _load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark", REPO / "experiments" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def timed_row(bench, impl, ms, batch=1, precision="fp32", task="latency", content=256, style=256):
    """A results row of ``impl`` that took ``ms`` (every other field empty)."""
    r = dict.fromkeys(bench.FIELDS, "")
    r.update(impl=impl, task=task, batch=batch, content=content, style=style, precision=precision)
    return {**r, "median_ms": ms, "status": "ok"}


def test_presets_overrides_and_slope():
    bench = _load_benchmark()
    kwargs = bench.model_kwargs("tiny", ["d_state=8", "scm=false"])
    assert kwargs["embed_dim"] == 32 and kwargs["d_state"] == 8 and kwargs["scm"] is False
    with pytest.raises(SystemExit, match="unknown SaMam arguments"):
        bench.model_kwargs(None, ["width=3"])
    assert bench.fit_slope([1e4, 1e5, 1e6], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert bench.fit_slope([1e4, 1e6], [1.0, 1e4]) == pytest.approx(2.0)
    assert bench.fit_slope([1e4], [1.0]) is None


PEER_TINY = ["dim=32", "heads=2", "ffn=64", "encoder_layers=1", "decoder_layers=1", "decoder_width=16"]


def test_benchmark_times_stytr2_peers_in_the_same_run(tmp_path):
    out = tmp_path / "bench"
    cmd = [
        sys.executable, str(REPO / "experiments" / "benchmark.py"), "--device", "cpu", "--model", *TINY,
        "--backend", "torch", "--tasks", "latency", "train", "--sizes", "72", "96", "--train-sizes", "72",
        "--train-batch", "2", "--loss", "mse", "--style-size", "64", "--repeats", "1", "--warmup", "0",
        "--threads", "1", "--peers", "stytr2", "stytr2-sdpa", "--peer-model", *PEER_TINY, "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with (out / "results.csv").open() as f:
        rows = {(r["impl"], r["task"], r["content"]): r for r in csv.DictReader(f)}
    for impl, backend in (("stytr2", "mha"), ("stytr2-sdpa", "sdpa")):
        for size in ("72", "96"):
            r = rows[(impl, "latency", size)]
            assert (r["mixer"], r["backend"], r["status"]) == ("attention", backend, "ok")
            assert r["style"] == "64"  # --peer-style same (default): the peers get our style size
        assert rows[(impl, "train", "72")]["status"] == "skipped: peers are timed for inference only"
    for size in ("72", "96"):
        ours, mha, sdpa = (rows[(impl, "latency", size)] for impl in ("samam", "stytr2", "stytr2-sdpa"))
        assert ours["style"] == "64"
        ratio = float(mha["median_ms"]) / float(ours["median_ms"])
        assert float(ours["speedup_vs_stytr2"]) == pytest.approx(ratio, rel=1e-2)
        ratio = float(sdpa["median_ms"]) / float(ours["median_ms"])
        assert float(ours["speedup_vs_stytr2_sdpa"]) == pytest.approx(ratio, rel=1e-2)
        assert float(sdpa["speedup_vs_stytr2"]) > 0 and mha["speedup_vs_stytr2"] == ""
        assert ours["speedup_vs_release"] == ""
    assert rows[("samam", "train", "72")]["status"] == "ok"
    assert rows[("samam", "train", "72")]["speedup_vs_stytr2"] == ""  # no peer train row to compare

    md = (out / "results.md").read_text()
    assert "| peak MiB | vs StyTr² | vs StyTr² sdpa | status |" in md and "vs release" not in md
    assert "style 64² as ours (--peer-style same)" in md and "decoder_width=16" in md
    assert "| stytr2 attention/mha fp32 | 72², 96² |" in md  # its slope row
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_guards_skip_a_quadratic_peer_before_it_runs(monkeypatch):
    bench = _load_benchmark()
    args = bench.build_parser().parse_args(["--device", "cpu", "--peers", "stytr2"])
    memory = types.SimpleNamespace(kind="rss_hwm_delta", extra_call=True)
    ctx = bench.Context(args, torch.device("cpu"), memory, None, "not timed", 10.0, t_start=0.0)
    monkeypatch.syspath_prepend(str(REPO / "experiments"))  # where the script finds stytr2.py
    (peer,) = bench.peer_series(["stytr2"], {}, torch.device("cpu"))  # built only when a case runs

    def run(history):  # net=None: any case that is not skipped fails loudly
        return bench.run_case(ctx, peer, None, "fp32", "latency", 1, 1024, history)

    # One point, no measured slope: a peer is assumed quadratic, 4 s at 512² → ~64 s at 1024².
    row = run(bench.History(points=[(512 * 512, 4.0)]))
    assert row["status"] == "skipped: ~64 s per call predicted > --time-limit 10"
    assert row["style"] == 256  # --peer-style same: our style size
    # Memory on CPU: 1 GiB at 512² → ≥ 16 GiB at 1024², over 70% of the (pretended) 10 GiB free.
    monkeypatch.setattr(bench, "available_mib", lambda: 10240.0)
    row = run(bench.History(mem_points=[(512 * 512, 1024.0)]))
    assert row["status"].startswith("skipped: ~16384 MiB predicted > 70% of 10240 MiB")


def test_cuda_graph_series_needs_cuda():
    bench = _load_benchmark()
    with pytest.raises(SystemExit, match="--cuda-graph needs --device cuda"):
        bench.main(["--device", "cpu", "--cuda-graph", "--model", *TINY, "--sizes", "64"])


@pytest.mark.gpu
def test_gpu_cuda_graph_series_rows(tmp_path):
    bench = _load_benchmark()
    out = tmp_path / "bench"
    args = ["--device", "cuda", "--cuda-graph", "--backend", "torch", "--model", *TINY, "--sizes", "64", "96"]
    args += [
        "--throughput-sizes",
        "64",
        "--throughput-batch",
        "2",
        "--train-sizes",
        "64",
        "--train-batch",
        "2",
    ]
    args += ["--style-size", "64", "--repeats", "2", "--warmup", "1", "--out", str(out)]
    assert bench.main(args) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    graph = [r for r in rows if r["backend"].endswith("+graph")]
    assert {(r["task"], r["status"]) for r in graph} == {
        ("latency", "ok"),
        ("throughput", "ok"),
        ("train", "skipped: CUDA-graph series are timed for inference only"),
    }
    assert all(r["backend"] == "torch" for r in rows if r not in graph)


def test_first_warmup_call_does_not_set_the_number_of_timed_calls(monkeypatch):
    """A slow first call (compilation, graph capture) is followed by the steady-state count."""
    benchmark = _load_benchmark()
    times = iter([30.0, 0.5] + [0.5] * 20)  # first call compiles; then 0.5 s per call
    monkeypatch.setattr(benchmark, "time_once", lambda fn, device: next(times))
    timed = benchmark.time_calls(lambda: None, torch.device("cpu"), warmup=3, repeats=10, case_seconds=4)
    assert timed == [0.5] * 8  # 3 warm-ups, then 4 s // 0.5 s = 8 timed calls
    slow = iter([60.0] * 5)  # every call slow: one warm-up after the first, one timed call
    monkeypatch.setattr(benchmark, "time_once", lambda fn, device: next(slow))
    assert benchmark.time_calls(lambda: None, torch.device("cpu"), warmup=3, repeats=10, case_seconds=4) == [
        60.0
    ]
    # warmup=1 (the CPU default): the one-off first call must not cut the timed calls either
    once = iter([30.0] + [0.01] * 5)
    monkeypatch.setattr(benchmark, "time_once", lambda fn, device: next(once))
    assert (
        benchmark.time_calls(lambda: None, torch.device("cpu"), warmup=1, repeats=3, case_seconds=1)
        == [0.01] * 3
    )
    zero = iter([0.4] * 5)  # no warm-up: the timed calls alone keep to case_seconds
    monkeypatch.setattr(benchmark, "time_once", lambda fn, device: next(zero))
    assert (
        benchmark.time_calls(lambda: None, torch.device("cpu"), warmup=0, repeats=10, case_seconds=1)
        == [0.4] * 2
    )


def test_a_failing_network_gives_rows_and_the_next_series_still_runs(tmp_path, monkeypatch):
    """A release that cannot import, or raises something other than RuntimeError, is an error
    row per case; an interrupted run writes its files and exits 130, not 0."""
    bench = _load_benchmark()
    argv = ["--device", "cpu", "--tasks", "latency", "--sizes", "64", "96", "--repeats", "1", "--warmup", "0"]
    args = bench.build_parser().parse_args(argv)
    cpu = torch.device("cpu")
    ctx = bench.Context(args, cpu, bench.PeakMemory(cpu), None, "-", 0.0, t_start=0.0)

    def cannot_import() -> nn.Module:
        raise ModuleNotFoundError("No module named 'mamba_ssm'")

    class Refuses(nn.Module):
        def forward(self, content, style):
            raise AssertionError("release says no")

    rows: list[dict] = []
    bench.run_series(ctx, bench.Series("release", "ssm", "mamba", cannot_import), "fp32", rows, lambda: None)
    bench.run_series(ctx, bench.Series("release", "ssm", "torch", Refuses), "fp32", rows, lambda: None)
    assert [r["status"] for r in rows] == [
        "error: ModuleNotFoundError: No module named 'mamba_ssm' (building the network)",
        "error: ModuleNotFoundError: No module named 'mamba_ssm' (building the network)",
        "error: AssertionError: release says no",
        "skipped: a smaller size failed (error: AssertionError: release says no)",
    ]

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_series", interrupt)
    before = signal.getsignal(signal.SIGTERM)
    assert bench.main([*argv, "--model", *TINY, "--out", str(tmp_path)]) == 130
    assert (tmp_path / "results.md").is_file()
    # its SIGTERM-as-Ctrl-C handler is gone again: it made a later SIGTERM in the same process
    # (a training run's stop) a KeyboardInterrupt
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_training_step_is_timed_without_the_input_check_as_training_runs_it(monkeypatch):
    """StyleTransferModule turns the network's NaN/Inf input check off (it reads the inputs on the
    host: on CUDA a wait for the device at every step); the timed step does too, and inference
    keeps it, as stylize does."""
    from samam.nn.samam import SaMam

    bench = _load_benchmark()
    argv = ["--device", "cpu", "--tasks", "train", "--train-sizes", "64", "--train-batch", "1"]
    args = bench.build_parser().parse_args([*argv, "--style-size", "64", "--repeats", "1", "--warmup", "0"])
    cpu = torch.device("cpu")
    ctx = bench.Context(
        args, cpu, bench.PeakMemory(cpu), lambda *out: sum(t.mean() for t in out), "-", 0.0, 0.0
    )
    net, seen, check = SaMam(**TINY_PRESET), [], SaMam._check_values
    monkeypatch.setattr(
        SaMam, "_check_values", lambda self, *a: seen.append(self.check_finite) or check(self, *a)
    )
    rows: list[dict] = []
    bench.run_series(ctx, bench.Series("samam", "ssm", "torch", lambda: net), "fp32", rows, lambda: None)
    assert [r["status"] for r in rows] == ["ok"]
    assert seen and not any(seen)
    assert net.check_finite  # on again for the inference cases


def test_peer_ratios_compare_equal_inputs_only():
    """--peer-style content gives the peer style = content: no ratio where our style differs."""
    bench = _load_benchmark()
    rows = [
        timed_row(bench, "samam", 2.0, content=256, style=256),
        timed_row(bench, "stytr2", 6.0, content=256, style=256),
        timed_row(bench, "samam", 4.0, content=512, style=256),
        timed_row(bench, "stytr2", 30.0, content=512, style=512),
    ]
    bench.add_speedups(rows)
    assert [r["speedup_vs_stytr2"] for r in rows] == [3.0, "", "", ""]


def test_slope_of_the_largest_sizes_ignores_fixed_costs():
    bench = _load_benchmark()
    rows = [
        {"impl": "samam", "mixer": "ssm", "backend": "mamba", "precision": "fp32", "task": "latency"}
        | {"status": "ok", "pixels": p, "median_ms": ms, "peak_mib": p / 10}
        for p, ms in ((1e4, 1.0), (4e4, 1.0), (16e4, 4.0), (64e4, 16.0))  # launch-bound at the smallest
    ]
    (fit,) = bench.scaling(rows).values()
    assert fit["time_slope_top3"] == pytest.approx(1.0) and fit["time_slope"] < 0.9
    assert bench.scaling(rows[:3])["samam ssm/mamba fp32"]["time_slope_top3"] is None  # all of them anyway
