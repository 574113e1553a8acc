"""OmegaConf resolvers of the configs, registered on import (train.py and samam.train import this module)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def slurm_gpus(accelerator: str, devices: Any) -> Any:
    """GPUs per node to ask SLURM for: none for a CPU trainer (trainer=cpu, ddp_sim: null leaves
    out --gpus-per-node), else one per device."""
    return None if accelerator == "cpu" else devices


OmegaConf.register_new_resolver("samam.slurm_gpus", slurm_gpus, replace=True)
