"""experiments/bench_scan.py: each kernel is timed only on the device it runs on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from samam.ops.selective_scan import numba_available

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_a_kernel_of_another_device_gets_a_row_instead_of_a_crash():
    """`--device cuda` with the default backends (numba, torch) stopped at numba's CPU-only
    error after the header. Shown with the meta device, which runs no kernel either: numba's
    row says where it runs, the pure-torch scan is still timed."""
    cmd = [sys.executable, str(REPO / "experiments" / "bench_scan.py"), "--device", "meta", "--tokens", "16"]
    cmd += ["--channels", "8", "--groups", "2", "--state", "4", "--repeats", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split(" | ")[0]: line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert "runs on cpu only" in rows["| numba"]
    assert rows["| torch"].split(" | ")[2] == "1"  # timed, with 1 thread


def test_device_cuda_without_cuda_is_refused_before_the_table():
    """On a machine without CUDA, `--device cuda` printed the table's header and then died in a
    traceback from torch's CUDA initialisation (benchmark.py refuses it in one line)."""
    cmd = [sys.executable, str(REPO / "experiments" / "bench_scan.py"), "--device", "cuda", "--tokens", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "--device cuda: no CUDA device visible" in proc.stderr and "Traceback" not in proc.stderr
    assert "| backend" not in proc.stdout
