"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A reader (or a crash) never sees a half-written file: either the old file or the new one.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

_COUNTER = itertools.count()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` atomically; parent folders are created; permissions are
    ``mode`` masked by the process umask, as for a plain ``open``."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{next(_COUNTER)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
