"""Suite-wide settings: CPU, offline, one intra-op thread, nothing written outside tmp."""

from __future__ import annotations

import os

# Before torch/numba import: one thread. On a loaded 2-core box two intra-op threads
# made the scan loop 50-120x slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's caches: TORCH_HOME and W&B dirs live in tmp."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("TORCH_HOME", str(root / "torch_home"))
    monkeypatch.setenv("WANDB_DIR", str(root / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(root / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(root / "wandb_config"))
    torch.manual_seed(0)
    yield
