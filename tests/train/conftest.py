"""Helpers for the training tests: composed configs shrunk to seconds-long CPU runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def tiny_overrides(out: Path, demo_root: Path) -> list[str]:
    """Any experiment -> tiny network, 64-px crops (the smallest style SaMam accepts), random VGG, CPU, a few steps."""
    return [
        "model=tiny",
        "trainer=cpu",
        "logger=csv",
        "data=demo",
        f"data.root={demo_root}",
        "data.batch_size=2",
        "data.crop=64",
        "data.resize=80",
        "data.val_pairs=2",
        "data.val_size=64",
        "loss.vgg=random",
        f"paths.output_dir={out}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.progress=null",
        "callbacks.checkpoint.every_n_train_steps=2",
    ]


def compose_cfg(overrides: list[str]) -> DictConfig:
    # Imported here: a conftest that fails to import stops pytest before any test, and the GPU
    # machine gpu_check.sh runs its tests on has no Hydra (test_data.py's GPU test needs none).
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def run_train(args: list[str], cwd: Path, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """python train.py <args> in a subprocess with the suite's environment."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small generated demo set (2 style images per generator), shared by the session."""
    from samam.demo_data import VERSION, generate

    root = tmp_path_factory.mktemp("demo_data")
    generate(root, styles_per_kind=1)
    (root / f".complete-v{VERSION}").touch()
    return root


@pytest.fixture()
def tiny(demo_root, tmp_path):
    """tiny(out_dir=tmp_path) -> the shrinking overrides for a run writing into out_dir."""

    def make(out: Path | None = None) -> list[str]:
        return tiny_overrides(tmp_path if out is None else out, demo_root)

    return make


@pytest.fixture()
def compose():
    return compose_cfg


@pytest.fixture()
def train_subprocess():
    return run_train
