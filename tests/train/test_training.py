"""End-to-end CPU runs: fast_dev_run, the demo (loss falls, W&B offline), SIGKILL + resume,
DDP on CPU with 2 processes, and a multirun over an ablation's arms."""

import csv
import errno
import importlib.util
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback

from samam import SaMam

# samam.train needs Hydra, which the GPU machine (experiments/gpu_check.sh) lacks: skipped there.
pytest.importorskip("hydra")
from samam.train import check_batch_split, check_seed, check_val_interval, main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_fast_dev_run(compose, tiny, tmp_path):
    cfg = compose([*tiny(), "debug=fdr"])
    metrics = main(cfg)
    assert not (tmp_path / "checkpoints").exists()  # debug=fdr: "nothing written by checkpoints"
    assert {
        "train/loss",
        "train/loss_content",
        "train/loss_style",
        "train/loss_id1",
        "train/loss_id2",
    } <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


class HalfFrozenSaMam(SaMam):
    """A researcher's variant that leaves its decoder in eval mode, by mistake or not."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.decoder.eval()


@pytest.mark.parametrize("frozen_decoder", [False, True])
def test_only_a_module_in_eval_mode_besides_the_loss_vgg_gets_lightnings_warning(
    compose, tiny, tmp_path, frozen_decoder
):
    """The loss VGG is frozen in eval mode on purpose, and Lightning warned at every fit that this
    "may lead to unexpected behavior"; the warning stays for any other module in eval mode."""
    net = [f"model._target_={__name__}.HalfFrozenSaMam"] if frozen_decoder else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(compose([*tiny(), "debug=fdr", *net]))
    eval_mode = [str(w.message) for w in caught if "in eval mode at the start of training" in str(w.message)]
    assert len(eval_mode) == int(frozen_decoder), eval_mode


@pytest.mark.parametrize("off", ["callbacks=none", "callbacks.checkpoint=null"])
def test_checkpoints_switched_off_write_none(compose, tiny, tmp_path, off):
    """conf/callbacks/none.yaml promises no checkpoints: Lightning added its own ModelCheckpoint
    (epoch=0-step=2.ckpt in the CSV logger's folder, then last.ckpt beside it)."""
    overrides = [o for o in tiny() if not o.startswith("callbacks.")]
    main(compose([*overrides, off, "trainer.max_steps=2"]))
    assert [p.name for p in tmp_path.rglob("*.ckpt")] == []


def test_the_progress_bar_switched_off_leaves_out_its_callback(compose, tiny, tmp_path):
    """trainer.enable_progress_bar=false (a SLURM log) with the default callbacks, which hold a
    progress bar: Lightning refused the pair (MisconfigurationException) after the network was built."""
    overrides = [o for o in tiny() if o != "callbacks.progress=null"]
    cfg = compose([*overrides, "debug=fdr"])
    assert cfg.callbacks.progress is not None and cfg.trainer.enable_progress_bar is False
    assert all(torch.isfinite(torch.tensor(v)) for v in main(cfg).values())


def test_demo_lowers_style_loss_and_writes_wandb_offline(compose, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(
        [
            "experiment=demo",
            *tiny(),
            "logger=wandb",
            "trainer.max_steps=12",
            "trainer.val_check_interval=12",
            "callbacks.checkpoint.every_n_train_steps=12",
        ]
    )
    assert cfg.validate_before_training is True
    main(cfg)
    out = capsys.readouterr().out
    assert "checkpoint:" in out and "sample grid" in out
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12
    assert ckpt["samam"]["version"] == 1 and ckpt["samam"]["model"]["embed_dim"] == 32
    assert ckpt["samam"]["config"]["experiment_name"] == "demo"
    run_id = ckpt["samam"]["wandb_id"]  # a resume continues this W&B run
    assert all(k.startswith("net.") for k in ckpt["state_dict"])
    grids = sorted((tmp_path / "samples").glob("step*.png"))
    assert [g.name for g in grids] == ["step0000000.png", "step0000012.png"]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb")) and runs[0].name.endswith(run_id)
    line = next(ln for ln in out.splitlines() if ln.startswith("style loss (fixed validation pairs)"))
    start, end = (float(x) for x in re.search(r"start (\S+) -> end (\S+) ", line).groups())
    assert end < start, line


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    rows = []
    for f in run_dir.glob("csv/**/metrics.csv"):
        with open(f) as fh:
            rows += list(csv.DictReader(fh))
    return rows


def test_sigkill_then_resume_continues_step_and_lr(tiny, train_subprocess, tmp_path):
    first = tmp_path / "first"
    args = [
        *tiny(first),
        "trainer.max_steps=1000",
        "trainer.val_check_interval=1000",
        f"hydra.run.dir={first}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = first / "checkpoints" / "step0000004.ckpt"
    deadline = time.time() + 180
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "no checkpoint before the deadline"
    last = first / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    k = saved["global_step"]
    # killed just after step 4's checkpoint: last.ckpt is step 4, or step 2 if the kill fell
    # between the two writes; at most one interval (2 steps) is lost
    assert k >= 2 and k % 2 == 0  # and last.ckpt loaded: whole
    # A kill inside a write leaves that write's temp file (nothing runs on SIGKILL), never a
    # half-written checkpoint under a real name; the resumed run's next save of it removes it.
    stale = [p.name for p in (first / "checkpoints").glob(".*.tmp")]
    assert all(n.startswith((".last.ckpt.", ".step")) for n in stale), stale

    second = tmp_path / "second"
    res = train_subprocess(
        [*tiny(second), f"trainer.max_steps={k + 2}", f"ckpt_path={last}", f"hydra.run.dir={second}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    steps = sorted({int(r["step"]) for r in _csv_rows(second) if r.get("train/lr")})
    assert steps[0] >= k, steps  # continued, did not restart at 0
    final = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == k + 2
    lr0, decay = 1e-4, 2e-5
    assert abs(final["optimizer_states"][0]["param_groups"][0]["lr"] - lr0 / (1 + decay * (k + 2))) < 1e-12
    assert float(final["optimizer_states"][0]["state"][0]["step"]) == k + 2  # Adam's moments were restored
    first_lr = next(
        float(r["train/lr"]) for r in _csv_rows(second) if r.get("train/lr") and int(r["step"]) == steps[0]
    )
    assert first_lr == pytest.approx(lr0 / (1 + decay * k), rel=1e-6)  # logged as float32


def test_ddp_sim_two_processes(compose, tiny, train_subprocess, tmp_path):
    """2 processes × 1 pair train and log as 1 process × 2 pairs (data.batch_size is global):
    the same pairs, gradients averaged (SGD: a sum would double the step), the losses of the
    whole batch logged (not rank 0's pair)."""
    import lightning as L
    from hydra.utils import instantiate

    sgd = ["trainer.max_steps=2", "module.optimizer._target_=torch.optim.SGD"]
    out, one = tmp_path / "ddp", tmp_path / "one"
    res = train_subprocess([*tiny(out), *sgd, "trainer=ddp_sim", f"hydra.run.dir={out}"], cwd=tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    assert "MEMBER: 2/2" in text
    assert text.count("selective-scan backend:") == 1  # each rank builds the network; rank 0 says so
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    cfg = compose([*tiny(one), *sgd])
    main(cfg)
    ref = torch.load(one / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    L.seed_everything(cfg.seed)
    start = instantiate(cfg.model).state_dict()

    def norm(tensors) -> float:
        return torch.cat([t.double().flatten() for t in tensors]).norm().item()

    w, w_ref = ckpt["state_dict"], ref["state_dict"]
    assert norm(w[f"net.{k}"] - w_ref[f"net.{k}"] for k in start) < 1e-3 * norm(
        w_ref[f"net.{k}"] - v for k, v in start.items()
    )
    logged = [
        {int(r["step"]): float(r["train/loss_style"]) for r in _csv_rows(d) if r.get("train/loss_style")}
        for d in (out, one)
    ]
    assert logged[0].keys() == logged[1].keys() == {0, 1}
    assert logged[0] == pytest.approx(logged[1], rel=1e-4)


def test_a_finished_ddp_run_destroys_its_process_group(compose, tiny, monkeypatch):
    """Left to the interpreter's shutdown, a gloo group's threads now and then aborted a run that
    had finished ("terminate called without an active exception", exit 134). One process of DDP,
    in this one; the variables Lightning's launcher sets go with the test."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.setenv(key, "")  # records the value before the test (for most: none)
        monkeypatch.delenv(key)
    try:
        main(compose([*tiny(), "trainer=ddp_sim", "trainer.devices=1", "trainer.max_steps=1"]))
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():  # the old code: do not leak the group into other tests
            torch.distributed.destroy_process_group()


class StepSyncs(Callback):
    """Counts, from the start of training batch 1 to the start of batch 2 (a step with no
    validation, checkpoint or logging), what makes ranks meet or the host wait for a GPU:
    collectives, host values made into device tensors (``torch.tensor(..., device=...)``: a
    blocking copy) and tensor values read on the host (``item``, ``bool``, ...) by the training
    module, the callbacks, the run or Lightning. Not counted: the optimizer's reads of its CPU step
    counters and the data loader's host batch counters."""

    COLLECTIVES = (
        "all_reduce",
        "broadcast",
        "all_gather",
        "all_gather_object",
        "broadcast_object_list",
        "barrier",
    )
    READS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__")

    def __init__(self, out: str) -> None:
        import samam.callbacks
        import samam.logging_utils
        import samam.module
        import samam.nn.samam
        import samam.train

        self.out = out
        self.callers = tuple(
            m.__file__
            for m in (samam.module, samam.callbacks, samam.train, samam.logging_utils, samam.nn.samam)
        )
        self.counts = {"collectives": 0, "to_device": 0, "reads": 0}
        self._undo: list = []

    def _count(self, owner, name: str, kind: str, when=lambda *args, **kwargs: True) -> None:
        original, own = getattr(owner, name), name in vars(owner)

        def counting(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            ours = caller in self.callers or f"{os.sep}lightning{os.sep}" in caller
            if when(*args, **kwargs) and (kind == "collectives" or ours):
                self.counts[kind] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counting)
        self._undo.append((owner, name, original if own else None))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:
            for name in self.COLLECTIVES:
                self._count(torch.distributed, name, "collectives")
            for name in self.READS:
                self._count(torch.Tensor, name, "reads")
            self._count(
                torch, "tensor", "to_device", when=lambda *args, **kwargs: kwargs.get("device") is not None
            )
        elif batch_idx == 2:
            self._restore()
            Path(f"{self.out}.{trainer.global_rank}.json").write_text(json.dumps(self.counts))

    def _restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            if original is None:
                delattr(owner, name)  # inherited: Tensor.__bool__ is TensorBase's again
            else:
                setattr(owner, name, original)
        self._undo = []

    def teardown(self, trainer, pl_module, stage) -> None:
        self._restore()


# ddp_sim: two processes, ~20-45 s on a 2-core box
@pytest.mark.parametrize("trainer", ["cpu", pytest.param("ddp_sim", marks=pytest.mark.slow)])
def test_a_training_step_meets_the_other_ranks_once_and_waits_for_the_device_at_most_once(
    compose, tiny, train_subprocess, tmp_path, monkeypatch, trainer
):
    """In one process a step has no collective and nothing that waits for the device (the lr and
    the skip count are logged from host tensors, not copied to the device at every step, and the
    loss is not a progress-bar value, which Lightning reads at every step). Under
    DDP: one all-reduce (loss terms, skip count and stop votes together) and one read (the stop
    decision), not three all-reduces and Lightning's SIGTERM broadcast, with four blocking copies
    to the device and two reads."""
    args = [
        *tiny(),
        "trainer.max_steps=3",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=100",
        "callbacks.checkpoint.every_n_train_steps=100",
        f"+callbacks.syncs._target_={StepSyncs.__module__}.StepSyncs",
        f"+callbacks.syncs.out={tmp_path / 'syncs'}",
    ]
    if trainer == "cpu":
        main(compose(args))
        expected = [{"collectives": 0, "to_device": 0, "reads": 0}]
    else:
        path = os.environ.get("PYTHONPATH")
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), *([path] if path else [])])
        )
        res = train_subprocess([*args, "trainer=ddp_sim", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        expected = [{"collectives": 1, "to_device": 0, "reads": 1}] * 2
    counted = [
        json.loads(Path(f"{tmp_path / 'syncs'}.{rank}.json").read_text()) for rank in range(len(expected))
    ]
    assert counted == expected


class CudaSyncs(Callback):
    """Records the calls that make the host wait for the GPU (torch.cuda's sync debug mode) from
    the start of training batch 1 to the start of batch 2, as "file:line message" lines."""

    def __init__(self, out: str) -> None:
        self.out, self._ctx, self.records = out, None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:
            self._ctx = warnings.catch_warnings(record=True)
            self.records = self._ctx.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif batch_idx == 2:
            self._stop()
            lines = [f"{w.filename}:{w.lineno} {w.message}" for w in self.records]
            Path(self.out).write_text(json.dumps(lines))

    def _stop(self) -> None:
        if self._ctx is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    def teardown(self, trainer, pl_module, stage) -> None:
        self._stop()


@pytest.mark.gpu
def test_a_cuda_training_step_of_ours_never_waits_for_the_gpu(compose, tiny, tmp_path):
    """The CUDA side of the step counts above: nothing in samam's code (module, callbacks, the
    network's input check, the data module) synchronises with the GPU during a training step."""
    out = tmp_path / "cuda_syncs.json"
    args = [
        *(o for o in tiny() if o != "trainer=cpu"),
        "trainer=gpu",
        "trainer.max_steps=3",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=100",
        "callbacks.checkpoint.every_n_train_steps=100",
        f"+callbacks.syncs._target_={CudaSyncs.__module__}.CudaSyncs",
        f"+callbacks.syncs.out={out}",
    ]
    main(compose(args))
    src = str(Path(__import__("samam").__file__).parent)
    ours = [line for line in json.loads(out.read_text()) if line.startswith(src)]
    assert ours == [], ours


def test_multirun_ablation_one_run_per_arm(tiny, train_subprocess, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny(Path("IGNORED")) if not o.startswith("paths.output_dir")]
    res = train_subprocess(
        ["-m", "experiment=ablation_s7", *overrides, "trainer.max_steps=2", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 2
    arms = set()
    for job in jobs:
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        arms.add(ckpt["samam"]["model"]["style_ssm"])
        assert ckpt["samam"]["config"]["seed"] == 0
        assert ckpt["samam"]["config"]["logger"]["csv"]["save_dir"] == str(job)
    assert arms == {True, False}


def test_a_second_run_in_a_folder_where_one_is_training_stops_before_writing(
    compose, tiny, tmp_path, monkeypatch
):
    """Two `python train.py ... &` in one SLURM job share its folder (the job id): with no
    checkpoint yet for ckpt_path=auto to check, both trained and overwrote each other's."""
    import fcntl
    import threading

    from samam import train

    monkeypatch.setattr(train, "RUN_LOCK_WAIT_S", 1.5)
    with open(tmp_path / ".train.lock", "a") as other:  # a run training there now
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another run is training in .* now"):
            main(compose([*tiny(), "debug=fdr", "seed=1"]))
    assert not (tmp_path / "csv").exists() and not (tmp_path / "samples").exists()
    main(compose([*tiny(), "debug=fdr", "seed=1"]))  # the other one is done: the folder is free
    # A job requeued after its node failed, whose lock the NFS server releases only after its
    # lease (~90 s): the run waits for it rather than refusing at once.
    other = open(tmp_path / ".train.lock", "a")  # noqa: SIM115 (closed by the timer)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    release = threading.Timer(0.5, other.close)
    release.start()
    main(compose([*tiny(), "debug=fdr", "seed=1"]))
    release.join()


def test_a_run_refused_by_the_folder_lock_puts_back_the_config_files_its_hydra_overwrote(
    compose, tiny, tmp_path, monkeypatch
):
    """Hydra writes .hydra/config.yaml, hydra.yaml and overrides.yaml before the run reaches the
    lock: a second run in the folder of one training there left its own config in them."""
    from samam import train

    monkeypatch.setattr(train, "RUN_LOCK_WAIT_S", 1.5)
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    first = {"config.yaml": "seed: 0\n", "overrides.yaml": "- seed=0\n"}
    for name, text in first.items():
        (hydra_dir / name).write_text(text)
    with train.exclusive_run_folder(tmp_path):  # the first run, training
        for name in first:  # what the second run's Hydra writes before its main
            (hydra_dir / name).write_text("seed: 1\n")
        with pytest.raises(RuntimeError, match="another run is training in .* now"):
            main(compose([*tiny(), "debug=fdr", "seed=1"]))
        assert {name: (hydra_dir / name).read_text() for name in first} == first
    assert sorted(p.name for p in hydra_dir.iterdir()) == sorted(first)  # no temp file left


@pytest.mark.parametrize(
    ("mistake", "error"),
    [
        ("data.pin_memory=no", "data.pin_memory='no'"),
        ("ckpt_path=missing.ckpt", "ckpt_path: no file missing.ckpt"),
        ("callbacks.progress=false", "callbacks.progress=False"),
    ],
)
def test_a_run_refused_by_a_config_check_in_a_busy_folder_puts_back_the_holders_files(
    compose, tiny, tmp_path, mistake, error
):
    """The config checks run before the lock: a second run with a mistake, started in the folder
    of one training there, left its own config in the training run's .hydra files."""
    from samam import train

    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "config.yaml").write_text("seed: 0\n")
    with train.exclusive_run_folder(tmp_path):  # the first run, training
        (hydra_dir / "config.yaml").write_text("seed: 1\n")  # the second run's Hydra
        with pytest.raises(Exception, match=re.escape(error)):
            main(compose([*tiny(), "debug=fdr", "seed=1", mistake]))
        assert (hydra_dir / "config.yaml").read_text() == "seed: 0\n"
    (hydra_dir / "config.yaml").write_text("seed: 1\n")  # no run training there: nothing put back
    with pytest.raises(Exception, match=re.escape(error)):
        main(compose([*tiny(), "debug=fdr", "seed=1", mistake]))
    assert (hydra_dir / "config.yaml").read_text() == "seed: 1\n"


def test_a_missing_ckpt_path_is_refused_before_anything_is_built(compose, tiny, tmp_path):
    """A mistyped ckpt_path failed only at fit: after the data folders were listed and checked
    (minutes on COCO + WikiArt), the loggers opened (a failed W&B run) and the network built."""
    from samam.train import check_inputs_exist

    missing = tmp_path / "elsewhere" / "last.ckt"
    with pytest.raises(FileNotFoundError, match=f"ckpt_path: no file {re.escape(str(missing))}"):
        main(compose([*tiny(), "debug=fdr", f"ckpt_path={missing}"]))
    assert not (tmp_path / "csv").exists() and not (tmp_path / "samples").exists()
    for given in ("auto", "null", "last", "s3://bucket/run/last.ckpt"):  # resolved later, or remote
        check_inputs_exist(compose([*tiny(), f"ckpt_path={given}"]))
    with pytest.raises(FileNotFoundError, match="ckpt_path=best: .*give the file"):  # fit always refused it
        check_inputs_exist(compose([*tiny(), "ckpt_path=best"]))


def test_a_ckpt_path_train_cannot_resume_from_is_named_before_anything_is_built(compose, tiny, tmp_path):
    """A copy cut short, a bare weights file, the authors' released checkpoint or another model's
    Lightning checkpoint failed only in Lightning's load, after the data and the networks were built,
    with "failed finding central directory", KeyError: 'pytorch-lightning_version' or every tensor
    listed as missing; now each is named for what it is."""
    from samam.train import check_inputs_exist

    main(compose([*tiny(), "trainer.max_steps=1"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    check_inputs_exist(compose([*tiny(), f"ckpt_path={last}"]))  # a run's own checkpoint passes
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    bad = tmp_path / "elsewhere" / "bad.ckpt"
    bad.parent.mkdir()
    bad.write_bytes(last.read_bytes()[:4096])
    with pytest.raises(
        FileNotFoundError,
        match="bad.ckpt is not a zip archive, as every checkpoint train.py writes is .*a copy cut short",
    ):
        main(compose([*tiny(), "debug=fdr", f"ckpt_path={bad}"]))
    zero = torch.zeros(1)
    for saved, why in (
        ({"features.0.weight": zero}, r"no Lightning training checkpoint \(keys e.g. features.0.weight\)"),
        (
            {**ckpt, "state_dict": {"model.content_encoder.0.proj.weight": zero}},
            "the authors' released SaMam",
        ),
        ({**ckpt, "state_dict": {"model.encoder.weight": zero}}, "of another model .*model.encoder.weight"),
    ):
        torch.save(saved, bad)
        with pytest.raises(FileNotFoundError, match=f"ckpt_path: .*bad.ckpt .*{why}"):
            check_inputs_exist(compose([*tiny(), f"ckpt_path={bad}"]))


def test_a_checkpoint_on_a_file_system_that_cannot_map_files_is_read_whole(tmp_path, monkeypatch):
    """The checks read checkpoints memory-mapped: on a mount that cannot map files (some FUSE and
    object-store mounts) a sound checkpoint was refused as unreadable, and ckpt_path=auto called the
    run's own last.ckpt damaged."""
    from samam.train import resolve_resume, resume_file_problem

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    state = {"net.w": torch.ones(2)}
    torch.save(
        {"pytorch-lightning_version": "2.6.6", "state_dict": state, "samam": {"identity": {"seed": 0}}}, ckpt
    )

    def no_mmap(*args, **kwargs):
        raise RuntimeError("unable to mmap 96 bytes from file <...>: No such device (19)")

    monkeypatch.setattr(torch.UntypedStorage, "from_file", no_mmap)
    assert resume_file_problem(ckpt) is None
    assert resolve_resume("auto", tmp_path, {"seed": 0})[0] == str(ckpt)


def test_a_writable_folder_is_not_refused_where_os_access_says_otherwise(
    tmp_path, monkeypatch, refuse_files_in
):
    """os.access answers for the real uid from what the client sees: on a CIFS mount's made-up mode bits
    it said no for a folder the run could write (a false refusal blocked training), and a FUSE file
    system with no access check said yes and refused the first save. Creating a file asks the file system."""
    from samam.fileio import unwritable

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    assert unwritable(tmp_path / "new" / "ckpts") is None
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    refuse_files_in(tmp_path, errno.EACCES)
    assert unwritable(tmp_path / "new") == f"no permission to create files in {tmp_path}"
    refuse_files_in(tmp_path, errno.ENOSPC)
    assert "cannot create files in" in unwritable(tmp_path / "new") and "space" in unwritable(tmp_path)


def test_a_checkpoint_folder_that_cannot_be_written_is_refused_before_anything_is_built(
    compose, tiny, tmp_path, refuse_files_in
):
    """A checkpoint dirpath on a read-only mount or without write permission (simulated: root writes
    anywhere) failed at the first save, every_n_train_steps into the run."""
    from samam.train import check_inputs_exist

    locked = tmp_path / "locked"
    locked.mkdir()
    refuse_files_in(locked, errno.EACCES)
    run = [*tiny(), f"callbacks.checkpoint.dirpath={locked}/ckpts"]
    with pytest.raises(
        FileNotFoundError, match=f"callbacks.checkpoint.dirpath: no permission to create files in {locked}$"
    ):
        check_inputs_exist(compose(run))
    refuse_files_in(locked, errno.EROFS)
    with pytest.raises(FileNotFoundError, match=f"dirpath: {locked} is on a read-only file system$"):
        check_inputs_exist(compose(run))
    remote = "callbacks.checkpoint.dirpath=s3://bucket/ckpts"  # Lightning's to open: not checked here
    check_inputs_exist(compose([*tiny(), remote]))


def test_compile_switch_given_as_a_string_is_refused(compose, tiny):
    """`module.compile=off` reached the module as the string 'off', which is truthy: it compiled."""
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="module.compile='off' must be true or false"):
        main(compose([*tiny(), "debug=fdr", "module.compile=off"]))


def test_matmul_precision_is_applied_and_checked(compose, tiny, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)  # keep the suite's global
    main(compose([*tiny(), "debug=fdr", "float32_matmul_precision=high"]))
    assert calls == ["high"]
    with pytest.raises(
        ValueError, match="float32_matmul_precision='tf32': choose one of highest, high, medium"
    ):
        main(compose([*tiny(), "debug=fdr", "float32_matmul_precision=tf32"]))


def _start(args: list[str], cwd: Path, script: list[str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    cmd = [sys.executable, *(script or [str(REPO / "train.py")]), *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared: " + (proc.communicate()[0] or "")[-3000:]


def test_sigterm_checkpoints_at_the_step_boundary_exits_143_and_auto_resumes(
    tiny, train_subprocess, tmp_path
):
    """scancel/preemption: the step reached is saved (no periodic checkpoint is due), the exit
    status says the run did not finish, and rerunning in the same folder resumes (ckpt_path=auto)."""
    run = tmp_path / "run"
    args = [
        *tiny(run),
        "trainer.max_steps=1000",
        "callbacks.checkpoint.every_n_train_steps=1000",
        f"hydra.run.dir={run}",
    ]
    proc = _start(args, tmp_path)
    _wait_for(run / "samples" / "step0000002.png", proc)  # validation every 2 steps
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM at step" in out
    k = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert k >= 2

    res = train_subprocess([*args[:-3], f"trainer.max_steps={k + 1}", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ckpt_path=auto: resuming from" in res.stdout + res.stderr
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == k + 1
    assert len(list((run / "csv").glob("version_*/metrics.csv"))) == 2  # the first run's log is kept


class SigtermAt(Callback):
    """Sends this process SIGTERM as the validation after training step ``step`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


def _exit_status_when_stopped(compose, run: list[str], step: int) -> int | str | None:
    """Runs ``run`` in this process with SIGTERM sent as the validation after ``step`` starts."""
    stop = [
        f"+callbacks.sigterm._target_={SigtermAt.__module__}.SigtermAt",
        f"+callbacks.sigterm.step={step}",
    ]
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exited:
            main(compose([*run, *stop]))
    finally:
        signal.signal(signal.SIGTERM, handler)  # the stopped run's handler stays installed
    return exited.value.code


def test_a_stop_during_validation_resumes_on_the_same_logged_steps(compose, tiny, tmp_path):
    """SIGTERM during the validation of step 4, then ckpt_path=auto: the two CSV logs together
    hold each step once, at the steps of an uninterrupted run (it was one step ahead), and the
    weights end as the uninterrupted run's, bit for bit (the same batch at every step)."""
    main(compose([*tiny(tmp_path / "whole"), "trainer.max_steps=6"]))
    run = [*tiny(), "trainer.max_steps=6"]
    assert _exit_status_when_stopped(compose, run, step=4) == 143
    main(compose(run))
    logged = sorted((int(r["step"]), "val" if r["val/loss"] else "train") for r in _csv_rows(tmp_path))
    assert logged == sorted([(s, "train") for s in range(6)] + [(1, "val"), (3, "val"), (5, "val")])
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    whole = torch.load(
        tmp_path / "whole" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert final["global_step"] == whole["global_step"] == 6
    assert all(torch.equal(final["state_dict"][k], v) for k, v in whole["state_dict"].items())


def test_a_stop_while_a_resumed_run_loads_keeps_the_logged_steps(compose, tiny, tmp_path, monkeypatch):
    """SIGTERM while a run resumed after a stop during validation still builds its data (Lightning's
    handler is in place, ours not yet): it stops again at step 4, and the third run still logs each
    step once, at the uninterrupted run's steps."""
    from samam import data

    run = [*tiny(), "trainer.max_steps=6"]
    assert _exit_status_when_stopped(compose, run, step=4) == 143
    build = data.StyleTransferDataModule.train_dataloader

    def stopped_while_loading(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return build(self)

    monkeypatch.setattr(data.StyleTransferDataModule, "train_dataloader", stopped_while_loading)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exited:
            main(compose(run))
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert exited.value.code == 143
    monkeypatch.setattr(data.StyleTransferDataModule, "train_dataloader", build)
    main(compose(run))
    logged = sorted((int(r["step"]), "val" if r["val/loss"] else "train") for r in _csv_rows(tmp_path))
    assert logged == sorted([(s, "train") for s in range(6)] + [(1, "val"), (3, "val"), (5, "val")])


class SigtermAtBatch(Callback):
    """Sends this process SIGTERM as training batch ``batch`` (counted from 0) starts."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_midway_through_an_accumulated_step_resumes_bit_for_bit(compose, tiny, tmp_path):
    """trainer.accumulate_grad_batches=2, SIGTERM in the first batch of step 2: the run stops at
    the batch that completes the step. Stopped after that first batch, the checkpoint lost its
    gradients and the resumed stream (which starts at a step) fed it again as the step's second
    batch: every later step trained on other pairs than the uninterrupted run."""
    run = [
        *tiny(),
        "trainer.max_steps=3",
        "+trainer.accumulate_grad_batches=2",
        "trainer.val_check_interval=4",
    ]
    main(compose([*run, f"paths.output_dir={tmp_path / 'whole'}"]))
    stop = [
        f"+callbacks.sigterm._target_={SigtermAtBatch.__module__}.SigtermAtBatch",
        "+callbacks.sigterm.batch=2",
    ]
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exited:
            main(compose([*run, *stop]))
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert exited.value.code == 143
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    main(compose(run))
    final = torch.load(last, map_location="cpu", weights_only=False)
    whole = torch.load(
        tmp_path / "whole" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert final["global_step"] == whole["global_step"] == 3
    assert all(torch.equal(final["state_dict"][k], v) for k, v in whole["state_dict"].items())


def test_a_resume_with_another_accumulate_grad_batches_goes_on_where_the_stream_stopped(
    compose, tiny, demo_root, tmp_path, monkeypatch
):
    """2 steps × 2 batches, then resumed with 1 batch per step, then with 2 again: each run's
    stream starts at the batches drawn so far (4, then 6), so no pair is drawn twice or skipped.
    It started at steps × the new value: batches 2 and 3 were fed again, then 6 and 7 skipped."""
    from samam import data

    starts = []

    class Spy(data.RandomPairs):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            starts.append(self.start_step)

    monkeypatch.setattr(data, "RandomPairs", Spy)
    run = [*tiny(), "trainer.val_check_interval=1000"]
    main(compose([*run, "trainer.max_steps=2", "+trainer.accumulate_grad_batches=2"]))
    main(compose([*run, "trainer.max_steps=4", "+trainer.accumulate_grad_batches=1"]))
    main(compose([*run, "trainer.max_steps=5", "+trainer.accumulate_grad_batches=2"]))
    assert starts == [0, 4, 6]
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    images = {
        w: data.image_list_record(data.list_images(demo_root / w, w), demo_root / w)
        for w in ("content", "style")
    }
    assert final["global_step"] == 5 and final["DemoDataModule"] == {
        "train_batches": 8,
        "images": images,
    }  # data=demo


def test_a_run_records_its_code_in_checkpoints_and_hyperparameters_and_a_resume_keeps_the_earlier(
    compose, tiny, tmp_path, monkeypatch, caplog
):
    """The git commit (and changes, samam version) a run trains with, once at its start: in every
    checkpoint and the logged hyperparameters; a resume with other code records both."""
    import yaml

    import samam.train
    from samam.checkpoint import code_version

    here = code_version()
    main(compose([*tiny(), "trainer.max_steps=2"]))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["samam"]
    assert saved["code"] == here and saved["code_before"] == []
    logged = yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text())
    assert logged["code"] == here

    later = {**here, "git_commit": "0" * 40, "git_dirty": False, "git_error": None, "torch_version": "9.9"}
    monkeypatch.setattr(samam.train, "code_version", lambda: later)
    with caplog.at_level(logging.WARNING):
        main(compose([*tiny(), "trainer.max_steps=4"]))
    assert "torch 9.9" in caplog.text and f"torch {torch.__version__}" in caplog.text
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["samam"]
    assert saved["code"] == later and saved["code_before"] == [here]
    assert yaml.safe_load((tmp_path / "csv" / "version_1" / "hparams.yaml").read_text())["code"] == later


def test_the_other_code_warning_tells_two_uncommitted_states_of_one_commit_apart():
    """Both were "git commit … with changes": the resume's warning named two identical records."""
    from samam.module import _describe_code

    before = {"git_commit": "1" * 40, "git_dirty": True, "git_diff": "0123456789ab", "samam_version": "0.1.0"}
    after = {**before, "git_diff": "ba9876543210"}
    assert "with changes (diff 0123456789ab)" in _describe_code(before)
    assert _describe_code(before) != _describe_code(after)
    assert "with changes," in _describe_code({**before, "git_diff": None})  # untracked files only


def test_a_resume_keeps_the_vgg_that_imagenet_if_cached_chose_at_the_start(
    compose, tiny, tmp_path, monkeypatch, caplog
):
    """loss.vgg=imagenet_if_cached (the demo, debug=cpu_tiny) chooses when the run starts: a VGG file
    copied in later turned the random loss network into ImageNet's at the next resume."""
    from torchvision.models import vgg19

    from samam import losses

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    built, random_conv = [], losses._random_encoder().convs()[0].weight

    def build_vgg(source, real=losses.build_vgg):
        enc = real(source)
        built.append("random" if torch.equal(enc.convs()[0].weight, random_conv) else "imagenet")
        return enc

    monkeypatch.setattr(losses, "build_vgg", build_vgg)
    run = [*(o for o in tiny() if not o.startswith("loss.vgg")), "loss.vgg=imagenet_if_cached"]
    main(compose([*run, "trainer.max_steps=2"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["samam"]["loss_vgg"] == "random"

    cached = losses.torch_hub_checkpoint_dir() / losses.VGG19_FILE
    cached.parent.mkdir(parents=True)
    torch.save(
        {f"features.{k}": v for k, v in vgg19(weights=None).features[:30].state_dict().items()}, cached
    )
    with caplog.at_level(logging.WARNING, logger="samam"):
        main(compose([*run, "trainer.max_steps=4"]))
    assert built == ["random", "random"]
    assert "was trained with a RANDOM VGG-19" in caplog.text and "the resumed run keeps it" in caplog.text
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4 and saved["samam"]["loss_vgg"] == "random"

    saved["samam"]["loss_vgg"] = "imagenet"  # a run that started with the file, which is gone now
    torch.save(saved, last)
    cached.unlink()
    with pytest.raises(
        FileNotFoundError, match=f"trained with torchvision's ImageNet VGG-19, and {losses.VGG19_FILE}"
    ):
        main(compose([*run, "trainer.max_steps=6"]))
    assert built == ["random", "random"]  # refused before the loss network was built


class DoubledSaMam(SaMam):
    """A researcher's variant: the same weights, another forward."""

    def forward(self, content, style):
        return 2 * super().forward(content, style)


def test_a_checkpoint_of_a_samam_subclass_loads_as_that_class(compose, tiny, tmp_path):
    """model._target_ naming a subclass: only net.config was kept, so stylize.py and eval.py rebuilt
    a plain SaMam that the weights fit, and ran another forward than the one trained."""
    from samam import load_model
    from samam.checkpoint import CheckpointError

    main(compose([*tiny(), "trainer.max_steps=1", f"model._target_={__name__}.DoubledSaMam"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert type(load_model(last, backend="torch")) is DoubledSaMam
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    for name, why in (("nowhere.Variant", "cannot be imported here"), ("collections.Counter", "not a SaMam")):
        ckpt["samam"]["net_class"] = name
        torch.save(ckpt, tmp_path / "named.ckpt")
        with pytest.raises(CheckpointError, match=f"{name}.*{why}"):
            load_model(tmp_path / "named.ckpt", backend="torch")
    del ckpt["samam"]["net_class"]  # from before the class was recorded: a SaMam, as then
    torch.save(ckpt, tmp_path / "older.ckpt")
    assert type(load_model(tmp_path / "older.ckpt", backend="torch")) is SaMam


def test_a_finished_run_extended_logs_on_at_the_next_step(compose, tiny, tmp_path):
    """The final save at a step that validated (off the checkpoint interval), then more steps."""
    main(compose([*tiny(), "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=3"]))
    main(compose([*tiny(), "trainer.max_steps=6", "callbacks.checkpoint.every_n_train_steps=3"]))
    logged = sorted((int(r["step"]), "val" if r["val/loss"] else "train") for r in _csv_rows(tmp_path))
    assert logged == sorted([(s, "train") for s in range(6)] + [(1, "val"), (3, "val"), (5, "val")])


def test_a_stop_during_the_validation_before_training_exits_143(compose, tiny, tmp_path):
    """Not forgotten (Lightning clears its SIGTERM flag when fit starts) and trained through."""
    run = [*tiny(), "trainer.max_steps=2", "validate_before_training=true"]
    assert _exit_status_when_stopped(compose, run, step=0) == 143
    assert not (tmp_path / "checkpoints").exists()  # no step trained: nothing to save


class CrashAt(Callback):
    """Dies (as a SIGKILL or an OOM would, saving nothing) as the validation after ``step`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            raise RuntimeError("killed")


def test_a_run_killed_before_a_checkpoint_steps_validation_still_validates_that_step(compose, tiny, tmp_path):
    """The periodic checkpoint of a step that validates is written after the validation: a
    resume from a checkpoint written before it skipped that step's validation for good."""
    run = [*tiny(), "trainer.max_steps=4"]
    with pytest.raises(RuntimeError, match="killed"):
        main(
            compose(
                [*run, f"+callbacks.crash._target_={CrashAt.__module__}.CrashAt", "+callbacks.crash.step=4"]
            )
        )
    main(compose(run))  # ckpt_path=auto
    logged = {(int(r["step"]), "val" if r["val/loss"] else "train") for r in _csv_rows(tmp_path)}
    assert {(1, "val"), (3, "val")} <= logged
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == [
        "step0000002.png",
        "step0000004.png",
    ]
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 4
    assert [s for s, _ in final["callbacks"]["LossSummary"]["val"]] == [2, 4]
    # no validation pairs: no validation hooks, the checkpoints are saved at the step
    main(compose([*tiny(tmp_path / "no_val"), "trainer.max_steps=2", "data.val_pairs=0"]))
    assert (tmp_path / "no_val" / "checkpoints" / "step0000002.ckpt").is_file()


class CrashAtTrainStep(Callback):
    """Dies (saving nothing) as training step ``step`` + 1 starts, after step ``step`` was logged."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


class CrashOnLoad(Callback):
    """Fails while the checkpoint is restored (as a mismatched or damaged one, or an OOM, would)."""

    def on_load_checkpoint(self, *args) -> None:
        raise RuntimeError("out of memory while loading")


def test_a_run_killed_past_its_checkpoint_logs_the_redone_steps_once(compose, tiny, tmp_path):
    """Killed after step 3 (last.ckpt is step 2), resumed: the CSV versions together hold each
    step once (steps 3's rows were in both), and the first version keeps the steps before. A
    resume that fails while loading the checkpoint drops nothing: it trains nothing again."""
    run = [*tiny(), "trainer.max_steps=6"]
    with pytest.raises(RuntimeError, match="killed"):
        main(
            compose(
                [
                    *run,
                    f"+callbacks.crash._target_={CrashAtTrainStep.__module__}.CrashAtTrainStep",
                    "+callbacks.crash.step=3",
                ]
            )
        )
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    before = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    with pytest.raises(RuntimeError, match="out of memory while loading"):
        main(compose([*run, f"+callbacks.crash._target_={CrashOnLoad.__module__}.CrashOnLoad"]))
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").read_text() == before
    main(compose(run))  # ckpt_path=auto
    logged = sorted((int(r["step"]), "val" if r["val/loss"] else "train") for r in _csv_rows(tmp_path))
    assert logged == sorted([(s, "train") for s in range(6)] + [(1, "val"), (3, "val"), (5, "val")])
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        first = [(int(r["step"]), bool(r["val/loss"])) for r in csv.DictReader(f)]
    assert first == [(0, False), (1, False), (1, True)]


def test_a_resume_with_lightnings_names_last_and_hpc_logs_the_redone_steps_once(compose, tiny, tmp_path):
    """ckpt_path=last and ckpt_path=hpc resume from the run's own folder as its file would: the
    rows of the steps trained again are dropped (they were kept for the bare names)."""
    crash = f"+callbacks.crash._target_={CrashAtTrainStep.__module__}.CrashAtTrainStep"
    run = [*tiny(), "trainer.max_steps=6"]
    with pytest.raises(RuntimeError, match="killed"):
        main(compose([*run, crash, "+callbacks.crash.step=3"]))
    with pytest.raises(RuntimeError, match="killed"):
        main(compose([*run, crash, "+callbacks.crash.step=5", "ckpt_path=last"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(last.read_bytes())  # as Lightning's SLURM requeue saves
    main(compose([*run, "ckpt_path=hpc"]))
    logged = sorted((int(r["step"]), "val" if r["val/loss"] else "train") for r in _csv_rows(tmp_path))
    assert logged == sorted([(s, "train") for s in range(6)] + [(1, "val"), (3, "val"), (5, "val")])


def test_lightnings_checkpoint_names_are_resolved_to_the_file_it_would_load(tmp_path):
    """The file is then resumed as given (identity check, W&B run continued from the run's own)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from samam.train import lightning_ckpt_file, wandb_resume_id

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    callbacks = [ModelCheckpoint(dirpath=ckpts)]
    assert lightning_ckpt_file("last", callbacks, tmp_path) is None  # nothing yet: a fresh start
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=hpc: no hpc_ckpt_<n>\.ckpt in .*ckpt_path=auto"):
        lightning_ckpt_file("hpc", callbacks, tmp_path)
    for path in (ckpts / "last.ckpt", tmp_path / "hpc_ckpt_2.ckpt", tmp_path / "hpc_ckpt_10.ckpt"):
        torch.save({"samam": {"wandb_id": "id-run"}}, path)
    assert lightning_ckpt_file("last", callbacks, tmp_path) == str(ckpts / "last.ckpt")
    assert lightning_ckpt_file("hpc", callbacks, tmp_path) == str(tmp_path / "hpc_ckpt_10.ckpt")
    assert wandb_resume_id(lightning_ckpt_file("hpc", callbacks, tmp_path), tmp_path) == "id-run"
    (tmp_path / "copied.ckpt").write_bytes((tmp_path / "hpc_ckpt_2.ckpt").read_bytes())
    assert wandb_resume_id(tmp_path / "copied.ckpt", tmp_path) is None  # not one the run saved
    assert lightning_ckpt_file("some.ckpt", callbacks, tmp_path) == "some.ckpt"
    with pytest.raises(
        ValueError, match="ckpt_path=last: .* saves in the logger folder; give the checkpoint file"
    ):
        lightning_ckpt_file("last", [ModelCheckpoint()], tmp_path)  # Lightning's folder depends on the logger


def _metadata_reads(monkeypatch) -> list:
    """The paths torch.load maps from here on (our metadata reads; Lightning's load maps nothing)."""
    reads, load = [], torch.load

    def spy(path, *args, **kwargs):
        if kwargs.get("mmap"):
            reads.append(path)
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return reads


def test_a_resume_without_wandb_reads_the_checkpoint_metadata_once_before_fit(
    compose, tiny, tmp_path, monkeypatch
):
    """Once, for the identity check: not again for a W&B run id without W&B, nor for the step to
    drop CSV rows from (the restored one). Lightning's own load maps nothing."""
    main(compose([*tiny(), "trainer.max_steps=2"]))
    reads = _metadata_reads(monkeypatch)
    main(compose([*tiny(), "trainer.max_steps=2"]))  # ckpt_path=auto, logger=csv
    assert reads == [tmp_path / "checkpoints" / "last.ckpt"]


def test_a_resume_with_wandb_reads_the_checkpoint_metadata_once_for_the_identity_and_the_run_id(
    compose, tiny, tmp_path, monkeypatch
):
    """The W&B run id comes from the metadata read for the identity check: it was read a second time."""
    run = [*tiny(), "trainer.max_steps=2", "logger=wandb", "logger.wandb.mode=disabled"]
    main(compose(run))
    reads = _metadata_reads(monkeypatch)
    main(compose(run))  # ckpt_path=auto
    assert reads == [tmp_path / "checkpoints" / "last.ckpt"]


def test_submitit_requeue_signal_is_deferred_until_the_checkpoint_is_written(tiny, tmp_path):
    """submitit requeues on SIGUSR2 and exits at once; the run first stops at a step boundary
    and saves, then the requeue handler runs."""
    run = tmp_path / "run"
    wrapper = tmp_path / "submitit_like.py"
    wrapper.write_text(
        "import runpy, signal, sys\n"
        "marker = sys.argv.pop(1)\n"
        "def requeue(signum, frame):\n"
        "    open(marker, 'w').write('requeued')\n"
        "    sys.exit(7)\n"
        "signal.signal(signal.SIGUSR2, requeue)\n"
        f"sys.argv[0] = {str(REPO / 'train.py')!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    marker = tmp_path / "requeued"
    args = [*tiny(run), "trainer.max_steps=1000", "callbacks.checkpoint.every_n_train_steps=1000"]
    proc = _start([str(marker), *args, f"hydra.run.dir={run}"], tmp_path, script=[str(wrapper)])
    _wait_for(run / "samples" / "step0000002.png", proc)
    proc.send_signal(signal.SIGUSR2)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 7 and marker.read_text() == "requeued", out[-3000:]
    assert (
        "SIGUSR2 (requeue): stopping at the next step boundary" in out and "stopped by SIGTERM at step" in out
    )
    assert (
        torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
        >= 2
    )


def test_wandb_run_continues_only_from_the_runs_own_checkpoint(tmp_path):
    from samam.train import wandb_resume_id

    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run, other):
        (folder / "checkpoints").mkdir(parents=True)
        torch.save({"samam": {"wandb_id": f"id-{folder.name}"}}, folder / "checkpoints" / "last.ckpt")
    assert wandb_resume_id(run / "checkpoints" / "last.ckpt", run) == "id-run"
    assert wandb_resume_id(other / "checkpoints" / "last.ckpt", run) is None  # fine-tuning from another run
    assert wandb_resume_id(None, run) is None


def test_every_missing_input_is_named_in_one_error_before_anything_is_built(compose, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose(["experiment=paper", f"paths.data_dir={tmp_path / 'data'}", f"paths.root={tmp_path}"])
    with pytest.raises(FileNotFoundError) as err:
        main(cfg)
    text = str(err.value)
    for missing in (
        "data.content_dir: no folder",
        "data.style_dir: no folder",
        "loss.vgg: no file",
        "no CUDA device",
    ):
        assert missing in text, text


def test_missing_data_folders_and_imagenet_vgg_weights_are_named_together(compose, tmp_path, monkeypatch):
    """The VGG-19 download (loss.vgg=imagenet) comes as the loss is built: offline, a run with
    missing data folders listed the folders, and only the run after they were fixed said the
    weights were missing too. Now the one error names both, and where the weights go."""
    from samam.train import check_inputs_exist

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = compose([f"paths.data_dir={tmp_path / 'data'}", "trainer=cpu"])
    with pytest.raises(FileNotFoundError) as err:
        check_inputs_exist(cfg)
    text = str(err.value)
    assert "data.content_dir: no folder" in text and "data.style_dir: no folder" in text, text
    assert (
        f"loss.vgg=imagenet: vgg19-dcbb9e9d.pth is not in {tmp_path / 'torch' / 'hub' / 'checkpoints'}/"
        in text
    )
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in text
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        check_inputs_exist(cfg)
    assert "data.content_dir: no folder" in str(err.value) and "loss.vgg" not in str(err.value)


def test_a_data_folder_given_as_a_file_and_a_ckpt_path_given_as_a_folder_are_named_so(
    compose, tiny, tmp_path
):
    """check_inputs_exist said "no folder" for an existing image file (data.style_dir=starry_night.jpg)
    and "no file" for a run folder given as ckpt_path, as if nothing were there."""
    image = tmp_path / "starry_night.jpg"
    image.write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        folders = [o for o in tiny() if not o.startswith(("data=", "data.root="))] + ["data=folders"]
        main(compose([*folders, f"data.content_dir={tmp_path}", f"data.style_dir={image}"]))
    assert f"data.style_dir: {image} is a file; give the folder that holds the images" in str(err.value)
    with pytest.raises(FileNotFoundError, match=f"ckpt_path: {re.escape(str(tmp_path))} is a folder; give"):
        main(compose([*tiny(), f"ckpt_path={tmp_path}"]))


def test_a_float64_run_draws_its_sample_grid(compose, tiny, tmp_path):
    """trainer.precision=64-true trained, then failed at the first validation's sample grid (float32
    images into float64 weights), before any checkpoint."""
    main(compose([*tiny(), "trainer.max_steps=2", "trainer.precision=64-true"]))
    assert (tmp_path / "samples" / "step0000002.png").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_trainer_plugins_given_are_used(compose, tiny, tmp_path):
    """train.py passed plugins=[AtomicCheckpointIO()] over the config's: a precision plugin was
    dropped without a word (DoublePrecision trained in float32, and the run config said otherwise)."""
    double = "{_target_:lightning.pytorch.plugins.DoublePrecision}"
    for given in (f"[{double}]", double):  # a list, or one plugin (a config merge error before)
        out = tmp_path / str(len(given))
        main(
            compose(
                [*tiny(out), "trainer.max_steps=1", "trainer.precision=null", f"+trainer.plugins={given}"]
            )
        )
        final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert {v.dtype for v in final["state_dict"].values() if v.is_floating_point()} == {torch.float64}


def test_a_bfloat16_run_trains_with_the_numba_scan(compose, tiny, tmp_path):
    """trainer.precision=bf16-true failed at the first step inside the numba scan, whose buffers
    took the step's default dtype (bfloat16); and the logged lr was that dtype too (1e-4 as
    1.0014e-4, a staircase over a run)."""
    metrics = main(
        compose([*tiny(), "trainer.max_steps=2", "trainer.precision=bf16-true", "model.backend=numba"])
    )
    assert math.isfinite(metrics["train/loss"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    lr = [float(r["train/lr"]) for r in _csv_rows(tmp_path) if r.get("train/lr") and r["step"] == "0"]
    assert lr == [torch.tensor(1e-4, dtype=torch.float32).item()]


class NaNBatchAt(Callback):
    """Turns the content of the training batch of one step into NaN, as a diverging step would."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank  # rank: that rank's batch only (DDP); None: every rank's

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            batch["content"].fill_(float("nan"))


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_finite_checkpoints(
    compose, tiny, tmp_path
):
    """A NaN loss went into Adam, every weight became NaN, and the run trained on, overwriting
    last.ckpt (and every later periodic checkpoint) with NaN weights, exit status 0."""
    args = [
        *tiny(),
        "trainer.max_steps=6",
        f"+callbacks.nan._target_={__name__}.NaNBatchAt",
        "+callbacks.nan.step=3",
    ]
    with pytest.raises(
        FloatingPointError, match=r"the loss was not finite at step 3 .*no checkpoint of these"
    ):
        main(compose(args))
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step0000002.ckpt"]
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_a_non_finite_loss_on_one_ddp_rank_stops_every_rank_at_the_same_step(
    tiny, train_subprocess, tmp_path, monkeypatch
):
    """A NaN batch on rank 1 only: the ranks share the reduced loss and the averaged gradients, so
    both raise at the same step (neither waits in a collective for the other, which would hang)
    and no checkpoint of NaN weights is written by either. A guard (~40 s)."""
    args = [
        *tiny(tmp_path),
        "trainer=ddp_sim",
        "trainer.max_steps=6",
        f"hydra.run.dir={tmp_path}",
        f"+callbacks.nan._target_={__name__}.NaNBatchAt",
        "+callbacks.nan.step=3",
        "+callbacks.nan.rank=1",
    ]
    path = os.environ.get("PYTHONPATH")  # the ranks import NaNBatchAt from this file
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), *([path] if path else [])]))
    res = train_subprocess(args, cwd=tmp_path, timeout=200)  # a hung rank: TimeoutExpired
    text = res.stdout + res.stderr
    assert res.returncode != 0 and "MEMBER: 2/2" in text, text[-3000:]
    assert text.count("FloatingPointError: the loss was not finite at step 3") >= 1, text[-3000:]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_a_non_finite_loss_with_finite_weights_after_it_only_warns(caplog, monkeypatch):
    """16-mixed's gradient scaler skips a step whose gradients overflow: the weights stay finite
    and training goes on."""
    from lightning.pytorch.utilities import rank_zero_only
    from tiny import TINY  # here: the DDP tests import this module where tests/ is not on the path

    from samam.module import HostCopy, StyleTransferModule

    module = StyleTransferModule(SaMam(**TINY), torch.nn.Identity(), torch.optim.Adam)
    module.last_losses = {"loss": torch.tensor(1.0), "loss_style": torch.tensor(1.0)}
    with caplog.at_level(logging.WARNING, logger="samam.module"):
        module._check_losses(7, HostCopy(torch.tensor([math.inf, 0.5])))
    assert "the loss was not finite at step 7 ({'loss': inf})" in caplog.text
    # the other DDP ranks read the same reduced terms: rank 0 alone says so
    caplog.clear()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with caplog.at_level(logging.WARNING, logger="samam.module"):
        module._check_losses(8, HostCopy(torch.tensor([math.inf, 0.5])))
    assert "not finite" not in caplog.text


@pytest.mark.parametrize(
    ("precision", "why"),
    [("16-true", "float16 weights become NaN"), ("32-mixed", "not a precision Lightning knows")],
)
def test_a_precision_that_cannot_train_is_refused_before_anything_is_built(
    compose, tiny, tmp_path, precision, why
):
    """16-true trained one step, then every loss was NaN (Adam's eps is 0 in float16); a value
    Lightning does not know failed only after the network and VGG were built."""
    with pytest.raises(
        ValueError,
        match=f"trainer.precision='{precision}': {why}.*; choose one of 32-true, 64-true, bf16-mixed",
    ):
        main(compose([*tiny(tmp_path / "run"), f"trainer.precision={precision}"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("transformer_engine") is not None, reason="transformer_engine is installed"
)
def test_transformer_engine_without_its_package_is_refused_before_anything_is_built(compose, tiny, tmp_path):
    """Lightning checks for the package only as the Trainer is built, after the network, the data
    and the loss network."""
    with pytest.raises(
        ModuleNotFoundError,
        match="trainer.precision='transformer-engine' needs NVIDIA's Transformer Engine.*pip install",
    ):
        main(compose([*tiny(tmp_path / "run"), "trainer.precision=transformer-engine"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("seed", ["null", "abc"])
def test_a_seed_that_is_not_an_integer_is_refused_before_anything_is_built(compose, tiny, tmp_path, seed):
    """seed=null failed in the data module's set-up, after the networks were built ("object of
    type 'NoneType' has no len()"); seed=abc with "invalid literal for int()"."""
    with pytest.raises(TypeError, match=f"seed={None if seed == 'null' else seed!r}: give an integer"):
        main(compose([*tiny(tmp_path / "run"), f"seed={seed}"]))
    assert not (tmp_path / "run" / "checkpoints").exists()
    # seed=${oc.env:SLURM_ARRAY_TASK_ID} gives digits in a string, which every user of the seed reads
    check_seed(compose([*tiny(tmp_path / "run"), "seed='7'"]))
    for seed in (-1, 2**32):  # numpy's range; -1 failed in seed_everything, in numpy's words
        with pytest.raises(ValueError, match=f"seed={seed}: give an integer from 0 to 4294967295"):
            check_seed(compose([*tiny(tmp_path / "run"), f"seed={seed}"]))
    check_seed(compose([*tiny(tmp_path / "run"), f"seed={2**32 - 1}"]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("module.optimizer.lr=-1", "module.optimizer: Invalid learning rate: -1"),
        ("+module.optimizer.momentum=0.9", "module.optimizer: .*unexpected keyword argument 'momentum'"),
        ("module.scheduler.decay=-1", r"module.scheduler: decay=-1: give a number ≥ 0"),
    ],
)
def test_a_bad_optimizer_setting_is_refused_before_anything_is_built(
    compose, tiny, tmp_path, override, message
):
    """lr=-1 failed as fit started, after the networks, with torch's message and no key; a
    negative decay divided by zero at the second step."""
    with pytest.raises(ValueError, match=message):
        main(compose([*tiny(tmp_path / "run"), override]))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("steps", ["0", "-5", "1.5"])
def test_a_run_length_below_one_step_is_refused_before_anything_is_built(compose, tiny, tmp_path, steps):
    """trainer.max_steps=0 "trained 0 steps", wrote last.ckpt and exited 0; -5 failed once the
    networks were built. -1 (Lightning's no limit) stays allowed."""
    from samam.train import check_run_length

    with pytest.raises(ValueError, match=f"trainer.max_steps={steps}: give the number of optimizer steps"):
        main(compose([*tiny(tmp_path / "run"), f"trainer.max_steps={steps}"]))
    assert not (tmp_path / "run").exists()
    check_run_length(compose([*tiny(tmp_path / "run"), "trainer.max_steps=-1"]))
    # 2e5 is a float to Hydra: the message says how to write it
    with pytest.raises(ValueError, match=r"an integer \(written 200000, not 200000.0\)"):
        check_run_length(compose([*tiny(tmp_path / "run"), "trainer.max_steps=2e5"]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.devices=0", "trainer.devices=0: no device to train on; give 1 or more"),
        ("trainer.devices=[]", r"trainer.devices=\[\]: no device to train on"),
        ("trainer.devices=-2", "trainer.devices=-2: no device to train on"),
        ("trainer.num_nodes=0", "trainer.num_nodes=0: give the number of machines"),
    ],
)
def test_a_trainer_with_no_device_is_refused_before_anything_is_built(
    compose, tiny, tmp_path, override, message
):
    """Lightning refused trainer.devices=0 only as the Trainer was built, after the networks, naming
    no key ("`Trainer(devices=0)` value is not a valid input using cpu accelerator")."""
    with pytest.raises(ValueError, match=message):
        main(compose([*tiny(tmp_path / "run"), override]))
    assert not (tmp_path / "run").exists()
    from samam.train import check_devices

    for fine in ("trainer.devices=1", "trainer.devices=-1", "trainer.devices=auto", 'trainer.devices="0,"'):
        check_devices(compose([*tiny(), fine]))


@pytest.mark.parametrize("backend", ["mamba", "auto"])
def test_deterministic_training_with_the_mamba_scan_is_refused_before_anything_is_built(
    compose, tiny, tmp_path, monkeypatch, caplog, backend
):
    """mamba-ssm's backward adds with atomics: its alert came only at the first training step,
    after the networks were built and validate_before_training had run. A stand-in for a CUDA
    machine with mamba-ssm (none here): the checks only ask whether it would be picked."""
    from samam.ops.selective_scan import mamba_scan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mamba_scan, "_load", lambda: lambda u, *args, **kwargs: u)
    gpu = [o for o in tiny(tmp_path / "run") if o != "trainer=cpu"] + [
        "trainer=gpu",
        f"model.backend={backend}",
    ]
    with pytest.raises(
        ValueError, match=f"deterministic=True with model.backend={backend}.*atomics.*model.backend=torch"
    ):
        main(compose([*gpu, "trainer.deterministic=true"]))
    assert not (tmp_path / "run").exists()
    from samam.train import check_deterministic

    with caplog.at_level(logging.WARNING, logger="samam.train"):
        check_deterministic(compose([*gpu, "trainer.deterministic=warn"]))
    assert "atomics" in caplog.text
    for fine in ("model.backend=torch", "model.mixer=attention", "trainer.accelerator=cpu"):
        if backend == "mamba" and fine == "trainer.accelerator=cpu":
            continue  # an explicit mamba is refused on a CPU trainer by the network itself
        check_deterministic(compose([*gpu, "trainer.deterministic=true", fine]))
    check_deterministic(compose([*gpu, "trainer.deterministic=false"]))


def test_limit_train_batches_is_refused_as_the_stream_has_no_epochs(compose, tiny, tmp_path):
    """Lightning starts the endless stream over at each limit_train_batches "epoch": every epoch
    trained on the same batches, silently. fast_dev_run, which sets the limit itself, still runs."""
    with pytest.raises(ValueError, match="limit_train_batches=2: the training stream is endless"):
        main(compose([*tiny(tmp_path / "run"), "+trainer.limit_train_batches=2"]))
    assert not (tmp_path / "run" / "checkpoints").exists()
    main(compose([*tiny(tmp_path / "fdr"), "debug=fdr"]))


@pytest.mark.parametrize("interval", ["0", "-1", "-0.5"])
def test_a_val_check_interval_below_one_batch_is_refused_before_anything_is_built(
    compose, tiny, tmp_path, interval
):
    """0 failed at the first training batch ("integer modulo by zero"), a negative value in
    Lightning's Trainer, both after the network and the loss network were built."""
    with pytest.raises(
        ValueError, match=f"val_check_interval={interval}: .* give 1 or more.*data.val_pairs=0"
    ):
        main(compose([*tiny(tmp_path / "run"), f"trainer.val_check_interval={interval}"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "interval, message",
    [
        ("0.5", "a fraction of an epoch, and the training stream has no epochs"),
        ("1.0", "a fraction of an epoch"),
        ('"00:00:30"', r'a duration is "DD:HH:MM:SS"'),
        ("30min", r'a duration is "DD:HH:MM:SS"'),
        ('"00:00:00:00"', "a duration of 0 s; give a positive one"),
        ("{minutes:-5}", "a duration of -300 s; give a positive one"),
        ("{minutes:1e15}", "a duration takes timedelta's keywords"),
        ('"9999999999:00:00:00"', "past the longest duration Python takes"),
    ],
)
def test_a_val_check_interval_lightning_refuses_is_refused_before_anything_is_built(
    compose, tiny, interval, message
):
    """Lightning refused them only as the Trainer was built, once the networks had been."""
    with pytest.raises(ValueError, match=f"trainer.val_check_interval=.*: {message}"):
        check_val_interval(compose([*tiny(), f"trainer.val_check_interval={interval}"]))
    check_val_interval(compose([*tiny(), 'trainer.val_check_interval="00:00:30:00"']))


@pytest.mark.parametrize("interval", ['"00:00:30:00"', "{minutes:30}"])
def test_a_val_check_interval_given_as_a_duration_is_refused_under_ddp(compose, tiny, tmp_path, interval):
    """Lightning times such a validation by each rank's clock: under DDP one rank validated while the
    other trained on, and the run hung (2 CPU processes, "00:00:00:04": at step 6)."""
    run = [*tiny(tmp_path / "run"), f"trainer.val_check_interval={interval}"]
    with pytest.raises(ValueError, match="the 2 processes of this run would validate at different steps"):
        main(compose([*run, "trainer=ddp_sim"]))
    assert not (tmp_path / "run" / "checkpoints").exists()
    check_val_interval(compose(run))  # one process: one clock


def test_a_gpu_picked_by_index_is_one_process(compose, tiny, tmp_path, monkeypatch):
    """trainer.devices=[1] reaches the checks as a ListConfig, not a list: it was counted as every
    visible GPU, so on a node with 2 a one-GPU run was refused a duration (and multirun)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    run = [*tiny(tmp_path / "run"), 'trainer.val_check_interval="00:00:30:00"', "trainer.accelerator=gpu"]
    check_val_interval(compose([*run, "trainer.devices=[1]"]))
    with pytest.raises(ValueError, match="the 2 processes of this run"):
        check_val_interval(compose([*run, "trainer.devices=[0,1]"]))


def test_a_batch_that_does_not_divide_over_the_processes_is_refused_before_anything_is_built(
    compose, tiny, tmp_path, monkeypatch
):
    """data.batch_size=3 over 2 processes was refused only in the data module's set-up, after the
    second rank had started and both had built the networks (~30 s on 2 CPU cores)."""

    def build(cfg):
        raise AssertionError("the run was built")

    monkeypatch.setattr("samam.train._train", build)
    with pytest.raises(ValueError, match=r"data.batch_size=3 \(global\) does not divide over 2 devices"):
        main(compose([*tiny(tmp_path / "run"), "trainer=ddp_sim", "data.batch_size=3"]))


def test_a_val_check_interval_given_as_timedelta_keywords_times_validation(
    compose, tiny, tmp_path, monkeypatch
):
    """{minutes:30} reached Lightning as a DictConfig, which it counted as batches: the Trainer failed
    once the networks were built. Now it is a timedelta, and a misspelt keyword is refused first."""
    import lightning

    seen, fit = [], lightning.Trainer.fit

    def recorded_fit(trainer, *args, **kwargs):
        seen.append(trainer)
        return fit(trainer, *args, **kwargs)

    monkeypatch.setattr(lightning.Trainer, "fit", recorded_fit)
    main(
        compose(
            [
                *tiny(tmp_path / "run"),
                "trainer.val_check_interval={minutes:30}",
                "validate_before_training=false",
            ]
        )
    )
    assert seen[0]._val_check_time_interval == 1800
    with pytest.raises(
        ValueError, match=r"val_check_interval=\{'minute': 30\}: a duration takes timedelta's"
    ):
        check_val_interval(compose([*tiny(tmp_path / "run"), "trainer.val_check_interval={minute:30}"]))


def test_gpus_picked_by_a_string_of_indices_are_counted_as_lightning_counts_them(
    compose, tiny, tmp_path, monkeypatch
):
    """trainer.devices="1," (one GPU) or "0,1" (two), Lightning's string of GPU indices, was counted
    as every visible GPU: on a node with 4 a one-GPU run was refused a duration, and a global batch
    of 2 on two GPUs was refused as not dividing over 4 devices."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    run = [*tiny(tmp_path / "run"), "trainer.accelerator=gpu", "data.batch_size=2"]
    check_val_interval(compose([*run, 'trainer.val_check_interval="00:00:30:00"', 'trainer.devices="1,"']))
    check_batch_split(compose([*run, 'trainer.devices="0,1"']))
    with pytest.raises(ValueError, match="does not divide over 3 devices"):
        check_batch_split(compose([*run, 'trainer.devices="0,1,3"']))


@pytest.mark.parametrize(
    "strategy",
    [
        ["+trainer.strategy=ddp_spawn"],
        ["+trainer.strategy=ddp_notebook"],
        ["trainer=ddp_sim", "+trainer.strategy.start_method=fork"],
    ],
)
def test_a_strategy_that_trains_in_spawned_or_forked_processes_is_refused(compose, tiny, tmp_path, strategy):
    """ddp_spawn failed pickling the callbacks; ddp_fork trained in its children and this process
    reported "trained 0 steps" with no loss summary or sample grid."""
    run = [*tiny(tmp_path / "run"), "trainer.devices=2", *strategy]
    with pytest.raises(ValueError, match="trainer.strategy=.*trains? in processes it starts by (spawn|fork)"):
        main(compose(run))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "strategy",
    [
        ["+trainer.strategy=fsdp"],
        ["+trainer.strategy=deepspeed_stage_3"],
        ["trainer=ddp_sim", "trainer.strategy._target_=lightning.pytorch.strategies.FSDPStrategy"],
    ],
)
def test_a_strategy_that_shards_the_training_state_is_refused(compose, tiny, tmp_path, strategy):
    """FSDP and DeepSpeed passed the start-up checks, though the validation grid runs the network
    on rank 0 alone (a sharded forward waits for every rank), the NaN-loss stop reads each rank's
    own weights (shards: one rank could stop while the others wait for it), and DeepSpeed's
    checkpoints are folders that eval.py and stylize.py do not load."""
    run = [*tiny(tmp_path / "run"), "trainer.devices=2", *strategy]
    with pytest.raises(
        ValueError, match=r"trainer.strategy=\S+ shards the training state .* use trainer=ddp"
    ):
        main(compose(run))
    assert not (tmp_path / "run").exists()


def test_max_epochs_is_refused_as_no_epoch_of_the_stream_ever_ends(compose, tiny, tmp_path):
    """trainer.max_epochs=1 (to shorten a run) was no limit at all: the run went on to max_steps."""
    with pytest.raises(
        ValueError, match="max_epochs=1: the training stream is endless, so no epoch ever ends"
    ):
        main(compose([*tiny(tmp_path / "run"), "+trainer.max_epochs=1"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("override", ["data.val_size=32", "data.crop=48"])
def test_sizes_below_the_networks_style_minimum_fail_before_training(compose, tiny, tmp_path, override):
    """A val_size the network cannot take used to fail at the first validation, after
    val_check_interval steps and before any checkpoint: now before the first step."""
    cfg = compose([*tiny(tmp_path / "run"), "data.resize=null", override])
    key, value = override.split("=")
    with pytest.raises(ValueError, match=rf"{key}={value} px is below this network's 64-px minimum"):
        main(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_run_identity_covers_the_loss_and_names_a_changed_weight(compose):
    from samam.train import RUN_IDENTITY, identity_differences, run_identity

    base = compose(["experiment=demo"])
    assert set(run_identity(base)) == set(RUN_IDENTITY) >= {"seed", "model", "loss", "module", "data"}
    changed = run_identity(compose(["experiment=demo", "loss.style_weight=3.0"]))
    assert identity_differences(run_identity(base), changed) == ["loss.style_weight: 7.0 → 3.0"]
    earlier = run_identity(base)  # a run from before data.max_megapixels existed resumes
    del earlier["data"]["max_megapixels"]
    assert (
        identity_differences(earlier, run_identity(compose(["experiment=demo", "data.max_megapixels=50"])))
        == []
    )


def test_auto_resume_from_a_damaged_last_ckpt_says_so_and_names_a_checkpoint_to_use(tmp_path):
    """Not "belongs to another run" with every setting listed as differing."""
    from samam.train import resolve_resume

    (tmp_path / "checkpoints").mkdir()
    last, step = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "step0000004.ckpt"
    mine = {"experiment_name": "demo", "seed": 0}
    torch.save({"samam": {"config": mine, "identity": mine}}, step)
    last.write_bytes(step.read_bytes()[:100])  # cut short
    with pytest.raises(RuntimeError, match=f"{re.escape(str(last))} cannot be read \\(RuntimeError: ") as err:
        resolve_resume("auto", tmp_path, mine, resolved_config=mine)[0]
    assert f"Resume with ckpt_path={step} " in str(err.value) and "another run" not in str(err.value)
    assert resolve_resume(str(step), tmp_path, mine)[0] == str(step)  # and that resumes
    step.unlink()
    with pytest.raises(RuntimeError, match="Resume with ckpt_path=null"):
        resolve_resume("auto", tmp_path, mine, resolved_config=mine)[0]


def test_auto_refuses_a_fresh_start_over_step_checkpoints_without_last(tmp_path):
    """A full disk failed last.ckpt's save right after the first step checkpoint's: the rerun with
    ckpt_path=auto found no last.ckpt, started from step 0 without a word and overwrote that checkpoint."""
    from samam.train import resolve_resume

    assert resolve_resume("auto", tmp_path, {"seed": 0}) == (None, {})  # nothing there: a fresh start
    (tmp_path / "checkpoints").mkdir()
    step = tmp_path / "checkpoints" / "step0000002.ckpt"
    torch.save({"samam": {"identity": {"seed": 0}}}, step)
    with pytest.raises(
        RuntimeError,
        match=f"holds 1 checkpoint.* no last.ckpt .*Resume with ckpt_path={step} .*ckpt_path=null",
    ):
        resolve_resume("auto", tmp_path, {"seed": 0})
    assert resolve_resume(None, tmp_path, {"seed": 0}) == (None, {})  # ckpt_path=null: start over


def test_auto_resume_is_not_stopped_by_a_dangling_link_beside_last_ckpt(tmp_path):
    """Every auto start dated the folder's *.ckpt files: a link whose target is gone (a store not
    mounted, a step checkpoint removed) stopped the resume of a healthy last.ckpt with a raw
    FileNotFoundError. And a folder whose last.ckpt no callback saves was said to have lost it."""
    from samam.train import resolve_resume

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "best.ckpt").symlink_to(tmp_path / "gone.ckpt")
    last = ckpts / "last.ckpt"
    torch.save({"samam": {"identity": {"seed": 0}}}, last)
    assert resolve_resume("auto", tmp_path, {"seed": 0})[0] == str(last)
    last.rename(ckpts / "best-artfid-step0000002.ckpt")  # callbacks.checkpoint=null, best_artfid only
    with pytest.raises(RuntimeError, match=r"holds 1 checkpoint.*save_last=false.*best-artfid-step0000002"):
        resolve_resume("auto", tmp_path, {"seed": 0})


def test_a_ckpt_path_under_home_given_with_a_tilde_resumes_as_the_expanded_path(tmp_path, monkeypatch):
    """check_inputs_exist and Lightning expand ~; the run-folder logic (W&B run continued, CSV rows,
    the requeued fine-tune's last.ckpt) read ~/run/... as a relative path and did none of it."""
    from samam.train import resolve_resume, wandb_resume_id

    monkeypatch.setenv("HOME", str(tmp_path))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    step = run / "checkpoints" / "step0000002.ckpt"
    torch.save({"samam": {"config": {}, "identity": {"seed": 0}, "wandb_id": "id-run"}}, step)
    resolved = resolve_resume("~/run/checkpoints/step0000002.ckpt", run, {"seed": 0})[0]
    assert resolved == str(step) and wandb_resume_id(resolved, run) == "id-run"
    # a fine-tune from ~/start.ckpt, requeued: resumes its own last.ckpt
    torch.save(
        {"samam": {"config": {"ckpt_path": "~/start.ckpt"}, "identity": {"seed": 0}}},
        run / "checkpoints" / "last.ckpt",
    )
    assert resolve_resume("~/start.ckpt", run, {"seed": 0})[0] == str(run / "checkpoints" / "last.ckpt")


def test_a_sweep_arm_refused_another_runs_checkpoint_is_told_of_the_sweep_folder(tmp_path, monkeypatch):
    """An arm landing on another arm's folder (a sweep rerun with its values reordered) was told to
    set hydra.run.dir, which a sweep does not read: the same command failed again."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from samam.train import resolve_resume

    (tmp_path / "checkpoints").mkdir()
    torch.save({"samam": {"identity": {"seed": 0}}}, tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(
        HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"mode": RunMode.MULTIRUN}))
    )
    with pytest.raises(RuntimeError) as info:
        resolve_resume("auto", tmp_path, {"seed": 1})
    assert "(hydra.sweep.dir=..., or the sweep values in their earlier order)" in str(info.value)
    assert "hydra.run.dir" not in str(info.value)


def test_auto_resume_refuses_another_runs_checkpoint_and_continues_wandb_and_summary(tmp_path, caplog):
    from samam.callbacks import LossSummary
    from samam.train import checkpoint_meta, resolve_resume

    assert resolve_resume("auto", tmp_path, {})[0] is None  # nothing there: a fresh start
    assert resolve_resume("some.ckpt", tmp_path, {})[0] == "some.ckpt"
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    mine = {"experiment_name": "demo", "seed": 0, "model": {"embed_dim": 32, "backend": "mamba"}}
    mine |= {"module": {"optimizer": {"lr": 1e-4}}, "data": {"root": "${paths.data_dir}/demo"}}
    torch.save({"samam": {"config": {}, "identity": mine, "wandb_id": "abc123"}}, last)
    assert resolve_resume("auto", tmp_path, mine)[0] == str(last)
    assert checkpoint_meta(last)["wandb_id"] == "abc123"
    # the same run on a node without mamba-ssm: resumes
    same = {**mine, "model": {"embed_dim": 32, "backend": "torch"}}
    assert resolve_resume("auto", tmp_path, same)[0] == str(last)
    # a setting only one run has (a section set to null, a +key): refused too
    with pytest.raises(RuntimeError, match="module.optimizer.weight_decay: '<absent>' → 0.1"):
        resolve_resume(
            "auto", tmp_path, {**mine, "module": {"optimizer": {"lr": 1e-4, "weight_decay": 0.1}}}
        )[0]
    # a checkpoint from before identities were stored: compared on its resolved config
    torch.save({"samam": {"config": {**mine, "seed": 3}}}, last)
    with pytest.raises(RuntimeError, match="seed: 3 → 0"):
        resolve_resume("auto", tmp_path, mine, resolved_config=mine)[0]
    torch.save({"samam": {"config": mine, "identity": mine, "wandb_id": "abc123"}}, last)
    # another run in the same folder (two runs in one SLURM job): refused, saying what differs
    with pytest.raises(RuntimeError, match="belongs to another run \\(model.embed_dim: 32 → 64\\)"):
        resolve_resume("auto", tmp_path, {**mine, "model": {"embed_dim": 64, "backend": "mamba"}})[0]
    with pytest.raises(RuntimeError, match="module.optimizer.lr: 0.0001 → 0.0005; seed: 0 → 1"):
        resolve_resume("auto", tmp_path, {**mine, "seed": 1, "module": {"optimizer": {"lr": 5e-4}}})[0]
    # an explicit path starts from any checkpoint, but says that its optimiser state wins
    other = {**mine, "module": {"optimizer": {"lr": 5e-4}}}
    with caplog.at_level(logging.WARNING, logger="samam"):
        assert resolve_resume(str(last), tmp_path, other)[0] == str(last)
    assert "another run's checkpoint (module.optimizer.lr: 0.0001 → 0.0005)" in caplog.text
    assert "the lr is not applied" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="samam"):
        resolve_resume(str(last), tmp_path, mine)[0]  # its own checkpoint: nothing to say
    assert "another run" not in caplog.text
    # a fine-tune started from another run's file, requeued with the same command: its own
    # last.ckpt in this folder wins, so the steps since the start are not lost
    elsewhere = tmp_path / "pretrained.ckpt"
    torch.save({"samam": {"identity": {**mine, "seed": 7}}}, elsewhere)
    torch.save({"samam": {"config": {"ckpt_path": str(elsewhere)}, "identity": mine}}, last)
    assert resolve_resume(str(elsewhere), tmp_path, mine)[0] == str(last)
    assert resolve_resume(str(elsewhere), tmp_path, {**mine, "seed": 5})[0] == str(elsewhere)  # not its run
    assert resolve_resume(None, tmp_path, mine)[0] is None  # ckpt_path=null: start over
    # a rollback to one of the run's own step checkpoints is used as given
    step = tmp_path / "checkpoints" / "step0000002.ckpt"
    torch.save({"samam": {"config": {"ckpt_path": str(elsewhere)}, "identity": mine}}, step)
    assert resolve_resume(str(step), tmp_path, mine)[0] == str(step)

    def steps(cb: LossSummary, values: list[float]) -> None:
        for v in values:
            module = SimpleNamespace(last_losses={"loss_style": torch.tensor(v)})
            cb.on_train_batch_end(None, module, None, None, 0)

    summary = LossSummary(window=2)
    steps(summary, [4.0, 3.0, 2.0])
    resumed = LossSummary(window=2)
    resumed.load_state_dict(summary.state_dict())
    steps(resumed, [1.0])
    assert resumed.summary() == {"train_start": 3.5, "train_end": 1.5}  # whole run, not since resume


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


@pytest.mark.parametrize("signalled", ["rank 0", "rank 1"])
def test_sigterm_under_ddp_stops_every_rank_at_one_boundary_and_saves(tiny, tmp_path, signalled):
    """SIGTERM reaching one rank only (rank 1: the case Lightning's own handling hangs on, the
    others still in the next step's all-reduce) stops both ranks at the same step boundary:
    rank 0 saves last.ckpt, the run exits 143 in seconds. Rank 0 alone: forwarded to rank 1."""
    run = tmp_path / "ddp"
    args = [
        *tiny(run),
        "trainer=ddp_sim",
        "trainer.max_steps=1000",
        "callbacks.checkpoint.every_n_train_steps=1000",
    ]
    proc = _start([*args, f"hydra.run.dir={run}"], tmp_path)
    _wait_for(run / "samples" / "step0000002.png", proc)
    if signalled == "rank 0":
        proc.send_signal(signal.SIGTERM)
    else:
        (rank1,) = [c for c in _children(proc.pid) if "train.py" in Path(f"/proc/{c}/cmdline").read_text()]
        os.kill(rank1, signal.SIGTERM)
    try:
        out = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        for c in _children(proc.pid):
            os.kill(c, signal.SIGKILL)
        proc.kill()
        pytest.fail("the ranks did not stop together (hang): " + (proc.communicate()[0] or "")[-3000:])
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM at step" in out
    assert (
        torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
        >= 2
    )


def test_a_deferred_requeue_still_runs_when_no_step_boundary_comes(monkeypatch):
    """A long evaluation hook must not hold the requeue until SLURM's kill: a timer runs it."""
    from samam import callbacks

    calls = []
    monkeypatch.setattr(callbacks.os, "kill", lambda pid, sig: calls.append(("kill", sig)))
    stop = callbacks.CheckpointOnStop("unused", max_defer_s=0.5)
    stop._requeue = lambda signum, frame: calls.append(("requeue", signum))
    stop._defer_requeue(signal.SIGUSR2, None)
    assert calls[0] == ("kill", signal.SIGTERM)
    deadline = time.monotonic() + 20  # the timer thread may start late on a loaded machine
    while ("requeue", signal.SIGUSR2) not in calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls == [("kill", signal.SIGTERM), ("requeue", signal.SIGUSR2)]
    stop.after_stop()  # the stop comes later after all: no second requeue
    assert calls.count(("requeue", signal.SIGUSR2)) == 1


def test_warnings_every_rank_would_repeat_are_left_to_the_first_process(tmp_path, monkeypatch, caplog):
    """The W&B offline notice and the random loss network's warning came once per DDP rank."""
    from lightning.pytorch.utilities import rank_zero_only

    from samam.logging_utils import resolve_wandb_mode
    from samam.losses import build_vgg

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))  # none there
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with caplog.at_level(logging.WARNING):
        assert resolve_wandb_mode(None) == "offline"
        build_vgg("random")
    assert caplog.records == []
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with caplog.at_level(logging.WARNING):
        resolve_wandb_mode(None)
        build_vgg("random")
    assert "OFFLINE" in caplog.text and "RANDOM weights" in caplog.text


def test_wandb_mode_never_goes_online_without_credentials(tmp_path, monkeypatch, caplog):
    """No mode and no API key must mean offline: online would hang at a login prompt (ENV.md)."""
    from samam.logging_utils import resolve_wandb_mode

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))  # none there
    with caplog.at_level(logging.WARNING):
        assert resolve_wandb_mode(None) == "offline"
    assert "OFFLINE" in caplog.text
    assert resolve_wandb_mode("online") == "online"  # the config wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(None) == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode(None) == "online"
    # a misspelt mode was ignored, and with an API key the run went online
    monkeypatch.setenv("WANDB_MODE", "offine")
    with pytest.raises(ValueError, match="WANDB_MODE='offine': choose online, offline or disabled"):
        resolve_wandb_mode(None)
    with pytest.raises(ValueError, match="logger.wandb.mode='ofline'"):
        resolve_wandb_mode("ofline")


@pytest.mark.parametrize(
    "given, mode",
    [("dryrun", "offline"), ("run", "online"), ("shared", "shared"), ("offline", "offline")],
)
def test_wandb_mode_from_config_or_environment_accepts_the_same_modes(tmp_path, monkeypatch, given, mode):
    """logger.wandb.mode=dryrun was refused while WANDB_MODE=dryrun meant offline, and
    WANDB_MODE=shared (or run) was dropped for a guess from the credentials (offline without a key)."""
    from samam.logging_utils import resolve_wandb_mode

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))  # none there
    assert resolve_wandb_mode(given) == mode
    monkeypatch.setenv("WANDB_MODE", given)
    assert resolve_wandb_mode(None) == mode
    for name, value in (("WANDB_MODE", "dry-run"), ("logger.wandb.mode", "Offline")):
        monkeypatch.setenv("WANDB_MODE", value if name == "WANDB_MODE" else given)
        with pytest.raises(ValueError, match=f"{name}='{value}': choose online, offline or disabled"):
            resolve_wandb_mode(None if name == "WANDB_MODE" else value)


def test_netrc_credentials_mean_online_and_brief_list(tmp_path, monkeypatch):
    from samam.logging_utils import brief_list, resolve_wandb_mode

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_wandb_mode(None) == "online"
    assert brief_list(["a", "b"], 2) == "a; b" and brief_list(["a", "b", "c"], 2) == "a; b (+1 more)"


def test_a_tag_given_without_brackets_is_one_tag(compose, tmp_path):
    """`python train.py tags=baseline` reached W&B as eight one-letter tags."""
    import wandb
    from hydra.utils import instantiate

    cfg = compose(
        ["tags=baseline", "logger.wandb.mode=disabled", f"paths.output_dir={tmp_path}", "run_name=x"]
    )
    try:
        assert tuple(instantiate(cfg.logger.wandb).experiment.tags) == ("baseline",)
    finally:
        wandb.finish()
