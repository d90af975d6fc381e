"""Where a run came from: tool and library versions, and the git commit of the code.

Every run folder (``verify`` now, the model-side defenses later) records :func:`provenance` in
its ``config.json`` so that a number in a report can be traced to the code that produced it.
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from ._version import __version__


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout the package runs from (``"<sha>"``, with ``"-dirty"``
    appended when tracked files have uncommitted changes), or ``None`` when the package is
    installed from a wheel, git is missing, or it does not answer within two seconds."""
    source = Path(__file__).resolve().parent
    try:
        top = _git(source, "rev-parse", "--show-toplevel")
        if top is None or not (Path(top) / "unlearnable" / "__init__.py").is_file():
            return None  # the package sits inside some other repository (e.g. a venv in one)
        sha = _git(source, "rev-parse", "HEAD")
        if sha is None:
            return None
        dirty = _git(source, "status", "--porcelain", "--untracked-files=no")
        return sha + ("-dirty" if dirty else "")
    except OSError:
        return None


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """``{"unlearnable", "torch", "python", "platform", "git_commit"}`` for run folders.

    torch is imported here (callers that write run folders have imported it already)."""
    import torch

    return {
        "unlearnable": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "git_commit": git_commit(),
    }


__all__ = ["git_commit", "provenance"]
