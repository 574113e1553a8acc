"""Training callbacks and the atomic checkpoint writer."""

from __future__ import annotations

import glob
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from samam.fileio import atomic_write
from samam.logging_utils import drop_redone_csv_rows

if TYPE_CHECKING:
    from samam.module import HostCopy

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
        with atomic_write(path, prefix=f".{path.name}.", fsync=True) as f:
            torch.save(checkpoint, f)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # from a killed run
            stale.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class PeriodicCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``every_n_train_steps`` save, at a step that validates, is written
    after that validation instead of before it. Lightning resumes a checkpoint of that step as
    one whose validation has run and skips it: written before, a run killed before its
    validation ended resumed without it (no val/ metrics, sample grid or LossSummary point for
    that step), and with the eval_metrics callback every later evaluation came one validation
    round late. A kill during that validation now resumes from the previous checkpoint.
    (Lightning ≥ 2.5.5 defers some saves the same way; this deferral is our own, so older
    versions, which lack it, do not drop the save.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._save_after_validation = False

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: runs checkpointed by it (before this class) resume its state
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        loop = trainer.fit_loop
        if (
            due
            and not self._should_skip_saving_checkpoint(trainer)
            and not self._should_save_on_train_epoch_end(trainer)  # else on_validation_end saves nothing
            and loop.epoch_loop._should_check_val_fx(loop._data_fetcher)
            and self._validation_has_batches(trainer)
        ):
            self._save_after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._save_after_validation and not trainer.sanity_checking:
            self._save_after_validation = False
            if not self._should_skip_saving_checkpoint(trainer):
                candidates = self._monitor_candidates(trainer)  # now with this validation's metrics
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)
            return
        super().on_validation_end(trainer, pl_module)

    @staticmethod
    def _validation_has_batches(trainer: L.Trainer) -> bool:
        # A validation without batches (data.val_pairs=0) calls no hooks, so no save at its end.
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        val_loop.setup_data()  # as the validation about to run does first (once)
        return not val_loop.skip


def _no_broadcast() -> None:
    """Stands in for Lightning's per-batch SIGTERM broadcast while CheckpointOnStop handles SIGTERM."""


