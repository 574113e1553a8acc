"""Training entry logic: config -> objects -> Lightning. ``train.py`` at the repo root calls ``main``."""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import logging
import math
import os
import pickle
import re
import time
import types
import typing
import warnings
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint, ProgressBar
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning_utilities.core.imports import RequirementCache
from omegaconf import DictConfig, OmegaConf, open_dict

import samam.resolvers  # noqa: F401 (also in a SLURM job's process, which may not run train.py's imports)
from samam.callbacks import AtomicCheckpointIO, CheckpointOnStop, DropRedoneCsvRows, LossSummary
from samam.checkpoint import code_version, folder_given, load_mapped
from samam.fileio import atomic_write, unwritable
from samam.logging_utils import brief_list, finish_wandb
from samam.nn.samam import check_switches
from samam.ranks import first_process

log = logging.getLogger(__name__)


def world_size(devices: Any, num_nodes: int) -> int | None:
    """Processes a Trainer would start; None when it depends on the machine ('auto', -1)."""
    if isinstance(devices, int) and devices >= 0:
        return devices * num_nodes
    if isinstance(devices, str) and devices.isdigit():
        return int(devices) * num_nodes
    if isinstance(devices, str) and "," in devices:  # "0,1" or "1,": GPU indices, as Lightning reads them
        return len([d for d in devices.split(",") if d.strip()]) * num_nodes
    if isinstance(devices, list | tuple) or OmegaConf.is_list(devices):  # trainer.devices=[1]: a ListConfig
        return len(devices) * num_nodes
    return None


def processes(cfg: DictConfig) -> int:
    """Processes the run's trainer starts, whatever the strategy says (with strategy=auto Lightning
    picks DDP by itself for more than one)."""
    n = world_size(cfg.trainer.get("devices", 1), int(cfg.trainer.get("num_nodes", 1)))
    if n is None:  # devices=auto / -1: every visible GPU
        on_gpu = cfg.trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")
        n = (torch.cuda.device_count() if on_gpu else 1) * int(cfg.trainer.get("num_nodes", 1))
    return n


