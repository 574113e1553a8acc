"""Small file-system helpers shared by the checkpoint writer and the image and results writers."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the process umask (temp files
    from ``mkstemp`` are 0o600 and must be widened to it before they are renamed into place)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(
    path: Path, prefix: str = ".", suffix: str = ".tmp", fsync: bool = False
) -> Iterator[BinaryIO]:
    """Write ``path`` through a temp file in its folder renamed over it at the end: a reader (or
    a process killed mid-write) sees the old file or the new one, never half of one. The file
    gets :func:`default_file_mode`; ``fsync`` flushes the data to disk before the rename. On any
    error the temp file is removed and ``path`` is untouched."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unwritable(folder: Path) -> str | None:
    """Why this process cannot create files in ``folder`` (or, not there yet, in the nearest folder
    above it, where it would be created), else None: no write permission, a read-only file system, a
    full one. Checked before any work, so that a run does not fail at its first write, hours in. By
    creating and removing an empty file: os.access answers for the real (not effective) uid and from
    what the client sees, such as the mode bits a CIFS mount makes up (refusing what the server allows)
    or a FUSE file system with no access check (allowing what it then refuses)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    except OSError as err:
        if err.errno == errno.EROFS:
            return f"{existing} is on a read-only file system"
        if err.errno in (errno.EACCES, errno.EPERM):
            return f"no permission to create files in {existing}"
        return f"cannot create files in {existing} ({err.strerror or err})"
    os.close(fd)
    with contextlib.suppress(OSError):  # created, so writable; a folder that keeps it is no reason to stop
        os.unlink(probe)
    return None


def check_output_dir(folder: Path, key: str = "output_dir") -> None:
    """Refuse, before any work, a ``folder`` to write into (named ``key`` in the error) that is a
    file or lies below one (creating it failed with a bare FileExistsError once the network was
    loaded), or that cannot be written (eval.py failed at its first image, once every input had been
    decoded and checked)."""
    if why := unwritable(folder):
        raise PermissionError(f"{key} {str(folder)!r}: {why}; give a folder you can write to")
    for above in (folder, *folder.parents):
        if above.is_dir():
            return
        if above.exists():
            where = "is a file" if above == folder else f"lies below the file {str(above)!r}"
            raise NotADirectoryError(
                f"{key} {str(folder)!r} {where}; give a folder (it is created if missing)"
            )
