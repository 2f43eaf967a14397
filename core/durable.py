"""Durability helper shared by the bundle writer and local storage."""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist directory entries (renames, new files); a no-op where directories cannot be
    opened or synced (Windows, some network filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
