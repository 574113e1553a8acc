"""experiments/ab_cpu.py: each side times the tree it names, and a side that fails says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ab_cpu(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "experiments" / "ab_cpu.py"), "--rounds", "1", "--repeats", "1", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_a_folder_without_the_package_is_refused(tmp_path):
    """`--old /tmp/base` for `/tmp/base/src` put a folder without samam on PYTHONPATH, so that
    side imported the venv's installed samam: the run timed one tree against itself (ratio ~1)."""
    (tmp_path / "src" / "samam").mkdir(parents=True)
    proc = ab_cpu("--old", str(tmp_path), "--new", str(REPO / "src"), "--workload", "inf64")
    assert proc.returncode != 0
    assert f"--old {tmp_path}: no samam/__init__.py there" in proc.stderr
    assert "round 0" not in proc.stdout


def test_a_side_that_fails_shows_its_error():
    """A workload one tree cannot run (train32: SaMam needs 64-px styles) stopped the script with
    `CalledProcessError: ... returned non-zero exit status 1` and the child's message discarded."""
    src = str(REPO / "src")
    proc = ab_cpu("--old", src, "--new", src, "--workload", "train32")
    assert proc.returncode != 0
    assert f"round 0 old ({src}) failed" in proc.stderr
    assert "style is 32x32 px; SaMam (patch size 8) needs at least 64 px per side" in proc.stderr
