"""Training callbacks and the atomic checkpoint writer."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the target folder, fsync, then os.replace: a reader (or a run
    killed mid-write) sees the old checkpoint or the new one, never half of one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class LossSummary(Callback):
    """Remembers the style loss at the start and end: on the fixed validation pairs and as the mean of
    the first/last ``window`` training steps. ``samam.train`` prints the summary."""

    def __init__(self, key: str = "loss_style", window: int = 10) -> None:
        self.key, self.window = key, window
        self.train: list[float] = []
        self.val: list[tuple[int, float]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        value = trainer.callback_metrics.get(f"train/{self.key}")
        if value is not None:
            self.train.append(float(value))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(f"val/{self.key}")
        if value is not None and not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(value)))

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if len(self.train) >= 2:
            w = min(self.window, len(self.train) // 2)
            out["train_start"] = sum(self.train[:w]) / w
            out["train_end"] = sum(self.train[-w:]) / w
        if len(self.val) >= 2:
            out["val_start"], out["val_end"] = self.val[0][1], self.val[-1][1]
            out["val_start_step"], out["val_end_step"] = float(self.val[0][0]), float(self.val[-1][0])
        return out
