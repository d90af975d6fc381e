"""Find the image files below a folder, reporting what cannot be visited instead of dropping it."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_EXTENSIONS, SKIPPED_EXTENSIONS


@dataclass
class Discovery:
    """Image files found below ``root`` (relative POSIX paths, sorted) and per-path problems.

    ``problems`` maps a relative path to a message (a symlink loop, an unreadable folder, a
    broken link). ``skipped`` maps a relative path to the reason it was deliberately left out
    (a hidden file or folder, a GIF): reported, not failed. ``ignored`` counts files without an
    image extension. Names that are not valid UTF-8 are kept as Python decodes them
    (``os.fsdecode``: lone surrogates), so they can be opened again.
    """

    root: Path
    files: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ignored: int = 0


HIDDEN_REASON = "hidden (name starts with '.'); skipped (include_hidden / --include-hidden)"
HIDDEN_FOLDER_REASON = (
    "hidden folder (name starts with '.'); skipped with everything in it "
    "(include_hidden / --include-hidden)"
)


MAX_PATHS = 16
"""A folder reached through more paths (symbolic links) than this is reported, not walked."""


def discover_images(
    root: str | os.PathLike[str], exclude: Path | None = None, include_hidden: bool = False
) -> Discovery:
    """Walk ``root`` recursively (following symbolic links; a link to a folder above it is
    reported as a loop, a folder reached through several paths is listed under each).

    Files are matched by extension (case-insensitive): .jpg .jpeg .jpe .png .webp .bmp .tif .tiff.
    Hidden files and folders (name starting with ``.``) are listed in ``skipped`` unless
    ``include_hidden`` (a hidden folder is one entry; files in it are not listed one by one),
    and so are GIF files (a palette cannot hold the protected colours). ``exclude`` is a folder
    not to enter (e.g. an output folder that sits inside the input).
    """
    base = Path(root)
    result = Discovery(root=base)
    excluded = exclude.resolve() if exclude is not None else None
    # Each folder carries the identities of the folders above it: a link back to one of them is
    # a loop. A folder reached twice through links that are not loops is walked both times, so
    # the result does not depend on which path the walk takes first (at most MAX_PATHS times:
    # links that fan out again and again would otherwise multiply the paths without end).
    walks: dict[tuple[int, int], int] = {}
    stack: list[tuple[Path, str, frozenset[tuple[int, int]]]] = [(base, "", frozenset())]
    while stack:
        folder, relative, above = stack.pop()
        try:
            info = folder.stat()
        except OSError as exc:
            result.problems[relative or "."] = f"cannot open folder: {exc.strerror}"
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in above:
            result.problems[relative] = (
                "symbolic link loop (a link to a folder that contains it); skipped"
            )
            continue
        walks[identity] = walks.get(identity, 0) + 1
        if walks[identity] > MAX_PATHS:
            result.problems[relative] = (
                f"folder reached through more than {MAX_PATHS} symbolic-link paths; skipped"
            )
            continue
        inside = above | {identity}
        if excluded is not None and folder.resolve() == excluded:
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            result.problems[relative or "."] = f"cannot list folder: {exc.strerror}"
            continue
        for entry in entries:
            child = f"{relative}/{entry.name}" if relative else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError as exc:
                result.problems[child] = _unreadable_reason(exc)
                continue
            suffix = Path(entry.name).suffix.lower()
            if entry.name.startswith(".") and not include_hidden:
                if is_dir:
                    result.skipped[child] = HIDDEN_FOLDER_REASON
                elif suffix in IMAGE_EXTENSIONS or suffix in SKIPPED_EXTENSIONS:
                    result.skipped[child] = HIDDEN_REASON
                else:
                    result.ignored += 1
                continue
            if is_dir:
                stack.append((Path(entry.path), child, inside))
            elif suffix in SKIPPED_EXTENSIONS:
                result.skipped[child] = SKIPPED_EXTENSIONS[suffix]
            elif suffix in IMAGE_EXTENSIONS:
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
