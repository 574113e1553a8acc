"""SaMam: style-aware state-space (Mamba) arbitrary style transfer.

Heavy modules load lazily, so `import samam` stays cheap and never imports
lightning, hydra, wandb or mamba_ssm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "SaMam": "samam.nn.samam",
    "SaMamConfig": "samam.nn.samam",
    "load_official_checkpoint": "samam.checkpoint",
    "load_checkpoint": "samam.checkpoint",
    "load_model": "samam.checkpoint",
}

__all__ = ["SaMam", "SaMamConfig", "load_checkpoint", "load_model", "load_official_checkpoint"]

if TYPE_CHECKING:
    from samam.checkpoint import load_checkpoint, load_model, load_official_checkpoint
    from samam.nn.samam import SaMam, SaMamConfig


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'samam' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, so dir(samam) and a notebook's tab completion list them."""
    return sorted({*globals(), *_LAZY})