class CheckpointOnStop(Callback):
    """Writes ``dirpath/last.ckpt`` when a run is stopped by SIGTERM (scancel, preemption, a
    SLURM time limit) after its first step, so a requeued or resumed run (``ckpt_path=auto``)
    loses no step.

    The ranks stop together. From the sanity check on, SIGTERM only records the signal
    (Lightning's own handler runs a collective inside the handler, and each rank then stops at
    its own boundary: under DDP a rank left behind in the next step's all-reduce hung with no
    checkpoint). The ranks all-reduce the flag (with any SIGTERM Lightning's handler saw before
    ours was installed) at every training batch, inside StyleTransferModule's all-reduce of its
    losses (one collective per step; another module: one of this callback's own at the batch's
    end), and at the end of every validation batch. (Voted on at the batch's start, a signal
    arriving during a DDP training batch stops the run one batch later than one voted on at its
    end would.) At the end of the batch all of them mark the stop alike, and Lightning raises
    ``SIGTERMException`` at that step boundary on every rank (with gradient accumulation, at
    the batch that completes the optimizer step). This saves there, before Lightning
    tears the strategy down; rank 0 writes. Other exceptions save nothing: the state may be
    mid-step. ``samam.train`` then exits with status 143 (128 + SIGTERM). A signal that
    reaches only rank 0 of processes Lightning launched is forwarded to the others, as
    Lightning does.

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
        self._signalled = False  # SIGTERM reached this process
        self._agreed = False  # the ranks have agreed to stop
        self._installed = False  # our SIGTERM handler replaced Lightning's
        self._trainer: L.Trainer | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._signalled = self._agreed = self._installed = False
        handler = signal.getsignal(signal.SIGUSR2)
        if callable(handler) and handler != self._defer_requeue:
            self._requeue = handler
            signal.signal(signal.SIGUSR2, self._defer_requeue)

    def _install(self, trainer: L.Trainer) -> None:
        # Lightning registers its SIGTERM handler after on_fit_start and restores the original
        # one at teardown (also after a stop): replace it from the sanity check on.
        if not self._installed and threading.current_thread() is threading.main_thread():
            self._trainer = trainer
            signal.signal(signal.SIGTERM, self._on_sigterm)
            # Lightning 2.6 also broadcasts rank 0's flag before every training batch under DDP: a
            # collective and a host wait per step. Under this handler the flag is set only where
            # the ranks agreed to stop (that batch ends the run) or by Lightning's handler before
            # this one (voted on here at the next batch): the broadcast decides nothing.
            loop = trainer.fit_loop.epoch_loop
            if hasattr(loop, "_broadcast_sigterm_tensor"):
                loop._broadcast_sigterm_tensor = _no_broadcast
            self._installed = True

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Record the stop; no collective here (a handler runs between any two instructions)."""
        if not self._signalled:
            log.warning("SIGTERM: stopping at a step boundary, all ranks together, to checkpoint")
            launcher = self._trainer.strategy.launcher if self._trainer is not None else None
            if launcher is not None:
                launcher.kill(signum)  # processes Lightning launched (a no-op elsewhere)
        self._signalled = True

    def _agree_on_stop(self, trainer: L.Trainer, votes: HostCopy | None = None) -> None:
        """Every rank calls this at the same batch: stop everywhere if any rank was signalled.
        ``votes``: the ranks' votes, already summed by the training step's all-reduce."""
        if not self._installed or self._agreed:
            return
        stop = self._signalled or trainer.received_sigterm  # before ours: Lightning's handler
        if votes is not None:
            stop = votes.item() > 0  # the votes taken at this step's all-reduce, the same on every rank
        elif (
            trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            flag = torch.tensor([int(stop)], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop and trainer.fit_loop.epoch_loop._should_accumulate():
            # Midway through an accumulated step (trainer.accumulate_grad_batches): no checkpoint
            # holds its gradients, and the resumed data stream starts at a step. Stop at the batch
            # that completes it (the flag that set `stop` stays set; every rank defers alike).
            return
        if stop:
            # Lightning raises SIGTERMException at the end of this step (or validation batch).
            trainer._signal_connector.received_sigterm = self._agreed = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # StyleTransferModule sums the votes with its losses: one all-reduce per step, not two.
        pl_module.stop_vote = self._signalled or trainer.received_sigterm

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        votes = getattr(pl_module, "stop_votes", None)  # None: another module, or one process
        pl_module.stop_votes = None
        self._agree_on_stop(trainer, votes)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._agree_on_stop(trainer)

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
        # SIGTERM stays ours (a second one after the save is only recorded); Lightning's
        # teardown restores the handler from before the fit.
        if self._trainer is not None:
            vars(self._trainer.fit_loop.epoch_loop).pop("_broadcast_sigterm_tensor", None)
        self._trainer = None

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


class DropRedoneCsvRows(Callback):
    """Added by ``samam.train`` to a run resumed from its own folder: once the checkpoint is restored
    (weights, optimizer, loops) and before the first new row is logged, removes the CSV rows of the
    steps past it, which this run trains again (:func:`samam.logging_utils.drop_redone_csv_rows`).
    Trimmed before the load, a resume that then failed (a mismatched or damaged checkpoint, an
    out-of-memory) had lost those rows, and their steps were never trained again."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step  # the checkpoint's
        for lg in trainer.loggers:
            if isinstance(lg, CSVLogger) and (n := drop_redone_csv_rows(lg.root_dir, step)):
                log.info(
                    "csv: dropped %d rows of steps after %d from %s: they are trained again",
                    n,
                    step,
                    lg.root_dir,
                )


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
        self._batches: list[torch.Tensor] = []  # this step's so far (trainer.accumulate_grad_batches)
        self._step_before: int | None = None  # trainer.global_step as this batch started

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        value = getattr(pl_module, "last_losses", {}).get(self.key)  # detached, on the device
        if value is not None:
            # A step is the mean of its batches: counted per batch, an accumulated step's batches,
            # all from the same weights, read as training progress. Lightning stepped the optimizer
            # after this batch (it ended an accumulation window, or the run) iff the step moved.
            self._batches.append(value)
            if trainer is not None and trainer.global_step == self._step_before:
                return
            value = torch.stack(self._batches).mean() if len(self._batches) > 1 else value
            self._batches = []
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

    @property
    def averaged(self) -> int:
        """Steps in each of the start and end means: ``window``, fewer in a run of under 2 windows."""
        return min(self.window, self.steps // 2)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.steps >= 2:
            w = self.averaged
            out["train_start"] = sum(float(v) for v in self.first[:w]) / w
            out["train_end"] = sum(float(v) for v in list(self.last)[-w:]) / w
        if len(self.val) >= 2:
            out["val_start"], out["val_end"] = self.val[0][1], self.val[-1][1]
            out["val_start_step"], out["val_end_step"] = float(self.val[0][0]), float(self.val[-1][0])
        return out


class LossProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar showing ``train/loss``, read when the bar refreshes (every
    ``refresh_rate`` batches). Logged with ``prog_bar=True`` instead, the loss is read on the host
    at every batch end (Lightning collects the bar's values there): under CUDA, a wait for the
    step to finish before the next one can be queued."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "last_losses", {}).get("loss")  # detached, on the device
        if loss is not None:
            metrics["train/loss"] = loss.item()
        return metrics
