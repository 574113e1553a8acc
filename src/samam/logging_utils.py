"""Weights & Biases setup that never waits on a login prompt, run teardown, and CSV logs on resume."""

from __future__ import annotations

import csv
import io
import logging
import netrc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lightning.pytorch.loggers import WandbLogger

from samam.fileio import atomic_write
from samam.ranks import first_process

log = logging.getLogger(__name__)
WandbMode = Literal["online", "offline", "disabled", "shared"]
# Every mode wandb accepts, from the config or $WANDB_MODE alike -> the mode passed on: dryrun
# and run are its old names for offline and online.
WANDB_MODES: dict[str, WandbMode] = {
    "online": "online",
    "offline": "offline",
    "disabled": "disabled",
    "shared": "shared",
    "dryrun": "offline",
    "run": "online",
}


def brief_list(items: Sequence[str], most: int, sep: str = "; ") -> str:
    """The first ``most`` items joined, then how many more there are: for error messages."""
    more = f" (+{len(items) - most} more)" if len(items) > most else ""
    return sep.join(items[:most]) + more


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY", "") != "":
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str | None) -> WandbMode:
    """Config value first, then $WANDB_MODE, each one of :data:`WANDB_MODES` (a typo must not mean
    online); with neither and no API key: offline (never a login prompt)."""
    env = os.environ.get("WANDB_MODE", "")
    for name, value in (("logger.wandb.mode", mode), ("WANDB_MODE", env or None)):
        if value is None:
            continue
        if value not in WANDB_MODES:
            raise ValueError(
                f"{name}={value!r}: choose online, offline or disabled (or wandb's shared; dryrun and run "
                "are its old names for offline and online)"
            )
        return WANDB_MODES[value]
    if _has_wandb_credentials():
        return "online"
    if first_process():  # every rank of a DDP run resolves it alike
        log.warning(
            "W&B: no API key and no mode set -> logging OFFLINE. Sync later with `wandb sync <dir>`, "
            "or set logger.wandb.mode=online after `wandb login`, or WANDB_MODE=disabled to turn it off."
        )
    return "offline"


def wandb_logger(
    project: str,
    save_dir: str,
    entity: str | None = None,
    group: str | None = None,
    tags: str | list[str] | None = None,
    name: str | None = None,
    mode: str | None = None,
    log_model: bool | Literal["all"] = False,
    id: str | None = None,
    resume: str | None = None,
) -> WandbLogger:
    """WandbLogger with a resolved mode; the run starts lazily on first use (rank 0 only).
    ``id`` + ``resume="allow"`` continue an existing run (set by ``samam.train`` on resume)."""
    resolved = resolve_wandb_mode(mode)
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        group=group,
        # `tags=baseline` on the command line is a string: one tag, not one per letter
        tags=None if tags is None else [tags] if isinstance(tags, str) else list(tags),
        name=name,
        save_dir=save_dir,
        mode=resolved,
        log_model=log_model,
        id=id,
        resume=resume,
    )


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, so the next multirun job starts its own; a non-zero
    ``exit_code`` marks it failed (crashed or stopped) instead of finished."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def drop_redone_csv_rows(root: str | Path, step: int) -> int:
    """Remove the rows logged at ``step`` or later from every ``root/version_*/metrics.csv``; returns
    how many. A run resumed from its global step ``step`` trains those steps again and logs them
    in a new version (a step's rows are logged at step − 1, its validation's too), so after a kill
    past the checkpoint the versions together held the redone steps twice."""
    dropped = 0
    for path in sorted(Path(root).glob("version_*/metrics.csv")):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        kept = [r for r in rows if not (r.get("step") or "").isdigit() or int(r["step"]) < step]
        if fields is None or len(kept) == len(rows):
            continue
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        with atomic_write(path) as f:
            f.write(text.getvalue().encode())
        dropped += len(rows) - len(kept)
    return dropped