def _integer(value: Any) -> bool:
    """An int, not a bool: ``true`` is 1 to isinstance, and a switch given for a count must not pass."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_devices(cfg: DictConfig) -> None:
    """Refuse a trainer that would start no process (``trainer.devices=0``, ``[]``, ``-2``;
    ``trainer.num_nodes=0``) before anything is built: Lightning refused it only as the Trainer was
    built, after the networks, in its own words ("`Trainer(devices=0)` value is not a valid input")."""
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if not _integer(nodes) or nodes < 1:
        raise ValueError(f"trainer.num_nodes={nodes}: give the number of machines, 1 or more")
    below = _integer(devices) and devices < -1
    if below or world_size(devices, 1) == 0:
        raise ValueError(
            f"trainer.devices={devices}: no device to train on; give 1 or more (trainer=cpu: one CPU "
            "process; trainer.devices=1: one GPU; trainer.devices=-1: every visible GPU)"
        )


def check_launch(cfg: DictConfig) -> None:
    """Refuse Hydra multirun on any launcher but SLURM's (the in-process basic one, submitit_local)
    when a run would have more than one process, whatever the strategy says (with strategy=auto
    Lightning picks DDP by itself): Lightning would re-run this script per rank inside a sweep job,
    and the ranks of one job would join the sweep. Sweep multi-process jobs on a cluster launcher
    (hydra/launcher=slurm) instead."""
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    launcher = hc.runtime.choices.get("hydra/launcher", "basic")
    if hc.mode != RunMode.MULTIRUN:
        if launcher != "basic":
            log.warning(
                "hydra/launcher=%s applies to multirun only: without -m this run trains here, in this "
                "process (python train.py -m ... hydra/launcher=%s submits it)",
                launcher,
                launcher,
            )
        return
    # By the class, not the name: a launcher file of yours built on submitit_slurm is one too.
    # submitit_local is not: its jobs are local processes, and Lightning's per-rank relaunch of
    # one re-runs submitit's entry point with Hydra arguments, which it rejects.
    target = OmegaConf.select(hc, "launcher._target_", default=None) or ""
    if target.endswith(".SlurmLauncher") or launcher in ("slurm", "submitit_slurm"):
        return
    strategy = cfg.trainer.get("strategy", "auto")
    strategy_name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", ""))
    n = processes(cfg)
    if n > 1:
        raise RuntimeError(
            f"Refusing `-m` (multirun) with trainer={hc.runtime.choices.get('trainer')} "
            f"({strategy_name}, devices={cfg.trainer.get('devices')}, num_nodes={cfg.trainer.get('num_nodes')}: "
            f"{n} processes) on the '{launcher}' launcher: one run must be one process group, and Lightning "
            "would re-run this script per rank inside the sweep. Either sweep on SLURM "
            "(add hydra/launcher=slurm, or submitit_slurm) so each arm gets its own srun job, or run the "
            "arms one by one without -m (python train.py experiment=... trainer=ddp)."
        )


def check_strategy(cfg: DictConfig) -> None:
    """Refuse a strategy that shards the training state (FSDP, DeepSpeed, ModelParallel), and a DDP strategy
    that starts its processes by spawn or fork (``ddp_spawn``, ``ddp_fork``,
    ``ddp_notebook``, ``start_method``): Lightning trains in those and hands back only the weights and
    the logged metrics, while the callbacks (the SIGTERM checkpoint, the loss summary) and the run's
    report stay in this process. ddp_spawn failed pickling the callbacks ("cannot pickle
    '_thread.lock' object"); ddp_fork finished with "trained 0 steps" and no loss summary."""
    from lightning.pytorch.strategies import (
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
        StrategyRegistry,
    )

    strategy = cfg.trainer.get("strategy", "auto")
    if isinstance(strategy, str):
        entry = StrategyRegistry[strategy] if strategy in StrategyRegistry else {}  # its get() builds one
        cls, method = entry.get("strategy"), entry.get("init_params", {}).get("start_method")
    else:
        method = strategy.get("start_method") if OmegaConf.is_dict(strategy) else None
        target = strategy.get("_target_") if OmegaConf.is_dict(strategy) else None
        try:
            cls = get_object(target) if isinstance(target, str) else None
        except Exception:  # a class that does not import: the Trainer's build says so
            cls = None
    if isinstance(cls, type) and issubclass(cls, FSDPStrategy | DeepSpeedStrategy | ModelParallelStrategy):
        name = strategy if isinstance(strategy, str) else strategy.get("_target_")
        raise ValueError(
            f"trainer.strategy={name} shards the training state over the ranks (FSDP and DeepSpeed stage 3 the "
            "weights) and DeepSpeed saves checkpoints as folders, while this run needs the whole network on each "
            "rank (the validation grid runs it on rank 0 alone; the NaN-loss stop reads each rank's own weights) "
            "and eval.py and stylize.py load one checkpoint file. The network (20M parameters) fits one GPU: "
            "use trainer=ddp"
        )
    if method in ("spawn", "fork", "forkserver"):
        name = strategy if isinstance(strategy, str) else f"{strategy.get('_target_')}(start_method={method})"
        raise ValueError(
            f"trainer.strategy={name}: Lightning would train in processes it starts by {method} and hand back "
            "only the weights and metrics, while this run's callbacks (SIGTERM checkpoint, loss summary) and "
            "report stay in this one; use DDP's default start: trainer=ddp (GPUs) or trainer=ddp_sim (CPU)"
        )


def check_batch_split(cfg: DictConfig) -> None:
    """Refuse a global ``data.batch_size`` that does not divide over the run's processes before
    anything is built: the data module's set-up refused it only after the other ranks had started
    and every rank had built the networks."""
    from samam.data import split_batch

    batch_size, n = cfg.data.get("batch_size"), processes(cfg)
    if _integer(batch_size) and n > 1:
        split_batch(batch_size, n)


def check_appended_keys() -> None:
    """Refuse a top-level ``+key=value`` that is not a config group: no code reads a new top-level
    setting, and Hydra suggests the ``+`` for a mistyped name (``validate_before_trainig=true``:
    "To append to your config use +validate_before_trainig=true"), which was then ignored."""
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    for o in OverridesParser.create().parse_overrides(list(hc.overrides.task)):
        key = o.key_or_group
        if o.is_add() and "." not in key and o.package is None and key not in hc.runtime.choices:
            raise ValueError(
                f"{o.input_line}: train.py has no setting {key!r}, and nothing reads a new top-level one. "
                "A typo? (python train.py --cfg job lists the settings; tags=[...] labels a run)"
            )


def check_file_keys(cfg: DictConfig) -> None:
    """Refuse a top-level key that neither train.yaml (with its default groups) nor a chosen group
    defines and no ``${key}`` of the run's or Hydra's config reads: a misspelt one in an experiment
    file (``# @package _global_``: ``experiment_nmae: my_study``, ``sead: 1``) was merged in and
    ignored, and the run trained as the experiment it extends (its W&B group, its folder, seed 0).
    A ``+key=value`` is check_appended_keys's. Not checked (with a warning) where that config does
    not compose without the command line: one of yours whose defaults ask for a choice
    (``override experiment: ???``)."""
    if not HydraConfig.initialized() or not GlobalHydra.instance().is_initialized():
        return
    hc = HydraConfig.get()
    try:
        known = set(compose(hc.job.config_name))
    except HydraException as err:  # the run composed with its choices; without them, none is known
        log.warning(
            "top-level keys not checked for typos: %s does not compose without this command line (%s)",
            hc.job.config_name,
            str(err).splitlines()[0],
        )
        return
    for group in hc.runtime.choices:  # data, callbacks@callbacks.eval_metrics, a group of yours
        known.add(re.split(r"[./]", group.split("@")[-1])[0])
    # A value of yours that the run or Hydra reads: lr: ${my_lr}, hydra.run.dir: runs/${my_study}
    for node in (cfg, hc):
        # ${key...}, and ${oc.select:key,default} (its key, not "oc")
        known |= set(re.findall(r"\$\{(?:oc\.select:)?(\w+)", OmegaConf.to_yaml(node)))
    unread = sorted(set(cfg) - known)
    if unread:
        raise ValueError(
            f"{', '.join(unread)}: train.py has no such setting{'s' if len(unread) > 1 else ''}, and nothing "
            "reads a new top-level one. A typo in an experiment file? (python train.py --cfg job lists the settings)"
        )


# ckpt_path values Trainer.fit resolves itself: last and hpc are looked up as it would (lightning_ckpt_file)
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc")


def check_inputs_exist(cfg: DictConfig) -> None:
    """Every missing input in one error before anything is built: data folders, a loss-network
    file, the checkpoint to start from (and whether train.py can resume from it), a GPU trainer
    without a GPU, and each checkpoint callback's folder that cannot be written (else each run
    reveals only the next one). eval.py and stylize.py have their own, on their arguments
    (samam.evaluation.check_inputs_exist, samam.fileio.check_output_dir)."""
    from samam.losses import VGG19_FILE, VGG19_URL, VGG_NORMALISED_URL, VGG_SOURCES, cached_vgg19

    problems = []
    ckpt = cfg.get("ckpt_path")
    if (
        isinstance(ckpt, str)
        and ckpt not in ("auto", *LIGHTNING_CKPT_NAMES)
        and not ckpt.startswith("registry")
        and "://" not in ckpt  # a remote file (s3://...): Lightning opens it
    ):
        if Path(ckpt).expanduser().is_file():
            why = resume_file_problem(Path(ckpt).expanduser())
            problems += [f"ckpt_path: {why}"] if why else []
        else:
            problems.append(
                folder_given(f"ckpt_path: {ckpt}")
                if Path(ckpt).expanduser().is_dir()
                else f"ckpt_path: no file {ckpt} (absolute: {Path(ckpt).expanduser().absolute()}; ckpt_path=auto "
                "resumes this run folder's checkpoints/last.ckpt, ckpt_path=null starts fresh)"
            )
    for name, node in (cfg.get("callbacks") or {}).items():  # checkpoint folders, written hours in
        # (one that does not resolve here, ${hydra:...} without Hydra, is left to the run)
        folder = (
            OmegaConf.select(node, "dirpath", throw_on_resolution_failure=False)
            if OmegaConf.is_dict(node)
            else None
        )
        if isinstance(folder, str) and "://" not in folder and (why := unwritable(Path(folder).expanduser())):
            problems.append(f"callbacks.{name}.dirpath: {why}")
    if ckpt == "best":  # Trainer.fit refuses it, after the network is built
        problems.append(
            "ckpt_path=best: Lightning knows the best checkpoint only from one it has loaded, so a run cannot "
            "start from it; give the file (checkpoints/best-artfid-step….ckpt, say), or ckpt_path=auto"
        )
    for key in ("content_dir", "style_dir"):
        folder = cfg.data.get(key)
        if folder and Path(folder).expanduser().is_file():
            problems.append(f"data.{key}: {folder} is a file; give the folder that holds the images")
        elif folder and not Path(folder).expanduser().is_dir():
            problems.append(
                f"data.{key}: no folder {folder} (absolute: {Path(folder).expanduser().absolute()})"
            )
    vgg = cfg.get("loss", {}).get("vgg")
    if isinstance(vgg, str) and vgg not in VGG_SOURCES and not Path(vgg).expanduser().is_file():
        problems.append(
            f"loss.vgg: no file {vgg} (AdaIN's vgg_normalised.pth: {VGG_NORMALISED_URL}; or loss.vgg=imagenet)"
        )
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and torch.cuda.device_count() == 0:  # fork-safe
        problems.append(
            "trainer.accelerator=gpu, but no CUDA device is visible (trainer=cpu runs on the CPU)"
        )
    cached = cached_vgg19()
    if problems and vgg == "imagenet" and not cached.is_file():
        # Downloaded as the loss is built, which these problems stop short of: said now, so that an
        # offline machine does not learn of it only on the next try.
        problems.append(
            f"loss.vgg=imagenet: {VGG19_FILE} is not in {cached.parent}/ ($TORCH_HOME/hub/checkpoints/); the run "
            f"downloads it from {VGG19_URL}, which fails without internet: then copy the file there (or "
            f"loss.vgg=/path/to/vgg_normalised.pth, AdaIN's: {VGG_NORMALISED_URL})"
        )
    if problems:
        raise FileNotFoundError("this run cannot start:\n  " + "\n  ".join(problems))


def resume_file_problem(path: Path) -> str | None:
    """Why train.py cannot resume from ``path``, else None. Read here (load_mapped: its weights
    memory-mapped where the file system allows) so that a copy cut short, a bare weights file or
    another model's checkpoint is named before the data and networks are built: Lightning's own
    load failed after them, with "failed finding central directory", KeyError:
    'pytorch-lightning_version', or every network tensor listed as missing."""
    if not zipfile.is_zipfile(path):
        return (
            f"{path} is not a zip archive, as every checkpoint train.py writes is (torch.save): a copy cut "
            "short, or another format"
        )
    try:
        ckpt = load_mapped(path)
    except pickle.UnpicklingError:  # objects the safe unpickler refuses: Lightning's own load decides
        return None
    except Exception as err:
        return f"{path} cannot be read ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})"
    if (
        not isinstance(ckpt, dict)
        or "pytorch-lightning_version" not in ckpt
        or not isinstance(ckpt.get("state_dict"), dict)
    ):
        held = (
            f"keys e.g. {', '.join(map(str, list(ckpt)[:3]))}"
            if isinstance(ckpt, dict)
            else type(ckpt).__name__
        )
        return (
            f"{path} is no Lightning training checkpoint ({held}): train.py resumes the checkpoints it "
            "wrote (a run's checkpoints/last.ckpt)"
        )
    keys = [k.replace("_orig_mod.", "") for k in ckpt["state_dict"]]  # torch.compile's wrapper
    if any(k.startswith("net.") for k in keys):
        return None
    if any(k.startswith("model.content_encoder.0.proj.") for k in keys):
        return (
            f"{path} is the authors' released SaMam checkpoint: its weights are for stylize.py, eval.py and "
            "samam.load_official_checkpoint; train.py resumes only the checkpoints it wrote (network, optimizer, "
            "data stream)"
        )
    return (
        f"{path} is a Lightning checkpoint of another model (no net.* weights; keys e.g. "
        f"{', '.join(keys[:3]) or 'none'}): train.py resumes the checkpoints it wrote (a run's checkpoints/last.ckpt)"
    )


def switch_arguments(target: str) -> dict[str, tuple[Any, ...]]:
    """The on/off arguments of a ``_target_``: those annotated ``bool``, alone or with None or
    literal strings (ModelCheckpoint's ``save_last: bool | Literal["link"] | None``), mapped to
    the non-bool values they also accept. {} when the target cannot be inspected: instantiate
    then says why."""
    try:
        obj = get_object(target)
        inits = [vars(c).get("__init__") for c in reversed(obj.__mro__)] if isinstance(obj, type) else [obj]
        hints: dict[str, Any] = {}
        for f in inits:
            if inspect.isfunction(f):
                hints.update(typing.get_type_hints(f))
    except Exception:
        return {}
    out = {}
    for name, hint in hints.items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = typing.get_args(hint) if union else (hint,)
        others: list[Any] = []
        for m in members:
            if m is type(None):
                others.append(None)
            elif typing.get_origin(m) is typing.Literal:
                others.extend(a for a in typing.get_args(m) if not isinstance(a, bool))
            elif m is not bool:
                break  # also an int, a logger, ...: not an on/off setting
        else:
            if bool in members:
                out[name] = tuple(others)
    return out


def check_named_entries(cfg: DictConfig) -> None:
    """``callbacks`` and ``logger`` hold named configs, each switched off with null:
    ``callbacks.progress=false`` failed only after the network was built ("argument of type
    'bool' is not iterable")."""
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if node is not None and not OmegaConf.is_dict(node):
                raise ValueError(
                    f"{group}.{name}={node!r}: an entry is a config; switch it off with {group}.{name}=null"
                )


def check_switch_settings(cfg: DictConfig) -> None:
    """Refuse a non-bool on/off setting anywhere in a run config before anything is built:
    ``validate_before_training`` and every bool argument of the targets under data, loss, trainer,
    module (its optimizer), callbacks and logger (``trainer.enable_progress_bar=off``,
    ``data.pin_memory=no``). The network and the module check their own switches."""
    switches = {"validate_before_training": cfg.get("validate_before_training", False)}
    nodes = [(key, cfg.get(key)) for key in ("data", "loss", "trainer", "module", "callbacks", "logger")]
    while nodes:
        prefix, node = nodes.pop(0)
        if not OmegaConf.is_dict(node):  # switched off (null)
            continue
        if "_target_" in node and prefix != "module":
            for name, others in switch_arguments(node._target_).items():
                if name in node and node[name] not in others:
                    switches[f"{prefix}.{name}"] = node[name]
        nodes += [(f"{prefix}.{k}", v) for k, v in node.items_ex(resolve=False) if OmegaConf.is_dict(v)]
    check_switches(switches)


def check_run_length(cfg: DictConfig) -> None:
    """The run's length is ``trainer.max_steps``, 1 or more (or -1, no limit). Refuse the epoch
    settings: the training stream is endless and has no epochs, so ``trainer.max_epochs`` was no
    limit at all, and at ``trainer.limit_train_batches=N`` Lightning starts the stream over at the
    end of each N-batch "epoch", so every epoch drew the same N batches again (up to max_steps).
    fast_dev_run sets the limit itself, for one epoch."""
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and epochs != -1:
        raise ValueError(
            f"trainer.max_epochs={epochs}: the training stream is endless, so no epoch ever ends and the run "
            "would go on to trainer.max_steps; set the run's length with trainer.max_steps"
        )
    steps = cfg.trainer.get("max_steps", -1)  # Lightning's default: no limit
    if not _integer(steps) or (steps < 1 and steps != -1):
        # 0 "trained 0 steps" and wrote a last.ckpt, exit status 0; -5 failed once the networks were built
        # Hydra reads 2e5 as a float
        whole = (
            f" (written {int(steps)}, not {steps!r})"
            if isinstance(steps, float) and steps.is_integer()
            else ""
        )
        raise ValueError(
            f"trainer.max_steps={steps}: give the number of optimizer steps to train, an integer{whole}, 1 or "
            "more (-1: no limit, until the run is stopped)"
        )
    limit = cfg.trainer.get("limit_train_batches")
    if _integer(limit) and not cfg.trainer.get("fast_dev_run"):
        raise ValueError(
            f"trainer.limit_train_batches={limit}: the training stream is endless, and Lightning would start "
            f"it over every {limit} batches, training on those same batches again; set the run's length with "
            "trainer.max_steps (validation: trainer.val_check_interval)"
        )


def check_val_interval(cfg: DictConfig) -> None:
    """Refuse ``trainer.val_check_interval`` ≤ 0 before anything is built: 0 failed at the first
    training batch ("integer modulo by zero"), a negative value once the network and the loss
    network were built; a fraction or a malformed duration, as Lightning built the Trainer (a duration
    of 0 s or less, which Lightning took, would validate after every batch). And a
    duration in a run of several processes: Lightning decides on each rank by that rank's clock,
    so one rank validated while another went on training, and the run hung in their next collective."""
    interval = cfg.trainer.get("val_check_interval")
    every = duration(interval)
    if (isinstance(interval, str) or OmegaConf.is_dict(interval)) and (n := processes(cfg)) > 1:
        raise ValueError(
            f"trainer.val_check_interval={interval}: a duration times validation by each process's own "
            f"clock, and the {n} processes of this run would validate at different steps and hang; "
            "give a number of training batches (trainer.val_check_interval=1000)"
        )
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval <= 0:
        raise ValueError(
            f"trainer.val_check_interval={interval}: validation runs every val_check_interval training "
            'batches, so give 1 or more (or a duration, "DD:HH:MM:SS"); to train without validating, '
            "data.val_pairs=0"
        )
    # Lightning refuses these only as the Trainer is built, after the networks
    if isinstance(interval, float):
        raise ValueError(
            f"trainer.val_check_interval={interval}: a fraction of an epoch, and the training stream has no "
            "epochs; give a number of training batches (trainer.val_check_interval=1000)"
        )
    if isinstance(interval, str) and every is None:  # not "DD:HH:MM:SS"
        raise ValueError(
            f'trainer.val_check_interval={interval!r}: a duration is "DD:HH:MM:SS" ("00:00:30:00": every '
            "30 minutes) or {minutes:30}; a number of training batches is an integer"
        )
    if every is not None and every <= timedelta(0):  # Lightning would validate after every batch
        raise ValueError(
            f"trainer.val_check_interval={interval}: a duration of {every.total_seconds():g} s; give a "
            'positive one ("00:00:30:00": every 30 minutes)'
        )


def duration(interval: Any) -> timedelta | None:
    """``trainer.val_check_interval`` given as a duration, ``"DD:HH:MM:SS"`` or timedelta's keywords
    (``{minutes:30}``), as a timedelta, else None (a number of batches, or a malformed string, which
    check_val_interval refuses). Lightning takes a dict, but Hydra hands it a DictConfig, which it
    counted as batches: the Trainer failed once the networks were built ("'<=' not supported between
    instances of 'int' and 'DictConfig'")."""
    if isinstance(interval, str) and re.fullmatch(r"\d+:\d+:\d+:\d+", interval):
        days, hours, minutes, seconds = map(int, interval.split(":"))
        try:
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        except OverflowError as err:  # "9999999999:00:00:00": past timedelta.max
            raise ValueError(
                f"trainer.val_check_interval={interval!r}: past the longest duration Python takes ({err})"
            ) from None
    if not OmegaConf.is_dict(interval):
        return None
    try:
        return timedelta(**interval)
    except (TypeError, OverflowError) as err:  # a wrong keyword; {minutes:1e15} (past timedelta.max)
        raise ValueError(
            f"trainer.val_check_interval={interval}: a duration takes timedelta's keywords (days, hours, "
            f'minutes, seconds: {{minutes:30}}) or "DD:HH:MM:SS" ({err})'
        ) from None


# trainer.precision values that train this network (Lightning's aliases 32, 64, 16, bf16 included);
# 16-mixed runs as bf16-mixed on a CPU (Lightning's warning says so).
TRAIN_PRECISIONS = ("32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed")
_PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}
# What Lightning's TransformerEnginePrecision requires (it checks only when the Trainer is built).
TRANSFORMER_ENGINE = RequirementCache("transformer_engine>=0.11.0")


