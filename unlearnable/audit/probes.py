"""Clean probe images for the audit: a folder read into one uint8 tensor at the model's size.

Labels (``labels``): ``auto`` (the top-level subfolder names when images sit in subfolders,
else none), ``folders``, ``none``, or a CSV file of ``relative/path,label`` rows (see
:mod:`unlearnable.datasets`). Every image is made RGB (grey repeated, alpha dropped), centre-
cropped to a square and resized to ``size`` (bilinear, antialiased), as the suspect model's
input pipeline does before the audit marks it. Unreadable files are skipped and listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..datasets import LabelError, assign_labels
from ..errors import InputError
from ..imageops import square_rgb, to_uint8
from ..io.discover import discover_images
from ..io.images import ImageDecodeError, decode_image
from .engine import select_probes

PROBE_LABELS = ("auto", "folders", "none")
"""Label sources besides a CSV path."""


@dataclass
class Probes:
    """``images``: uint8 ``(N, 3, size, size)``; ``labels``: a name per image or None;
    ``files``: relative paths; ``skipped``: unreadable files and why."""

    images: Tensor
    labels: list[str | None] | None
    files: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def load_probes(
    folder: str | Path,
    size: int,
    labels: str = "auto",
    max_images: int | None = None,
    seed: int = 0,
) -> Probes:
    """Read the probe images below ``folder`` (see the module docstring). ``max_images``
    keeps a seeded random subset (the same one for the same seed and folder)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"probe folder not found: {root}")
    discovery = discover_images(root)
    files = sorted(discovery.files)
    if not files:
        raise InputError(f"no probe images found in {root} (looked for JPEG, PNG, WebP, ...)")
    names: dict[str, str] | None = None
    source = labels
    if source == "auto":
        source = "folders" if all("/" in f for f in files) else "none"
    if source != "none":
        try:
            assignment = assign_labels(root, files, source)
        except LabelError as exc:
            raise InputError(str(exc)) from None
        names = assignment.labels
    chosen = [files[i] for i in select_probes(len(files), max_images, seed)]
    images, kept, skipped = [], [], dict(discovery.problems)
    for rel in chosen:
        try:
            pixels = decode_image((root / rel).read_bytes()).pixels
        except (OSError, ImageDecodeError) as exc:
            skipped[rel] = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            continue
        images.append(to_uint8(square_rgb(pixels, size)))
        kept.append(rel)
    if not images:
        raise InputError(f"none of the {len(chosen)} probe images in {root} could be read")
    return Probes(
        images=torch.stack(images),
        labels=[names.get(rel) for rel in kept] if names is not None else None,
        files=kept,
        skipped=skipped,
    )


__all__ = ["PROBE_LABELS", "Probes", "load_probes"]
