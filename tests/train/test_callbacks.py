"""The training callbacks on their own, with a stand-in trainer: what a stop saves, the SIGUSR2
handler's lifetime and the deferred requeue, LossSummary's windows, the checkpoint file mode."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from samam import callbacks
from samam.callbacks import CheckpointOnStop, LossProgressBar, LossSummary


def _trainer(step, saved):
    return SimpleNamespace(
        global_step=step,
        is_global_zero=True,
        _checkpoint_connector=SimpleNamespace(dump_checkpoint=lambda weights_only: {"step": step}),
        strategy=SimpleNamespace(save_checkpoint=lambda ckpt, path: saved.append((ckpt["step"], str(path)))),
    )


def test_only_sigterm_after_a_step_saves(tmp_path):
    saved = []
    stop = CheckpointOnStop(str(tmp_path))
    stop.on_exception(_trainer(5, saved), None, RuntimeError("crash mid-step"))
    stop.on_exception(_trainer(0, saved), None, SIGTERMException())
    assert saved == []
    stop.on_exception(_trainer(5, saved), None, SIGTERMException())
    assert saved == [(5, str(tmp_path / "last.ckpt"))]


def test_previous_sigusr2_handler_is_restored():
    def requeue(signum, frame):
        pass

    old = signal.signal(signal.SIGUSR2, requeue)
    try:
        for end in ("teardown", "on_exception"):
            stop = CheckpointOnStop("unused")
            stop.on_fit_start(None, None)
            assert signal.getsignal(signal.SIGUSR2) == stop._defer_requeue
            if end == "teardown":
                stop.teardown(None, None, "fit")
            else:
                stop.on_exception(_trainer(0, []), None, SIGTERMException())
            assert signal.getsignal(signal.SIGUSR2) is requeue, end
    finally:
        signal.signal(signal.SIGUSR2, old)


class _Timer:
    """threading.Timer under the test's control: it fires only when told, so the test does not
    depend on how fast a loaded machine runs it."""

    made: list[_Timer] = []

    def __init__(self, interval, function):
        self.function, self.alive, self.cancelled, self.daemon = function, False, False, False
        _Timer.made.append(self)

    def start(self):
        self.alive = True

    def is_alive(self):
        return self.alive

    def cancel(self):
        self.cancelled, self.alive = True, False

    def join(self):
        pass

    def fire(self):
        if not self.cancelled:
            self.alive = False
            self.function()


def test_step_boundary_cancels_the_timer_and_a_second_sigusr2_is_ignored(monkeypatch):
    calls = []
    monkeypatch.setattr(callbacks.os, "kill", lambda pid, sig: calls.append(("kill", sig)))
    monkeypatch.setattr(callbacks.threading, "Timer", _Timer)
    _Timer.made.clear()
    stop = CheckpointOnStop("unused", max_defer_s=60)
    stop._requeue = lambda signum, frame: calls.append(("requeue", signum))
    stop._defer_requeue(signal.SIGUSR2, None)
    stop._defer_requeue(signal.SIGUSR2, None)  # a second signal while the first stop is under way
    assert calls == [("kill", signal.SIGTERM)] and len(_Timer.made) == 1
    stop.on_exception(_trainer(0, []), None, SIGTERMException())  # the boundary comes in time
    _Timer.made[0].fire()  # too late: cancelled
    assert ("requeue", signal.SIGUSR2) not in calls  # waits for after_stop (after the save)
    stop.after_stop()
    assert calls == [("kill", signal.SIGTERM), ("requeue", signal.SIGUSR2)]


def test_loss_summary_short_run_windows_do_not_overlap_and_skip_sanity_check():
    cb = LossSummary(window=10)
    for v in (4.0, 3.0, 2.0, 1.0):
        cb.on_train_batch_end(
            None, SimpleNamespace(last_losses={"loss_style": torch.tensor(v)}), None, None, 0
        )
    assert cb.summary() == {"train_start": 3.5, "train_end": 1.5}
    for step, sanity, v in ((0, True, 9.0), (0, False, 5.0), (4, False, 2.0)):
        tr = SimpleNamespace(
            callback_metrics={"val/loss_style": torch.tensor(v)}, sanity_checking=sanity, global_step=step
        )
        cb.on_validation_end(tr, None)
    assert cb.val == [(0, 5.0), (4, 2.0)]


def test_loss_summary_counts_an_accumulated_step_once_as_the_mean_of_its_batches():
    """trainer.accumulate_grad_batches=2: each batch was a step, so the batches of one step, all
    from the same weights, were compared as the start and end of training."""
    cb = LossSummary(window=10)
    trainer = SimpleNamespace(global_step=0)
    for i, v in enumerate((4.0, 2.0, 3.0, 1.0, 2.0, 2.0)):
        cb.on_train_batch_start(trainer, None, None, i)
        trainer.global_step += i % 2  # Lightning steps the optimizer after every second batch
        cb.on_train_batch_end(
            trainer, SimpleNamespace(last_losses={"loss_style": torch.tensor(v)}), None, None, i
        )
    assert cb.steps == 3 and cb.summary() == {"train_start": 3.0, "train_end": 2.0}


class _BatchAsLoss(L.LightningModule):
    """Reports each batch's value as its style loss."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.last_losses = {"loss_style": batch.detach().mean()}
        return (self.w - batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(1.0, 8.0).view(7, 1), batch_size=1)  # 7 batches: 1, 2, ..., 7


