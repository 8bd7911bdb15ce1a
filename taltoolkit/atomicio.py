"""The one atomic file writer every output goes through (stdlib only, so light modules and the
CLIs can use it without importing torch or numpy).

A file is written to a unique temporary sibling, flushed and fsync'd, then renamed over the
destination with ``os.replace`` (atomic within one file system), so a crash or a concurrent
reader never sees it half-written; the folder is fsync'd after the rename where the platform
allows, so the rename itself survives a crash. The file's mode is 0666 minus the umask, as
``open(path, "w")`` gives (``tempfile.mkstemp`` would give 0600, so outputs would differ).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Create or replace ``path`` with ``text`` (UTF-8)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
