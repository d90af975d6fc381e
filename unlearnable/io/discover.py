"""Find the image files below a folder, reporting what cannot be visited instead of dropping it."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_EXTENSIONS


@dataclass
class Discovery:
    """Image files found below ``root`` (relative POSIX paths, sorted) and per-path problems.

    ``problems`` maps a relative path to a message (a symlink loop, an unreadable folder, a
    broken link). ``ignored`` counts files without an image extension.
    """

    root: Path
    files: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    ignored: int = 0


def discover_images(root: str | os.PathLike[str], exclude: Path | None = None) -> Discovery:
    """Walk ``root`` recursively (following symbolic links, with loop detection).

    Files are matched by extension (case-insensitive): .jpg .jpeg .jpe .png .webp .bmp .tif .tiff.
    Hidden files and folders (name starting with ``.``) are skipped. ``exclude`` is a folder
    not to enter (e.g. an output folder that sits inside the input).
    """
    base = Path(root)
    result = Discovery(root=base)
    excluded = exclude.resolve() if exclude is not None else None
    visited: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str]] = [(base, "")]
    while stack:
        folder, relative = stack.pop()
        try:
            info = folder.stat()
        except OSError as exc:
            result.problems[relative or "."] = f"cannot open folder: {exc.strerror}"
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in visited:
            result.problems[relative] = "symbolic link loop (folder already visited); skipped"
            continue
        visited.add(identity)
        if excluded is not None and folder.resolve() == excluded:
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            result.problems[relative or "."] = f"cannot list folder: {exc.strerror}"
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{relative}/{entry.name}" if relative else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError as exc:
                result.problems[child] = _unreadable_reason(exc)
                continue
            if is_dir:
                stack.append((Path(entry.path), child))
            elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                if is_file:
                    result.files.append(child)
                else:
                    result.problems[child] = _broken_link_reason(Path(entry.path))
            else:
                result.ignored += 1
    result.files.sort()
    return result


def _unreadable_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop; skipped"
    return f"cannot read: {exc.strerror} (broken symbolic link?)"


def _broken_link_reason(path: Path) -> str:
    try:
        path.stat()
    except OSError as exc:
        return _unreadable_reason(exc)
    return "not a regular file; skipped"
