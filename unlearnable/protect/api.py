"""``protect_directory``: the library function behind ``unlearnable protect``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..datasets import assign_labels
from ..keys import SecretKey
from .cuda import CudaProtector
from .folder import (
    DEFAULT_OUTPUT,
    OutputOptions,
    ProtectRun,
    ProtectUsageError,
    default_workers,
    discover_and_check,
    protect_folder,
)

METHODS = ("cuda",)


def protect_directory(
    input_dir: str | Path,
    output_dir: str | Path,
    key: SecretKey,
    *,
    method: str = "cuda",
    labels: str = "auto",
    strength: str = "mid",
    kernel_size: int | None = None,
    blur: float | None = None,
    options: OutputOptions = DEFAULT_OUTPUT,
    resume: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ProtectRun:
    """Protect the images below ``input_dir`` into ``output_dir`` (mirrored tree + manifest).

    ``labels`` is ``auto``, ``folders``, ``single`` or a CSV path (see
    :mod:`unlearnable.datasets`). Raises :class:`ProtectUsageError` (or ``ValueError`` for bad
    parameters) before anything is written when the request is invalid; per-file problems are
    recorded in the manifest instead.
    """
    source, target = Path(input_dir), Path(output_dir)
    if method not in METHODS:
        raise ProtectUsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    discovery = discover_and_check(source, target)
    if not discovery.files and not discovery.problems:
        raise ProtectUsageError(
            f"no images found in {source} (looked for JPEG, PNG, WebP, BMP, TIFF)"
        )
    assignment = assign_labels(source, discovery.files, labels)
    protector = CudaProtector(key, assignment.classes, strength, kernel_size, blur)
    return protect_folder(
        source,
        target,
        protector,
        labels=assignment.labels,
        classes=assignment.classes,
        key_fingerprint=key.fingerprint,
        label_mode=assignment.mode,
        label_problems={**discovery.problems, **assignment.problems},
        options=options,
        resume=resume,
        workers=workers or default_workers(),
        progress=progress,
    )