@pytest.mark.parametrize(("accumulate", "steps"), [(2, [1.5, 3.5, 5.5, 7.0]), (3, [2.0, 5.0, 7.0])])
def test_loss_summary_counts_the_steps_lightning_takes(accumulate, steps):
    """Against a real Trainer: one value per optimizer step, the mean of its batches, the run's
    last partial window (batch 7) included, as Lightning steps the optimizer on it too."""
    cb = LossSummary(window=10)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_BatchAsLoss())
    assert trainer.global_step == cb.steps == len(steps)
    assert [float(v) for v in cb.first] == steps


def test_the_loss_report_names_the_steps_averaged_and_a_loss_that_rose(capsys):
    """A 4-step run averaged 2 steps at each end but said 10, and a rise read "-40.8% lower"."""
    from samam.train import _report

    cb = LossSummary(window=10)
    for v in (1.0, 2.0, 3.0, 4.0):
        cb.on_train_batch_end(
            None, SimpleNamespace(last_losses={"loss_style": torch.tensor(v)}), None, None, 0
        )
    for step, v in ((2, 0.5), (4, 0.4)):
        metrics = {"val/loss_style": torch.tensor(v)}
        cb.on_validation_end(
            SimpleNamespace(callback_metrics=metrics, sanity_checking=False, global_step=step), None
        )
    _report(SimpleNamespace(global_step=4, callbacks=[cb]), None, None)
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "style loss (fixed validation pairs): start 0.5 -> end 0.4 (20.0% lower)"
    assert out[2] == "style loss (mean of first/last 2 steps): start 1.5 -> end 3.5 (133.3% higher)"


def test_the_loss_report_of_a_zero_start_gives_no_percentage(capsys):
    """A start of 0 raised ZeroDivisionError in the report, after the run had trained and saved:
    the finished run was reported as failed (exit status 1)."""
    from samam.train import _report

    cb = LossSummary(window=10)
    cb.load_state_dict(
        {"steps": 4, "first": [0.0] * 4, "last": [0.0, 0.0, 0.0, 0.5], "val": [(2, 0.0), (4, 0.0)]}
    )
    _report(SimpleNamespace(global_step=4, callbacks=[cb]), None, None)
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "style loss (fixed validation pairs): start 0 -> end 0 (unchanged)"
    assert out[2] == "style loss (mean of first/last 2 steps): start 0 -> end 0.25 (higher)"


def test_the_loss_report_of_a_diverged_run_or_another_key(capsys):
    """A NaN loss read "nan% higher", and a summary of another loss was still called the style loss."""
    from samam.train import _report

    cb = LossSummary(key="loss_content", window=10)
    cb.load_state_dict({"steps": 2, "first": [1.0, float("nan")], "last": [1.0, float("nan")], "val": []})
    _report(SimpleNamespace(global_step=2, callbacks=[cb]), None, None)
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "loss_content (mean of first/last 1 step): start 1 -> end nan (not finite)"


def test_progress_bar_shows_the_training_loss():
    """Read from the module when the bar refreshes, not logged with prog_bar=True (read every step)."""
    trainer = SimpleNamespace(loggers=[], progress_bar_metrics={})
    module = SimpleNamespace(last_losses={"loss": torch.tensor(0.5), "loss_style": torch.tensor(0.25)})
    assert LossProgressBar().get_metrics(trainer, module) == {"train/loss": 0.5}
    assert LossProgressBar().get_metrics(trainer, SimpleNamespace(last_losses={})) == {}


def test_atomic_checkpoint_has_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        callbacks.AtomicCheckpointIO().save_checkpoint({"a": 1}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o644


def test_periodic_checkpoint_keeps_model_checkpoints_state_key(tmp_path):
    """Runs checkpointed by Lightning's ModelCheckpoint (the default before PeriodicCheckpoint)
    resume its state: the checkpoint's callbacks entry is looked up by this key."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from samam.callbacks import PeriodicCheckpoint

    kw = dict(dirpath=str(tmp_path), filename="step{step:07d}", every_n_train_steps=5, save_top_k=-1)
    assert PeriodicCheckpoint(**kw).state_key == ModelCheckpoint(**kw).state_key
    assert PeriodicCheckpoint(**kw).state_key != ModelCheckpoint(**{**kw, "every_n_train_steps": 6}).state_key