def check_precision(cfg: DictConfig) -> None:
    """Refuse a trainer.precision that cannot train before anything is built: float16 weights
    (16-true) became NaN at the first optimizer step (Adam's eps, 1e-8, is 0 in float16: a zero
    gradient gives 0/0), and a value Lightning does not know failed only once the network and
    the loss network were built. So did transformer-engine without its package."""
    precision = cfg.trainer.get("precision")
    name = _PRECISION_ALIASES.get(str(precision), str(precision))
    if name == "transformer-engine" and not TRANSFORMER_ENGINE:
        raise ModuleNotFoundError(
            f"trainer.precision={precision!r} needs NVIDIA's Transformer Engine (a CUDA package): {TRANSFORMER_ENGINE}"
        )
    if precision is None or name in (*TRAIN_PRECISIONS, "transformer-engine"):
        return
    why = (
        "float16 weights become NaN at the first Adam step (its eps, 1e-8, is 0 in float16)"
        if name in ("16-true", "transformer-engine-float16")
        else "not a precision Lightning knows"
    )
    raise ValueError(
        f"trainer.precision={precision!r}: {why}; choose one of {', '.join(TRAIN_PRECISIONS)} "
        "(16-mixed: float16 autocast over float32 weights; on a CPU Lightning runs it as bf16-mixed)"
    )


