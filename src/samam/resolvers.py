"""Hydra glue the entry points load before Hydra runs: the configs' OmegaConf resolvers (registered
on import; samam.train imports this module too) and the launcher check."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def slurm_gpus(accelerator: str, devices: Any) -> Any:
    """GPUs per node to ask SLURM for: none for a CPU trainer (trainer=cpu, ddp_sim: null leaves
    out --gpus-per-node), else one per device."""
    return None if accelerator == "cpu" else devices


OmegaConf.register_new_resolver("samam.slurm_gpus", slurm_gpus, replace=True)


AD_HOC = "default"  # train.yaml's experiment_name: no study named


def wandb_group(experiment_name: str) -> str:
    """The W&B group: the study's name, except in a sweep of no study (``python train.py -m
    scan=zigzag,cross``), which is grouped as ``default-<its folder's name>`` (its start time): every
    such sweep went to the one group "default". A requeued or resumed arm runs in the same folder,
    so it keeps its group."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if experiment_name != AD_HOC or not HydraConfig.initialized():
        return experiment_name
    hc = HydraConfig.get()
    return f"{experiment_name}-{Path(hc.sweep.dir).name}" if hc.mode == RunMode.MULTIRUN else experiment_name


OmegaConf.register_new_resolver("samam.wandb_group", wandb_group, replace=True)


def expanduser(path: str) -> str:
    """eval.yaml's and stylize.yaml's ``hydra.run.dir``: ``output_dir`` with ``~`` expanded, as
    evaluation expands it. A quoted ``output_dir='~/out'`` reaches Hydra as is, and it put
    ``.hydra/`` in ``./~/out`` while the images went to ``$HOME/out``."""
    return str(Path(path).expanduser())


OmegaConf.register_new_resolver("samam.expanduser", expanduser, replace=True)


# conf/hydra/launcher/slurm.yaml builds on submitit_slurm
SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def check_launcher_installed(argv: list[str]) -> None:
    """Refuse ``hydra/launcher=slurm`` without Hydra's submitit plugin, which Hydra answered with
    "In 'hydra/launcher/slurm': Could not load 'hydra/launcher/submitit_slurm'" and no package name."""
    for arg in argv:
        m = re.fullmatch(r"hydra/launcher=(\w+)", arg)
        if (
            m
            and m[1] in SUBMITIT_LAUNCHERS
            and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None
        ):
            raise SystemExit(
                f"{arg} needs Hydra's submitit launcher, which is not installed here: "
                "pip install hydra-submitit-launcher (it is in this package's train extra: pip install -e '.[train]')"
            )
