"""experiments/benchmark.py runs end to end on a tiny network and writes its three outputs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "embed_dim=32", "style_dim=16", "d_state=4", "encoder_depth=1", "decoder_groups=1", "decoder_depth=1",
    "loe_compress=4", "loe_squeeze=4",
]  # fmt: skip


def test_benchmark_writes_csv_markdown_and_plot(tmp_path):
    out = tmp_path / "bench"
    cmd = [
        sys.executable, str(REPO / "experiments" / "benchmark.py"), "--device", "cpu", "--model", *TINY,
        "--mixers", "ssm", "attention", "--backend", "torch", "--sizes", "64", "96",
        "--throughput-sizes", "64", "--throughput-batch", "2", "--train-sizes", "64", "--train-batch", "2",
        "--style-size", "64", "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out),
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
    assert (out / "meta.json").is_file()


def _load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark", REPO / "experiments" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_presets_overrides_and_slope():
    import pytest

    bench = _load_benchmark()
    kwargs = bench.model_kwargs("tiny", ["d_state=8", "scm=false"])
    assert kwargs["embed_dim"] == 32 and kwargs["d_state"] == 8 and kwargs["scm"] is False
    with pytest.raises(SystemExit, match="unknown SaMam arguments"):
        bench.model_kwargs(None, ["width=3"])
    assert bench.fit_slope([1e4, 1e5, 1e6], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert bench.fit_slope([1e4, 1e6], [1.0, 1e4]) == pytest.approx(2.0)
    assert bench.fit_slope([1e4], [1.0]) is None