def check_deterministic(cfg: DictConfig) -> None:
    """Refuse ``trainer.deterministic=true`` where the network would scan with mamba-ssm (whose
    backward adds with atomics; ``warn``: a warning) before anything is built: the kernel's alert
    came only at the first training step, after the networks and validate_before_training."""
    from samam.ops.selective_scan import mamba_scan

    mode = cfg.trainer.get("deterministic")
    backend, mixer = cfg.model.get("backend", "auto"), cfg.model.get("mixer", "ssm")
    if mode not in (True, "warn") or mixer != "ssm" or backend not in ("auto", "mamba"):
        return
    on_gpu = cfg.trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    # auto picks mamba for CUDA tensors when it imports; an explicit mamba fails on its own without it
    if backend == "auto" and not (on_gpu and torch.cuda.is_available() and mamba_scan.mamba_available()):
        return
    message = (
        f"trainer.deterministic={mode} with model.backend={backend}, which scans with mamba-ssm here: "
        f"{mamba_scan.NONDETERMINISTIC}"
    )
    if mode != "warn":
        raise ValueError(f"{message}; or trainer.deterministic=warn to train on with a warning")
    if first_process():  # every DDP rank checks alike: said once
        log.warning(message)


MAX_SEED = 2**32 - 1


def check_seed(cfg: DictConfig) -> None:
    """Refuse a seed that is not an integer before anything is built: ``seed=null`` failed in the
    data module's set-up, after the networks ("object of type 'NoneType' has no len()"), and
    ``seed=abc`` with "invalid literal for int()". The data stream, the initialisation and a
    resume all follow the seed, so there is no unseeded run. Digits in a string pass:
    ``seed=${oc.env:SLURM_ARRAY_TASK_ID}`` gives one, which every user of the seed reads as that integer."""
    seed = cfg.get("seed")
    digits = isinstance(seed, str) and seed.isascii() and seed.isdigit()
    if isinstance(seed, bool) or not (isinstance(seed, int) or digits):
        raise TypeError(f"seed={seed!r}: give an integer (seed=0 is the experiments' seed)")
    if not 0 <= int(seed) <= MAX_SEED:  # numpy's range: seed=-1 failed in seed_everything, in numpy's words
        raise ValueError(
            f"seed={seed}: give an integer from 0 to {MAX_SEED} (seed=0 is the experiments' seed)"
        )


