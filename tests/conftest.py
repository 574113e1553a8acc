"""Suite-wide settings: CPU, offline, one intra-op thread, nothing written outside tmp."""

from __future__ import annotations

import itertools
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


# Scan orders of one's own (model.scan=<module>:<function>), well and badly formed.
SCAN_ORDERS = """
import torch

from samam.ops.scan_orders import zigzag_orders


def zigzag_again(h, w):
    return zigzag_orders(h, w)


def diagonal(h, w):  # anti-diagonals from the top-left corner, and the same path from the others
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    path = torch.argsort(((r + c) * h + r).reshape(-1))
    g = torch.arange(h * w).view(h, w)
    return torch.stack([g.flip(f).reshape(-1)[path] for f in ((), (0, 1), (1,), (0,))])


def three(h, w):
    return zigzag_orders(h, w)[:3]


def int32(h, w):
    return zigzag_orders(h, w).int()


def repeated(h, w):
    order = zigzag_orders(h, w)
    order[:, 0] = order[:, -1]
    return order


def shifted(h, w):
    return zigzag_orders(h, w) + 1


def listed(h, w):
    return zigzag_orders(h, w).tolist()


def square_only(h, w):
    return zigzag_orders(h, h)


def failing(h, w):
    raise KeyError(f"no table for {h}x{w}")


def up_to_20_tokens(h, w):  # passes the small grids tried at construction
    if h * w > 20:
        raise RuntimeError("my table stops at 20 tokens")
    return zigzag_orders(h, w)


NOT_A_FUNCTION = 3
"""
_SCAN_MODULES = itertools.count()


@pytest.fixture()
def scan_module(tmp_path, monkeypatch) -> str:
    """The name of an importable module holding SCAN_ORDERS; a new name for each test, as
    samam.ops.scan_orders.scan_builder keeps what it resolved per name."""
    name = f"my_scan_orders_{next(_SCAN_MODULES)}"
    (tmp_path / "orders").mkdir()
    (tmp_path / "orders" / f"{name}.py").write_text(SCAN_ORDERS)
    monkeypatch.syspath_prepend(tmp_path / "orders")
    return name


@pytest.fixture()
def refuse_files_in(monkeypatch):
    """``refuse_files_in(folder, errno_code)``: creating a temp file in ``folder`` fails with that
    error, as on a folder without write permission or a read-only mount (root writes anywhere)."""
    import tempfile
    from pathlib import Path

    def refuse(folder: Path, code: int) -> None:
        real = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == folder:
                raise OSError(code, os.strerror(code), str(folder))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    return refuse
