"""One protect run per output folder at a time: a lock file held for the whole run.

Two runs writing into the same folder overwrite each other's files and journal, and the
manifest of the one that ends last may describe files the other one wrote (another key, other
parameters). :func:`output_lock` takes an exclusive ``flock`` on ``.unlearnable.lock`` in the
output folder (created when missing) for the run; a second run into the same folder is refused
at once with a usage error naming the process that holds it. The kernel drops the lock when
its process ends, however it ends, so a killed run never blocks the next one; the file itself
is removed at the end of the run (a killed run leaves it; it is ignored and reused). Folders
the lock created are removed again when the run wrote nothing into them (a refused request
leaves no empty folders behind).

Where the file system has no ``flock`` (some network file systems), the run goes on unlocked.
Object-store URLs are never locked (see :mod:`unlearnable.io.formats.url_output`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ProtectUsageError

LOCK_NAME = ".unlearnable.lock"
"""The lock file in the output folder (ignored by the "output folder is not empty" check)."""

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]


class FolderBusyError(ProtectUsageError):
    """Another run holds the output folder's lock (exit code 2; nothing was written)."""


@contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold the lock of ``folder`` (created with its parents when missing) in the block.

    Raises :class:`FolderBusyError` when another process holds it, and ``OSError`` when the
    folder or the lock file cannot be created."""
    created = _make_folder(folder)
    try:
        fd = _acquire(folder / LOCK_NAME) if fcntl is not None else None
    except BaseException:
        _remove_if_empty(created)
        raise
    try:
        yield
    finally:
        if fd is not None:
            try:
                os.unlink(folder / LOCK_NAME)  # still held: nobody else holds this file
            except OSError:
                pass
            os.close(fd)  # releases the lock
        _remove_if_empty(created)


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the folders created, deepest first."""
    created = []
    missing = folder
    while not os.path.lexists(missing) and missing.parent != missing:
        created.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _acquire(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock (None where the file system
    cannot lock). A lock file removed by the run that held it while this process waited is
    opened again, so two runs never hold locks on two different files of the same name."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusyError(
                    f"another unlearnable protect run{holder} is writing to {path.parent}; "
                    "wait for it to finish (then add --resume to continue there), or choose "
                    "another output folder"
                ) from None
            return None  # ENOLCK, EOPNOTSUPP...: no locks on this file system
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return fd
        os.close(fd)  # the holder removed the file as we locked it: lock the new one


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (process {text})" if text.isdigit() else ""


def _remove_if_empty(created: list[Path]) -> None:
    for folder in created:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return


__all__ = ["LOCK_NAME", "FolderBusyError", "output_lock"]