def check_optimizer(cfg: DictConfig) -> None:
    """Build ``module.optimizer`` and ``module.scheduler`` on one stand-in parameter before anything
    else is: ``module.optimizer.lr=-1`` failed as fit started, after the networks, with torch's
    "Invalid learning rate: -1" and no key; ``module.scheduler.decay=-1`` at the second step."""
    module = cfg.get("module") or {}
    key = "module.optimizer"
    try:
        optimizer = instantiate(module.get("optimizer"))([torch.nn.Parameter(torch.zeros(1))])
        key = "module.scheduler"
        if module.get("scheduler") is not None:
            instantiate(module.scheduler)(optimizer)
    except Exception as err:
        raise ValueError(f"{key}: {err}") from err


def default_run_name(cfg: DictConfig) -> str:
    """experiment name plus this job's command-line overrides (distinct per sweep arm)."""
    overrides: list[str] = []
    if HydraConfig.initialized():
        overrides = [
            o
            for o in HydraConfig.get().overrides.task
            if not o.startswith(("experiment=", "hydra", "paths.", "ckpt_path="))
        ]
    return ",".join([str(cfg.experiment_name)] + overrides)


# What makes two runs the same run: an auto-resume must match on all of it, compared as written
# (interpolations such as ${paths.data_dir} unresolved, so a moved repository or data folder
# still matches: a moved data folder then resumes on the data found there). Free to differ:
# trainer (max_steps to extend a run, devices), callbacks, logger, paths, run name, precision,
# and the keys (or sections) below (data.max_megapixels: a worker's memory guard, absent from earlier
# runs; the images it leaves out at set-up show in the image lists a resume compares).
RUN_IDENTITY = ("experiment_name", "seed", "model", "loss", "module", "data")
RUN_IDENTITY_FREE = (
    "model.backend",
    "data.num_workers",
    "data.pin_memory",
    "data.max_megapixels",
    "module.compile",
)


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """The RUN_IDENTITY part of a run config, interpolations unresolved."""
    out = {}
    for key in RUN_IDENTITY:
        value = cfg.get(key)
        out[key] = OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value
    return out


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved → current`` for every identity setting that differs, including settings only
    one run has (a section set to null, a ``+key`` added, a key added by a code update)."""
    a, b = _flat(saved), _flat(current)
    free = tuple(f"{p}." for p in RUN_IDENTITY_FREE)
    keys = sorted(k for k in a.keys() | b.keys() if k not in RUN_IDENTITY_FREE and not k.startswith(free))
    missing = "<absent>"
    return [
        f"{k}: {a.get(k, missing)!r} → {b.get(k, missing)!r}"
        for k in keys
        if a.get(k, missing) != b.get(k, missing)
    ]


def lightning_ckpt_file(ckpt_path: str | None, callbacks: list[Any], root_dir: str | Path) -> str | None:
    """The file Trainer.fit would load for Lightning's names, so that a run started with one is
    started from that file (the identity check, the CSV rows, the W&B run): ``last``, the newest
    ``last*.ckpt`` of the checkpoint callbacks (None, a fresh start, where there is none, as in
    Lightning); ``hpc``, the highest ``hpc_ckpt_<n>.ckpt`` in the trainer's ``root_dir``
    (Lightning's SLURM requeue writes them there). Any other value is returned as it is."""
    if ckpt_path == "last":
        found = []
        for cb in callbacks:
            if isinstance(cb, OnExceptionCheckpoint):
                found += [Path(cb.ckpt_path)] if Path(cb.ckpt_path).is_file() else []
            elif isinstance(cb, ModelCheckpoint):
                # None: Lightning would look in a folder named after the logger; a remote one: not here
                if cb.dirpath is None or "://" in str(cb.dirpath):
                    raise ValueError(
                        f"ckpt_path=last: the checkpoint callback {type(cb).__name__} saves in "
                        f"{cb.dirpath or 'the logger folder'}; give the checkpoint file, or ckpt_path=auto "
                        "(this run folder's checkpoints/last.ckpt)"
                    )
                found += Path(cb.dirpath).glob(f"{cb.CHECKPOINT_NAME_LAST}*{cb.FILE_EXTENSION}")
        if not found:
            log.warning(
                "ckpt_path=last: no last checkpoint in the checkpoint callbacks' folders: a fresh start"
            )
            return None
        return str(max(found, key=lambda p: p.stat().st_mtime))
    if ckpt_path == "hpc":
        numbered = {
            int(m[1]): p
            for p in Path(root_dir).expanduser().glob("hpc_ckpt_*.ckpt")
            if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))
        }
        if not numbered:  # (also a remote root_dir, not looked in here: give the file)
            raise FileNotFoundError(
                f"ckpt_path=hpc: no hpc_ckpt_<n>.ckpt in {root_dir} (Lightning's SLURM requeue writes them); "
                "give the checkpoint file, or ckpt_path=auto (this run folder's checkpoints/last.ckpt)"
            )
        return str(numbered[max(numbered)])
    return ckpt_path


def _other_checkpoints(last: Path) -> list[Path]:
    """The checkpoints beside ``last`` (last.ckpt), oldest first; listed only where ``auto`` names
    one (hundreds with save_top_k=-1, on a shared file system). A link whose target is gone is no
    checkpoint rather than a crash."""
    dated = [(p.stat().st_mtime, p) for p in last.parent.glob("*.ckpt") if p != last and p.is_file()]
    return [p for _, p in sorted(dated)]


