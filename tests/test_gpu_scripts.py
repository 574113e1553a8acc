"""The one-shot GPU scripts run their phases and fail cleanly without CUDA (so the scarce GPU
slot is not lost to a shell error), writing their log with the summary at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_compile.sh"])
def test_script_parses(script):
    subprocess.run(["bash", "-n", str(REPO / "experiments" / script)], check=True)


def test_gpu_check_without_cuda_runs_every_phase_and_fails_cleanly(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    log = (tmp_path / "gpu_check.log").read_text()
    for phase in ("machine", "GPU-marked tests", "benchmark on CUDA", "8192²", "summary"):
        assert f"=== {phase}" in log, phase
    mamba_phase = log.split("=== samam sees mamba-ssm's kernel", 1)[1].split("===", 1)[0]
    assert "AssertionError: mamba_ssm" in mamba_phase, mamba_phase  # refused for the stated reason,
    assert "ImportError" not in mamba_phase, mamba_phase  # not because the check itself broke
    summary = log.split("=== summary", 1)[1]
    assert "mamba=1" in summary and "benchmark=1" in summary  # no kernel, no CUDA: refused, not passed
    assert "gpu_check.log" in summary  # the log ends with the listing of $OUT: flushed before exit


@pytest.mark.slow  # ~25 s on 2 cores: the whole script, its pytest collecting every GPU test file
def test_gpu_check_runs_the_gpu_tests_on_a_machine_without_hydra_wandb_or_lpips(tmp_path):
    """The GPU machine has torch, lightning and torchmetrics but no Hydra, W&B or lpips
    (/work/shared/ENV.md): tests/train/conftest.py imported Hydra at the top, and pytest stopped
    at loading it (exit 4) before running a single GPU test of any file."""
    block = tmp_path / "block"
    for name in ("hydra", "omegaconf", "wandb", "lpips"):
        (block / name).mkdir(parents=True)
        (block / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\")\n"
        )
    py = tmp_path / "python"  # the interpreter as the GPU machine's: the four unimportable
    py.write_text(
        f'#!/usr/bin/env bash\nPYTHONPATH={block}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"\n'
    )
    py.chmod(0o755)
    out = tmp_path / "out"
    # hydra-core's pytest plugin is installed here, not there
    env = {**os.environ, "OUT": str(out), "PY": str(py), "OMP_NUM_THREADS": "1"}
    env["PYTEST_ADDOPTS"] = "-p no:hydra_pytest"
    subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh")], env=env, capture_output=True, timeout=300
    )
    log = (out / "gpu_check.log").read_text()
    tests_phase = log.split("=== GPU-marked tests", 1)[1].split("=== benchmark on CUDA", 1)[0]
    assert "while loading conftest" not in tests_phase, tests_phase
    assert "pytest=0" in log.split("=== summary", 1)[1], tests_phase  # every GPU test skipped: no CUDA


def test_a_short_deadline_cuts_the_benchmarks_not_the_gpu_tests(tmp_path):
    """GPU_CHECK_SECONDS under the default (less device time left): every phase kept room for
    the caps of the phases after it, so the GPU tests, run first so that a short slot still has
    them, got 10 s (too little to import their modules) while the benchmark kept most of its cap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "timeouts"
    timeout = bin_dir / "timeout"  # records each phase's limit and runs nothing
    timeout.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    py = bin_dir / "python"  # every other Python call of the script: done at once
    py.write_text("#!/usr/bin/env bash\n")
    for f in (timeout, py):
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    env.update(PY=str(py), GPU_CHECK_SECONDS="300")
    subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh")], env=env, capture_output=True, timeout=60
    )
    limits = []  # "[--preserve-status] -s INT -k 10 <seconds> <python> <script | -m pytest> ..."
    for line in calls.read_text().splitlines():
        args = line.split()[line.split().index("-k") + 2 :]
        limits.append(("pytest" if args[2:4] == ["-m", "pytest"] else args[2], int(args[0])))
    assert [what for what, _ in limits] == ["pytest", "experiments/benchmark.py", "experiments/benchmark.py"]
    assert limits[0][1] == 110  # the GPU tests' cap
    assert limits[1][1] < 260  # the CUDA benchmark is cut instead
