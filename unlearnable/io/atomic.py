"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A reader (or a crash) never sees a half-written file: either the old file or the new one. The
temporary file is ``.NAME.PID.N.tmp`` beside the target, with ``NAME`` shortened when the
whole name would pass the file system's name limit (255 bytes on most), so any name that fits
can be written. A process killed between writing and renaming leaves such a file behind;
:func:`remove_stale_temporaries` removes them (``protect --resume`` does).

``durable=True`` also ``fsync`` s the file before the rename and the folder after it, so the
new file survives a power cut (manifests, key files); image outputs skip that cost, because
their records hold hashes that ``--resume`` checks.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

_COUNTER = itertools.count()
NAME_MAX = 255
"""Bytes in a file name when the file system does not say (``pathconf`` ``PC_NAME_MAX``)."""
_TEMP_PATTERN = re.compile(r"^\..*\.\d+\.\d+\.tmp$", re.DOTALL)


def temporary_name(target: str | os.PathLike[str]) -> str:
    """The temporary name for ``target`` (see the module docstring): at most the name limit."""
    folder, name = os.path.split(os.fspath(target))
    tail = f".{os.getpid()}.{next(_COUNTER)}.tmp"
    budget = _name_max(folder) - len(os.fsencode(tail)) - 1
    while name and len(os.fsencode(name)) > budget:
        name = name[:-1]
    return f".{name}{tail}"


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` has the form of this module's temporary files."""
    return bool(_TEMP_PATTERN.match(name))


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o666, *, durable: bool = False
) -> None:
    """Write ``data`` to ``path`` atomically; parent folders are created; permissions are
    ``mode`` masked by the process umask, as for a plain ``open``. ``durable``: fsync the file
    and its folder (see the module docstring). Raises ``OSError`` (nothing left behind)."""
    target = os.fspath(path)  # string paths: a run writes thousands of small files
    folder = os.path.dirname(target)
    temp = os.path.join(folder, temporary_name(target))
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        Path(folder or ".").mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:  # plain os.write: a small file costs three system calls besides the rename
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_folder(folder or ".")


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(root: str | os.PathLike[str]) -> list[Path]:
    """Delete this module's temporary files (``.*.PID.N.tmp``) below ``root``, left by a killed
    writer; return what was removed. Symbolic links to folders are not followed."""
    removed = []
    for path in _walk_files(Path(root)):
        if is_temporary_name(path.name):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _walk_files(root: Path) -> Iterator[Path]:
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    yield Path(entry.path)
            except OSError:
                continue


_NAME_MAX_BY_FOLDER: dict[str, int] = {}


def _name_max(folder: str | os.PathLike[str]) -> int:
    """The file system's name limit in ``folder`` (asked once per folder: a run writes
    thousands of files into the same folders)."""
    key = os.fspath(folder)
    known = _NAME_MAX_BY_FOLDER.get(key)
    if known is not None:
        return known
    try:
        limit = int(os.pathconf(key or ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX  # not remembered: the folder may not exist yet
    if len(_NAME_MAX_BY_FOLDER) >= 4096:
        _NAME_MAX_BY_FOLDER.clear()
    _NAME_MAX_BY_FOLDER[key] = limit
    return limit