def resolve_resume(
    ckpt_path: str | None,
    output_dir: str | Path,
    identity: dict[str, Any],
    resolved_config: dict[str, Any] | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """The checkpoint file to start from and its metadata (:func:`checkpoint_meta`; read once, here:
    the W&B run id is taken from it too), {} for none.

    ``auto``: this run folder's ``checkpoints/last.ckpt`` if it exists (a requeued, preempted or
    restarted job resumes where it stopped), else a fresh start, refused where ``checkpoints/`` holds
    other checkpoints (last.ckpt's save failed, or no callback saves it: a fresh start would overwrite them). The checkpoint must come from
    the same run (``identity``, see :func:`run_identity`: experiment, seed, network, loss,
    optimiser, data, as written), else the run stops rather than resume or overwrite another
    run: two runs in one SLURM job share its folder. A checkpoint from before identities were
    stored is compared on its resolved config (``resolved_config``).

    A file is returned as it is (``~`` expanded), except when this run folder's ``last.ckpt`` comes from this
    same run started with this same ``ckpt_path`` (a fine-tune requeued or rerun with its
    command): then that ``last.ckpt``, so the steps since the start are kept. Any other file,
    such as one of the run's own step checkpoints (a rollback), is used as given."""
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    if ckpt_path not in ("auto", None) and "://" not in ckpt_path:
        ckpt_path = os.path.expanduser(ckpt_path)  # ~/runs/...: as check_inputs_exist and Lightning read it
    if ckpt_path not in ("auto", None) and last.is_file() and Path(ckpt_path).resolve() != last.resolve():
        own = checkpoint_meta(last)
        started_from = (own.get("config") or {}).get("ckpt_path")
        same_start = (
            started_from is not None
            and Path(str(started_from)).expanduser().resolve() == Path(ckpt_path).resolve()
        )
        if (
            same_start
            and own.get("identity") is not None
            and not identity_differences(own["identity"], identity)
        ):
            log.warning(
                "ckpt_path=%s: this run folder holds this run's own %s (requeued or rerun): resuming "
                "from it so no step is lost. To start again from %s, give the run a new folder.",
                ckpt_path,
                last,
                ckpt_path,
            )
            return str(last), own
    if ckpt_path != "auto":
        meta = checkpoint_meta(ckpt_path)
        differ = identity_differences(meta["identity"], identity) if meta.get("identity") is not None else []
        if differ:
            log.warning(
                "ckpt_path=%s is another run's checkpoint (%s). Training continues from its state: "
                "step, optimizer and learning-rate schedule included, so a changed optimiser "
                "setting such as the lr is not applied.",
                ckpt_path,
                brief_list(differ, 8),
            )
        return ckpt_path, meta
    if not last.is_file():
        # a fresh start would overwrite them (their run's own steps, most likely)
        if others := _other_checkpoints(last):
            raise RuntimeError(
                f"ckpt_path=auto: {last.parent} holds {len(others)} checkpoint(s) but no last.ckpt (its save failed, "
                "on a full disk say; it was removed; or no checkpoint callback saves it: save_last=false, "
                f"callbacks.checkpoint=null). Resume with ckpt_path={others[-1]} (the newest), or "
                "pass ckpt_path=null to start over there (overwriting them)."
            )
        return None, {}
    try:
        meta = _read_meta(last)
    except Exception as err:  # damaged (a full disk, a copy cut short): not "another run's"
        others = _other_checkpoints(last)
        instead = (
            f"ckpt_path={others[-1]} (the newest other checkpoint there)" if others else "ckpt_path=null"
        )
        raise RuntimeError(
            f"ckpt_path=auto: {last} cannot be read ({type(err).__name__}: {err}). Resume with {instead}; "
            "the damaged file is replaced at the run's next save."
        ) from None
    if meta.get("identity") is not None:
        differ = identity_differences(meta["identity"], identity)
    else:
        saved, now = meta.get("config") or {}, resolved_config or {}
        differ = identity_differences(
            {k: saved.get(k) for k in RUN_IDENTITY}, {k: now.get(k) for k in RUN_IDENTITY}
        )
    if differ:
        # In a sweep the folder is hydra.sweep.dir/<arm number>: hydra.run.dir is not read there.
        sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        folder = (
            "hydra.sweep.dir=..., or the sweep values in their earlier order"
            if sweep
            else "hydra.run.dir=..."
        )
        raise RuntimeError(
            f"ckpt_path=auto: {last} belongs to another run ({brief_list(differ, 8)}). Give this run its own "
            f"folder ({folder}), pass ckpt_path=null to start over there, or ckpt_path=<file> "
            "to start from that checkpoint anyway."
        )
    log.info("ckpt_path=auto: resuming from %s", last)
    return str(last), meta


def resumed_vgg(vgg: Any, ckpt_path: str | None, meta: dict[str, Any]) -> dict[str, str]:
    """The loss network of a run resumed with ``loss.vgg=imagenet_if_cached``: the one its checkpoint
    records (``samam.loss_vgg``), not the one the file on disk gives now. A VGG file copied in mid-run
    turned a run's random loss network into ImageNet's at its next resume (the losses changed meaning),
    and one gone did the reverse. As ``instantiate`` keywords for the loss; {} when nothing is to keep
    (another loss.vgg, a fresh start, a checkpoint of a run with another loss.vgg or from before the record)."""
    from samam.losses import VGG19_FILE, cached_vgg19

    used = meta.get("loss_vgg")
    started_with = ((meta.get("identity") or {}).get("loss") or {}).get("vgg")
    if vgg != "imagenet_if_cached" or started_with != vgg or used not in ("imagenet", "random"):
        return {}
    cached = cached_vgg19()
    if used == "imagenet" and not cached.is_file():
        raise FileNotFoundError(
            f"loss.vgg=imagenet_if_cached: {ckpt_path} was trained with torchvision's ImageNet VGG-19, and "
            f"{VGG19_FILE} is no longer in {cached.parent}/ ($TORCH_HOME/hub/checkpoints/): put it back there to "
            "resume (a random loss network would change what the losses measure), or start a new run "
            "(ckpt_path=null, or another folder)"
        )
    if used == "random" and cached.is_file():
        log.warning(
            "loss.vgg=imagenet_if_cached: %s was trained with a RANDOM VGG-19 (%s was not in %s then); the "
            "resumed run keeps it, so that the losses keep their meaning. For ImageNet's, start a new run "
            "(ckpt_path=null, or another folder).",
            ckpt_path,
            VGG19_FILE,
            cached.parent,
        )
    return {"vgg": used}


def check_sizes(datamodule: Any, net: Any) -> None:
    """Training crops and validation images must reach the network's smallest style side (the
    style embedder pools the tokens 2^stages times): checked before training, not at the first
    validation after up to val_check_interval batches."""
    least = net.min_style_side
    for key in ("crop", "val_size"):
        value = getattr(datamodule, key, None)
        if value is not None and value < least:
            raise ValueError(
                f"data.{key}={value} px is below this network's {least}-px minimum for style images "
                f"(patch size {net.cfg.patch_size}); use data.{key}={least} or more"
            )


def checkpoint_meta(path: str | Path | None) -> dict[str, Any]:
    """A checkpoint's ``samam`` entry (run config, identity, W&B id), or {} for none. Read with
    load_mapped: memory-mapped where the file system allows, so the weights are not read."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        return _read_meta(path)
    except Exception:  # not ours, an old format, or damaged: Lightning's own load will say so
        return {}


def _read_meta(path: str | Path) -> dict[str, Any]:
    # plain containers only: the safe unpickler reads them
    return load_mapped(path).get("samam") or {}


def wandb_resume_id(
    ckpt_path: str | Path | None, output_dir: str | Path, meta: dict[str, Any] | None = None
) -> str | None:
    """The W&B run id to continue: only a run resumed from its own folder's checkpoints
    continues its W&B run; from another run's checkpoint (fine-tuning, a sweep of arms from one
    checkpoint) a new W&B run starts. ``meta``: the checkpoint's metadata if already read."""
    if ckpt_path is None or not _in_run_folder(ckpt_path, output_dir):
        return None
    return (checkpoint_meta(ckpt_path) if meta is None else meta).get("wandb_id")


