"""Which process of a run this is, and which one says what every process would say alike; no
Lightning needed (the core install has none, and building a network in a notebook should not
load it)."""

from __future__ import annotations

import os
import sys

import torch


def first_process() -> bool:
    """Rank 0 of node 0, or the one process. Where Lightning is imported already (training), its
    rank: it knows the ranks before the process group exists (the network, the data and the run
    folder's lock come before it), taking this process's rank from the launcher's variables, which
    give the first process of every node rank 0 under Lightning's own launcher: hence NODE_RANK.
    Without Lightning, rank 0 of an initialised torch.distributed group, or the one process."""
    if sys.modules.get("lightning") is not None:
        from lightning.pytorch.utilities import rank_zero_only

        return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def process_group() -> tuple[int, int]:
    """(rank, world size) in the initialised torch.distributed group, else (0, 1): one process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
