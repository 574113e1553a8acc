"""Hydra callbacks: checks that must run before Hydra acts on the config (the entry points' configs
list them under ``hydra.callbacks``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from samam.fileio import check_output_dir


class CheckRunDir(Callback):
    """Refuse a run folder (``hydra.run.dir``; ``hydra.sweep.dir`` under ``-m``) that cannot be made
    or written, with :func:`samam.fileio.check_output_dir`'s message, before Hydra makes it: its
    mkdir came first and failed with a bare FileNotFoundError or PermissionError traceback, before
    any of the entry point's own checks. A leading ``~`` is refused too: Hydra makes ``./~``.
    ``key``: the setting the user gives it by (eval.py's and stylize.py's run folder is
    ``output_dir`` with ``~`` expanded)."""

    def __init__(self, key: str = "hydra.run.dir") -> None:
        self.key = key

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_unusable(config, "hydra.run.dir", self.key)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_unusable(config, "hydra.sweep.dir", "hydra.sweep.dir")


def refuse_unusable(config: DictConfig, node: str, key: str) -> None:
    # One that does not resolve is left to Hydra, which names the interpolation. ${now:...} is
    # cached on the config, so Hydra then makes the very folder checked here.
    folder = OmegaConf.select(config, node, throw_on_resolution_failure=False)
    if folder is None:
        return
    if str(folder).startswith("~"):
        # Hydra makes the folder as written: a quoted ~ (the shell leaves it) became ./~
        raise SystemExit(
            f"{key} {str(folder)!r}: Hydra does not expand ~; give $HOME/... (unquoted) or an absolute path"
        )
    try:
        check_output_dir(Path(str(folder)), key)
    except OSError as err:
        # SystemExit: Hydra turns any Exception from a callback into a warning and goes on
        raise SystemExit(str(err)) from None