def _in_run_folder(ckpt_path: str | Path, output_dir: str | Path) -> bool:
    # checkpoints/*.ckpt, or Lightning's hpc_ckpt_<n>.ckpt (SLURM requeue) in the folder itself
    path, folder = Path(ckpt_path).resolve(), Path(output_dir).resolve()
    return path.parent.parent == folder or (path.parent == folder and path.name.startswith("hpc_ckpt_"))


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if group is None:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _instantiate_plugins(given: Any) -> list[Any]:
    """trainer.plugins as Lightning takes them: one or a list, each a config or a name."""
    if given is None:
        return []
    items = list(given) if OmegaConf.is_list(given) else [given]
    return [instantiate(p) if OmegaConf.is_dict(p) else p for p in items]


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(precision: str) -> None:
    """torch.set_float32_matmul_precision, refusing a value torch would only warn about and ignore."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(
            f"float32_matmul_precision={precision!r}: choose one of {', '.join(MATMUL_PRECISIONS)}"
        )
    torch.set_float32_matmul_precision(precision)


RUN_LOCK_WAIT_S = 120.0  # how long a run waits for its folder's lock before refusing to start


def _hydra_files(folder: Path) -> list[Path]:
    """The config files Hydra wrote into this run folder (``.hydra/*.yaml``) before the run started."""
    subdir = HydraConfig.get().output_subdir if HydraConfig.initialized() else ".hydra"
    return [] if subdir is None else sorted((folder / subdir).glob("*.yaml"))


@contextlib.contextmanager
def exclusive_run_folder(output_dir: str | Path) -> Iterator[None]:
    """Hold ``output_dir/.train.lock`` while the run trains (on its first process only; the kernel
    drops the lock when the process ends, SIGKILL included). Two runs started at once in one folder
    (``python train.py ... &`` twice in one SLURM job, whose folder is the job id) would overwrite
    each other's checkpoints before either had one for ``ckpt_path=auto`` to check: the second
    stops here. Where the file system has no flock, nothing is checked.

    Hydra writes ``.hydra/`` before any of this code runs, so the holder keeps a copy of its own
    files in the lock file, and a run that stops here (refused, or interrupted while waiting)
    puts them back."""
    if not first_process():
        yield
        return
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None  # set when the lock is first found held
    with open(folder / ".train.lock", "a+") as lock:
        try:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    # A job requeued after its node failed can find that node's lock still held on
                    # NFS until the server's lease runs out (~90 s): wait before refusing.
                    if deadline is None:
                        deadline = time.monotonic() + RUN_LOCK_WAIT_S
                        log.warning(
                            "%s is locked by another process (a run training there, or a failed node's "
                            "lock the file server has not released yet): waiting up to %.0f s",
                            folder / ".train.lock",
                            RUN_LOCK_WAIT_S,
                        )
                    elif time.monotonic() >= deadline:
                        raise RuntimeError(
                            f"another run is training in {folder} now, and two runs in one folder overwrite "
                            "each other's checkpoints: give this one its own folder, e.g. "
                            "hydra.run.dir=<that folder>_<arm> (under SLURM the default folder is the job id, "
                            "shared by every run of the job)"
                        ) from None
                    time.sleep(1)
                except OSError as err:  # e.g. a Lustre mount without flock
                    log.debug("no lock on %s (%s): concurrent runs there are not detected", folder, err)
                    break
        except BaseException:
            _restore_holder_files(folder, lock)
            raise
        lock.seek(0)
        lock.truncate()
        json.dump({str(p.relative_to(folder)): p.read_text() for p in _hydra_files(folder)}, lock)
        lock.flush()
        yield


def put_back_if_training_there(output_dir: str | Path) -> None:
    """For a run refused before the lock: if another run holds ``output_dir``'s lock, put back the
    Hydra files this run's Hydra overwrote (as a run refused at the lock does). Writes nothing else."""
    folder = Path(output_dir)
    if not first_process():
        return
    with contextlib.suppress(FileNotFoundError), open(folder / ".train.lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free: no run is training there
        except BlockingIOError:
            _restore_holder_files(folder, lock)
        except OSError:  # no flock here: exclusive_run_folder checks nothing either
            pass


def _restore_holder_files(folder: Path, lock: Any) -> None:
    """Put back the Hydra files of the run holding the lock, which this run's Hydra overwrote."""
    lock.seek(0)
    try:
        saved = json.loads(lock.read() or "{}")
    except ValueError:  # written by a version that kept nothing there
        return
    for name, text in saved.items():
        with atomic_write(folder / name) as f:
            f.write(text.encode())
    if saved:
        log.warning("%s: put back the files of the run training there (%s)", folder, ", ".join(saved))


def main(cfg: DictConfig) -> dict[str, float]:
    """Train one run. Returns the final callback metrics (Hydra sweepers can optimise them)."""
    try:
        check_devices(cfg)  # first: the checks below count the processes from it
        check_launch(cfg)
        check_strategy(cfg)
        check_batch_split(cfg)
        check_appended_keys()
        check_file_keys(cfg)
        check_named_entries(cfg)
        check_switch_settings(cfg)
        check_run_length(cfg)
        check_val_interval(cfg)
        check_precision(cfg)
        check_deterministic(cfg)
        check_seed(cfg)
        check_optimizer(cfg)
        check_inputs_exist(cfg)
    except BaseException:
        # Without Hydra, paths.output_dir may not resolve (and no Hydra wrote files to put back).
        output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
        if output_dir is not None:
            put_back_if_training_there(output_dir)
        raise
    with exclusive_run_folder(cfg.paths.output_dir):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    set_matmul_precision(cfg.get("float32_matmul_precision", "highest"))
    if cfg.run_name is None:
        with open_dict(cfg):
            cfg.run_name = default_run_name(cfg)
    L.seed_everything(cfg.seed, workers=True)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(run_config, dict)

    identity = run_identity(cfg)
    code = code_version()  # the commit this run trains with: in its checkpoints and logged hyperparameters
    callbacks = _instantiate_all(cfg.get("callbacks"))  # ckpt_path=last is looked for in their folders
    if cfg.trainer.get("enable_progress_bar") is False:  # the bar off (a SLURM log): its callback too
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    root_dir = cfg.trainer.get("default_root_dir") or os.getcwd()  # Lightning's, for ckpt_path=hpc
    ckpt_path = lightning_ckpt_file(cfg.ckpt_path, callbacks, root_dir)
    ckpt_path, meta = resolve_resume(ckpt_path, cfg.paths.output_dir, identity, run_config)
    loss_kwargs = resumed_vgg(cfg.loss.get("vgg"), ckpt_path, meta)  # before data and networks are built
    if cfg.get("logger") and cfg.logger.get("wandb") is not None:
        wandb_id = wandb_resume_id(ckpt_path, cfg.paths.output_dir, meta)
        if wandb_id is not None:
            with open_dict(cfg):
                cfg.logger.wandb.id, cfg.logger.wandb.resume = wandb_id, "allow"

    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model)
    check_sizes(datamodule, net)
    loss = instantiate(cfg.loss, **loss_kwargs)
    module = instantiate(cfg.module, net=net, loss=loss)
    module.run_config = run_config  # not via instantiate: it would build every _target_ inside it
    module.run_identity = identity
    module.run_code = code
    loggers = _instantiate_all(cfg.get("logger"))
    if ckpt_path is not None and _in_run_folder(ckpt_path, cfg.paths.output_dir):
        callbacks.append(DropRedoneCsvRows())  # once the checkpoint is restored: a failed load drops nothing
    # With no ModelCheckpoint asked for (callbacks=none, callbacks.checkpoint=null), Lightning
    # would add its own, writing epoch=…-step=….ckpt into the logger's folder.
    no_checkpoints = "enable_checkpointing" not in cfg.trainer and not any(
        isinstance(c, ModelCheckpoint) for c in callbacks
    )
    # trainer.plugins kept: the keyword below replaced them (a precision plugin trained in fp32)
    trainer_cfg = cfg.trainer.copy()
    with open_dict(trainer_cfg):
        plugins = _instantiate_plugins(trainer_cfg.pop("plugins", None))
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    every = duration(cfg.trainer.get("val_check_interval"))
    trainer: L.Trainer = instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers if len(loggers) > 0 else False,
        plugins=plugins,
        **({"enable_checkpointing": False} if no_checkpoints else {}),
        **({"val_check_interval": every} if every is not None else {}),
    )
    for lg in loggers:
        lg.log_hyperparams({**run_config, "code": code})

    try:
        if cfg.validate_before_training and ckpt_path is None:
            trainer.validate(module, datamodule=datamodule, verbose=False)
            # fit starts with the flag cleared: a SIGTERM during this validation would be forgotten
            if trainer.strategy.reduce_boolean_decision(trainer.received_sigterm, all=False):
                raise SIGTERMException
        with _frozen_loss_network_expected(module):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        last = _final_checkpoint(trainer)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if trainer.is_global_zero:
            _report(trainer, module, last)
    except BaseException as err:
        # SIGTERMException: raised by Lightning at a step boundary, where CheckpointOnStop saved.
        stopped = isinstance(err, SIGTERMException)
        finish_wandb(exit_code=143 if stopped else 1)
        if not stopped:
            log.exception("training failed")  # a deferred requeue below exits, hiding the traceback
        for cb in trainer.callbacks:
            if isinstance(cb, CheckpointOnStop):
                cb.after_stop()  # a deferred submitit requeue (also one asked for before a crash)
        if stopped:
            close_process_group()  # the ranks stopped together: nothing is in flight
            raise SystemExit(143) from None  # not 0: SLURM and shells must see the run did not finish
        raise
    finish_wandb()
    close_process_group()
    return metrics


def close_process_group() -> None:
    """Destroy the default process group of a run whose ranks ended together. Lightning leaves a
    gloo group (trainer=ddp_sim; NCCL it destroys at exit) to the interpreter's shutdown, where
    its worker threads could be torn down unjoined: now and then a finished run aborted at exit
    ("terminate called without an active exception", status 134; pytorch#65231). Not after a
    failure: a rank still inside a collective would keep the destruction waiting."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _frozen_loss_network_expected(module: L.LightningModule) -> Iterator[None]:
    """Lightning warns when fit starts with modules in eval mode ("may lead to unexpected
    behavior"): the loss VGG's are, on purpose (frozen, see VGGEncoder.train), and every run
    printed the warning. Silenced only while those are all; any other module in eval mode still
    gets it."""
    loss = getattr(module, "loss", None)
    frozen = {id(m) for m in loss.modules()} if isinstance(loss, torch.nn.Module) else set()
    others = [name for name, m in module.named_modules() if not m.training and id(m) not in frozen]
    with warnings.catch_warnings():
        if not others:
            warnings.filterwarnings(
                "ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training"
            )
        yield


def _final_checkpoint(trainer: L.Trainer) -> Path | None:
    """Save last.ckpt for the final step if the periodic callback has not (max_steps off the interval)."""
    ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if ckpt is None or ckpt.dirpath is None or trainer.fast_dev_run:  # debug=fdr writes nothing
        return None
    last = Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
    # Rank 0 decides and every rank follows: save_checkpoint is collective, and ranks on a
    # non-coherent shared file system could disagree about is_file().
    missing = trainer.strategy.broadcast(
        ckpt._last_global_step_saved != trainer.global_step or not last.is_file()
    )
    if missing:
        trainer.save_checkpoint(last)
    return last


def _report(trainer: L.Trainer, module: Any, last: Path | None) -> None:
    lines = [f"trained {trainer.global_step} steps"]
    if last is not None:
        lines.append(f"checkpoint: {last.resolve()}")
    if getattr(module, "last_grid_path", None) is not None:
        lines.append(f"sample grid (content | style | output): {Path(module.last_grid_path).resolve()}")
    summary = next((c for c in trainer.callbacks if isinstance(c, LossSummary)), None)
    if summary is not None:
        s = summary.summary()
        name = "style loss" if summary.key == "loss_style" else summary.key  # what it averaged
        for key, what in (
            ("val", "fixed validation pairs"),
            ("train", f"mean of first/last {summary.averaged} step{'s' if summary.averaged != 1 else ''}"),
        ):
            if f"{key}_start" in s:
                a, b = s[f"{key}_start"], s[f"{key}_end"]
                if not (math.isfinite(a) and math.isfinite(b)):  # a diverged run: no 'nan% higher'
                    change = "not finite"
                elif a == 0:  # no percentage of nothing: b / a failed the finished run here
                    change = "unchanged" if b == 0 else "higher"
                else:
                    change = f"{abs(100 * (1 - b / a)):.1f}% {'lower' if b <= a else 'higher'}"
                lines.append(f"{name} ({what}): start {a:.4g} -> end {b:.4g} ({change})")
    print("\n".join(lines), flush=True)
