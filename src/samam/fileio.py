"""Small file-system helpers shared by the checkpoint writer and the image writer."""

from __future__ import annotations

import os


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the process umask (temp files
    from ``mkstemp`` are 0o600 and must be widened to it before they are renamed into place)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
