"""LightningModule: SaMam + perceptual losses, Adam with per-iteration inverse LR decay.

Shapes: B batch, H, W crop size.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from samam.losses import StyleTransferLoss
from samam.nn.samam import check_switches
from samam.ranks import first_process

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1


def reduce_step(
    losses: dict[str, Tensor],
    setup_skipped: int,
    worker_skips: dict[int, int],
    stop: bool,
    world_size: int,
    reduce: Callable,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """What the ranks share after a training step, in one all-reduce (``reduce``: a sum over
    ranks, ``_sum_over_ranks``; none in one process). Returns
    - the loss terms averaged: the global batch's mean, as one process logs it, not rank 0's
      share (equal shares per rank);
    - the bad images of the whole run: ``setup_skipped``, counted once (those found at setup, as
      every rank checks the same folders, and those skipped while training before a resume), plus
      those skipped while training, summed over this rank's workers and then over ranks (a file
      bad for two workers counts twice, as each of them skipped it; so does one met again after
      a resume);
    - the ranks' stop votes (``stop``, from CheckpointOnStop) summed.
    The host values go to the device without waiting for it: nothing here waits for the device."""
    counts = [float(sum(worker_skips.values())), float(stop)]
    if world_size == 1:
        host = torch.tensor(counts, dtype=torch.float32)  # not the step's default dtype (bf16-true: bf16)
        return losses, host[0] + setup_skipped, host[1]
    device = next(iter(losses.values())).device
    terms = torch.stack(list(losses.values()))
    dtype = torch.promote_types(terms.dtype, torch.float32)  # counts stay exact past bf16's 256
    # Pinned, and in the reduce's dtype: CUDA copies pageable memory (or the unpinned temporary
    # of a conversion on the way) through a staging buffer, the host waiting, whatever
    # non_blocking says. The caching host allocator keeps the buffer until the copy is done.
    host = torch.tensor(counts, dtype=dtype, pin_memory=device.type == "cuda")
    summed = reduce(torch.cat([terms.to(dtype), host.to(device, non_blocking=True)]))
    n = len(losses)
    return dict(zip(losses, summed[:n] / world_size)), summed[n] + setup_skipped, summed[n + 1]


class HostCopy:
    """A device tensor (a scalar, a step's loss terms) copied to the host as soon as it is computed,
    read later: the read waits for the work queued before the copy (a CUDA event marks it), not for
    everything queued since (a step's backward and optimizer step)."""

    def __init__(self, t: Tensor) -> None:
        self.value = t.to("cpu", non_blocking=t.is_cuda)  # pinned; read once the event has passed
        self.ready = None
        if t.is_cuda:
            self.ready = torch.cuda.Event()
            self.ready.record()

    def _arrived(self) -> Tensor:
        if self.ready is not None:
            self.ready.synchronize()
        return self.value

    def item(self) -> float:
        return self._arrived().item()

    def tolist(self) -> list[float]:
        return self._arrived().tolist()


def _sum_over_ranks(t: Tensor) -> Tensor:
    """All-reduce (sum) in place across DDP ranks; a no-op in one process. Not strategy.reduce,
    which puts a barrier before every reduce: with NCCL, a host wait at every training step."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


class InverseDecay:
    """lr(it) / lr0 = 1 / (1 + decay · it); a class (not a lambda) so LambdaLR state pickles."""

    def __init__(self, decay: float) -> None:
        # decay < 0 makes the rate grow, then divide by zero at it = 1/|decay| (decay=-1: the second step)
        if isinstance(decay, bool) or not isinstance(decay, int | float) or decay < 0:
            raise ValueError(f"decay={decay}: give a number ≥ 0 (0: a constant rate)")
        self.decay = decay

    def __call__(self, it: int) -> float:
        return 1.0 / (1.0 + self.decay * it)


def inverse_decay(optimizer: Optimizer, decay: float = 2e-5) -> LambdaLR:
    """The release's schedule, lr(it) = lr0 / (1 + decay · it), stepped every iteration."""
    return LambdaLR(optimizer, InverseDecay(decay))


def image_grid(content: Tensor, style: Tensor, output: Tensor) -> np.ndarray:
    """Rows of content | style | output. Inputs (B,3,H,W) in [0,1] -> (B·H, 3·W, 3) uint8."""
    rows = torch.cat([content, style, output.clamp(0, 1)], dim=3)  # (B,3,H,3W)
    grid = torch.cat(list(rows), dim=1)  # (3,B·H,3W)
    return (grid.permute(1, 2, 0).float().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def _describe_code(code: dict[str, Any]) -> str:
    """A code record (samam.checkpoint.code_version) in words, for a log line."""
    changes = ""
    if code.get("git_dirty"):  # the digest tells two uncommitted states of one commit apart
        changes = f" with changes (diff {code['git_diff']})" if code.get("git_diff") else " with changes"
    return (
        f"git commit {code.get('git_commit')}{changes}, samam {code.get('samam_version')}, "
        f"torch {code.get('torch_version')}"
    )


class StyleTransferModule(L.LightningModule):
    """Trains ``net`` (a SaMam) with ``loss``. Holds the network as ``self.net`` so checkpoints carry
    ``net.*`` weights plus ``checkpoint["samam"]`` = {model: net.config, net_class: its import path,
    config: run config, code: the code that wrote it (git commit, dirty, diff digest, samam and torch versions),
    code_before: other code that trained it before a resume, loss_vgg, version, ...}."""

    def __init__(
        self,
        net: nn.Module,
        loss: StyleTransferLoss,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        compile: bool = False,
        sample_dir: str | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_switches({"module.compile": compile})
        self.net = net
        if hasattr(net, "check_finite"):  # inputs from the data module: no wait for the device per step
            net.check_finite = False
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile_net = compile
        self.sample_dir = sample_dir
        self.run_config = run_config
        self.run_identity: dict[str, Any] | None = None  # set by samam.train; see train.run_identity
        self.run_code: dict[str, Any] | None = None  # set by samam.train: samam.checkpoint.code_version()
        self._code_before: list[dict[str, Any]] = []  # other code versions that trained this run (resumes)
        self.last_grid_path: Path | None = None
        self.last_losses: dict[str, Tensor] = {}
        self.stop_vote = False  # this rank's vote to stop (CheckpointOnStop), summed over ranks each step
        self.stop_votes: HostCopy | None = None  # the sum of this step's votes (DDP), for CheckpointOnStop
        self._validated: tuple[int, int] | None = None  # (global step, logger step) of the last validation
        self._resumed: tuple[int, int] | None = None  # (global step, logger step) of the checkpoint loaded
        # Bad images skipped while training, all ranks: before this fit (the checkpoint's count), and
        # up to the last step (a tensor once a step ran; read only when a checkpoint is saved).
        self._skipped_before = 0
        self._train_skipped: Tensor | int = 0
        # (global step, that step's loss terms copied to the host), read two steps later
        self._loss_checks: deque[tuple[int, HostCopy]] = deque()

    def setup(self, stage: str) -> None:
        if self.compile_net:
            # In place, so state_dict keys stay net.*. Static shapes: training crops have one size,
            # and inductor's dynamic-shape path fails on this model (torch 2.14, "cannot determine
            # truth value of Relational") once content and style grids differ.
            self.net.compile(dynamic=False)

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        return self.net(content, style)

    def _step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        c, s = batch["content"], batch["style"]  # (B,3,H,W) each
        b = c.shape[0]
        # The three passes (c+s, c+c, s+s) as one batched forward of 3B.
        out = self.net(torch.cat([c, c, s]), torch.cat([s, c, s]))  # (3B,3,H,W)
        ics, icc, iss = out.split(b)
        return self.loss(ics, icc, iss, c, s)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self._step(batch)
        dm = getattr(self.trainer, "datamodule", None)
        # worker_skips: filled by the datamodule's on_before_batch_transfer
        worker_skips = getattr(dm, "worker_skips", None)
        world = self.trainer.world_size
        setup_skipped = getattr(dm, "skipped", 0)
        logged, skipped, votes = reduce_step(
            {k: v.detach() for k, v in losses.items()},
            setup_skipped + self._skipped_before,  # a resumed run counts on from its checkpoint
            worker_skips or {},
            self.stop_vote,
            world,
            _sum_over_ranks,
        )
        self.last_losses = logged  # for callbacks, no host sync
        # Non-finite loss terms stop the run (see _check_losses), read two steps late: by then the
        # copy has arrived, so the host does not wait for the device. Reduced over ranks above, the
        # terms are alike on every rank, so every rank stops at the same step.
        self._loss_checks.append((self.trainer.global_step, HostCopy(torch.stack(list(logged.values())))))
        if len(self._loss_checks) > 2:
            self._check_losses(*self._loss_checks.popleft())
        self.stop_votes = HostCopy(votes) if world > 1 else None
        if worker_skips:
            self._train_skipped = skipped - setup_skipped
        b = batch["content"].shape[0]
        # Not prog_bar=True: Lightning would read it on the host at every step (LossProgressBar shows it).
        self.log_dict({f"train/{k}": v for k, v in logged.items()}, batch_size=b)
        # A host tensor: a float would be copied to the device, waiting for it, at every step. Float32,
        # not the default dtype, which trainer.precision=bf16-true sets to bfloat16 during the step.
        lr = torch.tensor(self.optimizers().param_groups[0]["lr"], dtype=torch.float32)
        self.log("train/lr", lr, batch_size=b)
        if worker_skips:
            self.log("data/skipped", skipped, batch_size=b)
        return losses["loss"]

    def _check_losses(self, step: int, terms: HostCopy) -> None:
        """Stop the run once a step's loss was NaN or Inf and the weights are no longer finite:
        Adam spreads a NaN gradient into every weight, and every later step and checkpoint would
        hold NaN. Finite weights after a non-finite loss (16-mixed's gradient scaler skipped that
        step) only warn."""
        values = dict(zip(self.last_losses, terms.tolist()))
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if not bad:
            return
        if names := self._nonfinite_weights():
            raise FloatingPointError(
                self._nonfinite_message(f"the loss was not finite at step {step} ({bad})", names)
            )
        if first_process():  # every DDP rank reads the same reduced terms: said once
            log.warning(
                "the loss was not finite at step %d (%s); the weights still are: the step was skipped",
                step,
                bad,
            )

    def _drain_loss_checks(self) -> None:
        while self._loss_checks:
            self._check_losses(*self._loss_checks.popleft())

    def _nonfinite_weights(self) -> list[str]:
        """Names of the network's parameters holding NaN or Inf; one wait for the device when none do."""
        params = dict(self.net.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for p in params.values()])
        if bool(finite.all()):
            return []
        return [name for name, ok in zip(params, finite.tolist()) if not ok]

    def _nonfinite_message(self, what: str, names: list[str]) -> str:
        last = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or None
        kept = f" (the latest: {last})" if last else ""
        return (
            f"{what}, and {len(names)} weight tensors of the network are now NaN or Inf (e.g. "
            f"{', '.join(names[:3])}): training stopped at step {self.trainer.global_step}, and no "
            f"checkpoint of these weights was written; those saved before are kept{kept}. Resume "
            "from one with trainer.gradient_clip_val set (e.g. 1.0), or start again with a lower "
            "module.optimizer.lr; trainer.detect_anomaly=true names the first operation that gives "
            "NaN (slow)"
        )

    def on_train_end(self) -> None:
        self._drain_loss_checks()  # the last two steps, in a run that saves no checkpoint at the end

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        losses = self._step(batch)
        self.log_dict(
            {f"val/{k}": v for k, v in losses.items()}, sync_dist=True, batch_size=batch["content"].shape[0]
        )

    @torch.no_grad()
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "val_dataset") or len(dm.fixed_pairs) == 0:
            return
        ds = dm.val_dataset()
        # In the weights' dtype (trainer.precision=64-true): Lightning converts only the batches it feeds.
        c = torch.stack([ds[i]["content"] for i in range(len(ds))]).to(self.device, self.dtype)  # (P,3,H,W)
        s = torch.stack([ds[i]["style"] for i in range(len(ds))]).to(self.device, self.dtype)
        grid = image_grid(c, s, self.net(c, s))  # (P·H, 3W, 3) uint8
        step = self.trainer.global_step
        if self.sample_dir is not None:
            out = Path(self.sample_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.last_grid_path = out / f"step{step:07d}.png"
            Image.fromarray(grid).save(self.last_grid_path)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # W&B; images must be uint8 (floats are saved black)
                logger.log_image(
                    key="val/samples", images=[grid], step=step, caption=["content | style | output"]
                )

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._validated = (
                self.trainer.global_step,
                self.trainer.fit_loop.epoch_loop._batches_that_stepped,
            )

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before the file is written: a checkpoint of NaN weights (over last.ckpt) is never saved.
        self._drain_loss_checks()
        if names := self._nonfinite_weights():
            raise FloatingPointError(self._nonfinite_message("a checkpoint was about to be saved", names))
        # The frozen VGG is rebuilt from loss.vgg; storing it would add ~80 MB per checkpoint.
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("loss.")
        }
        checkpoint["samam"] = {
            "model": dict(self.net.config),
            "net_class": f"{type(self.net).__module__}.{type(self.net).__qualname__}",  # a subclass of SaMam too
            "config": self.run_config,
            "identity": self.run_identity,
            "code": self.run_code,
            "code_before": [c for c in self._code_before if c != self.run_code],
            "loss_vgg": getattr(self.loss, "vgg_used", None),  # what loss.vgg=imagenet_if_cached chose
            "version": CHECKPOINT_VERSION,
            "train_skipped": int(self._train_skipped),
        }
        loop = (
            checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]
            if self._validated or self._resumed
            else {}
        )
        if self._validated == (self.trainer.global_step, loop.get("_batches_that_stepped", 0) - 1):
            # Saved after this step's validation and after Lightning counted the step for the
            # loggers (a SIGTERM stop, the final save). Resuming, Lightning skips the validation
            # done and counts the step again: store the count from before, as a checkpoint saved
            # at validation end holds it, else every logged step after the resume is one too high.
            loop["_batches_that_stepped"] -= 1
        elif (
            self._validated is None
            and self._resumed is not None
            and self._resumed[0] == self.trainer.global_step
        ):
            # Resumed and stopped before training or validating anything (a SIGTERM while loading):
            # Lightning's restart counted the step again all the same. Nothing has happened since
            # the checkpoint loaded: store its count.
            loop["_batches_that_stepped"] = self._resumed[1]
        wandb_ids = [lg.version for lg in self.loggers if isinstance(lg, WandbLogger)]
        if wandb_ids and wandb_ids[0]:
            checkpoint["samam"]["wandb_id"] = wandb_ids[0]  # a resumed run continues this W&B run

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
        if "_batches_that_stepped" in loop:
            self._resumed = (checkpoint["global_step"], loop["_batches_that_stepped"])
        meta = checkpoint.get("samam", {})
        # Checkpoints from before the count was stored: from 0, as then.
        self._skipped_before = self._train_skipped = int(meta.get("train_skipped", 0))
        before, code = meta.get("code_before", []), meta.get("code")
        self._code_before = [*before, code] if code is not None and code not in before else list(before)
        if code is not None and code != self.run_code and self.global_rank == 0:  # once, not per DDP rank
            log.warning(
                "the checkpoint was written by other code (%s) than this run's (%s); the checkpoints record "
                "both (samam.code, samam.code_before)",
                _describe_code(code),
                _describe_code(self.run_code or {}),
            )
        # Runs before load_state_dict: put the current loss network back so strict loading passes.
        checkpoint["state_dict"].update({f"loss.{k}": v for k, v in self.loss.state_dict().items()})
