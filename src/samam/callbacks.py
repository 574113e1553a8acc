"""Training callbacks and the atomic checkpoint writer."""

from __future__ import annotations

import glob
import logging
import os
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the target folder, fsync, then os.replace: a reader (or a run
    killed mid-write) sees the old checkpoint or the new one, never half of one. A temp file that
    a SIGKILL left behind is removed by the next save of the same file."""

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
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # from a killed run
            stale.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class CheckpointOnStop(Callback):
    """Writes ``dirpath/last.ckpt`` when a run is stopped by SIGTERM (scancel, preemption, a
    SLURM time limit) after its first step, so a requeued or resumed run (``ckpt_path=auto``)
    loses no step.

    Lightning turns SIGTERM into ``SIGTERMException`` at the next step boundary; this saves
    there, before Lightning tears the strategy down. Rank 0 writes and no rank waits for the
    others: under DDP the ranks may stop at different boundaries, and a barrier would hang.
    Other exceptions save nothing: the state may be mid-step. ``samam.train`` then exits with
    status 143 (128 + SIGTERM).

    submitit (``hydra/launcher=slurm``) requeues on SIGUSR2 and exits at once, mid-step. When a
    Python handler for SIGUSR2 is installed at fit start, it is deferred: the signal becomes a
    SIGTERM for Lightning (save at the step boundary, as above), and ``after_stop()`` (called by
    ``samam.train``) then runs the deferred handler, which requeues the job. If no boundary
    comes within ``max_defer_s`` (a long evaluation hook), the handler runs anyway, from a
    timer thread, so the job is still requeued before SLURM's kill."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt", max_defer_s: float = 60.0) -> None:
        self.dirpath, self.filename, self.max_defer_s = dirpath, filename, max_defer_s
        self._requeue: Callable[[int, FrameType | None], Any] | None = None
        self._requeue_pending = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        handler = signal.getsignal(signal.SIGUSR2)
        if callable(handler) and handler != self._defer_requeue:
            self._requeue = handler
            signal.signal(signal.SIGUSR2, self._defer_requeue)

    def _defer_requeue(self, signum: int, frame: FrameType | None) -> None:
        if self._timer is not None and self._timer.is_alive():
            return  # a second SIGUSR2: the first one's stop and timer are under way
        log.warning("SIGUSR2 (requeue): stopping at the next step boundary to checkpoint first")
        with self._lock:
            self._requeue_pending = True
        self._timer = threading.Timer(self.max_defer_s, self.after_stop)
        self._timer.daemon = True
        self._timer.start()
        os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()  # the boundary came: the requeue waits for the checkpoint (after_stop)
        try:
            if not isinstance(exception, SIGTERMException) or trainer.global_step == 0:
                return
            path = Path(self.dirpath) / self.filename
            # Trainer.save_checkpoint minus its closing barrier (see the class docstring).
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer.strategy.save_checkpoint(checkpoint, path)
            if trainer.is_global_zero:
                log.warning("stopped by SIGTERM at step %d; saved %s", trainer.global_step, path)
        finally:
            self._restore_handler()  # after the save (Lightning skips teardown on this path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._requeue is not None and signal.getsignal(signal.SIGUSR2) == self._defer_requeue:
            signal.signal(signal.SIGUSR2, self._requeue)

    def after_stop(self) -> None:
        """Run the SIGUSR2 handler deferred by a stop, once (submitit: requeue this job, then exit).
        Called by ``samam.train`` after the stop, and by the timer if no stop comes in time; the
        main thread waits for a requeue the timer has already started, so exiting cannot cut it."""
        timer = self._timer
        if timer is not None and threading.current_thread() is not timer:
            timer.cancel()
            timer.join()
        with self._lock:
            pending, self._requeue_pending = self._requeue_pending, False
        if pending and self._requeue is not None:
            self._requeue(signal.SIGUSR2, None)


class LossSummary(Callback):
    """Remembers the style loss at the start and end: on the fixed validation pairs and as the mean of
    the first/last ``window`` training steps. ``samam.train`` prints the summary.

    Training values stay device tensors until the summary (or a checkpoint) needs them, so no step
    waits for the device; the state is checkpointed, so a resumed run summarises the whole run."""

    def __init__(self, key: str = "loss_style", window: int = 10) -> None:
        self.key, self.window = key, window
        self.steps = 0
        self.first: list[torch.Tensor | float] = []  # the first `window` steps' values
        self.last: deque[torch.Tensor | float] = deque(maxlen=window)  # the latest `window`
        self.val: list[tuple[int, float]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        value = getattr(pl_module, "last_losses", {}).get(self.key)  # detached, on the device
        if value is not None:
            self.steps += 1
            if len(self.first) < self.window:
                self.first.append(value)
            self.last.append(value)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(f"val/{self.key}")
        if value is not None and not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(value)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "first": [float(v) for v in self.first],
            "last": [float(v) for v in self.last],
            "val": list(self.val),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", 0))
        self.first = list(state_dict.get("first", []))
        self.last = deque(state_dict.get("last", []), maxlen=self.window)
        self.val = [(int(s), float(v)) for s, v in state_dict.get("val", [])]

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.steps >= 2:
            w = min(self.window, self.steps // 2)
            out["train_start"] = sum(float(v) for v in self.first[:w]) / w
            out["train_end"] = sum(float(v) for v in list(self.last)[-w:]) / w
        if len(self.val) >= 2:
            out["val_start"], out["val_end"] = self.val[0][1], self.val[-1][1]
            out["val_start_step"], out["val_end_step"] = float(self.val[0][0]), float(self.val[-1][0])
        return out
