"""Labels for image folders, loading labelled folders into tensors, and the built-in demo set.

Label sources (``--labels``):

* ``folders``: ImageFolder layout; a file's label is the name of its top-level subfolder. A
  subfolder whose name is not valid UTF-8 (bytes of another encoding) gives no label: its files
  are listed in ``problems`` (a label's protection is derived from its text), and the file
  names themselves are kept losslessly by the manifest (``path_bytes``).
* ``single``: one label (``all``) for the whole folder, e.g. one person's photos.
* ``FILE.csv``: rows ``relative/path.jpg,label`` (an optional header ``path,label``).
* ``auto`` (default): ``folders`` when images sit in subfolders, else ``single``.

Labels are names; the manifest maps them to class indices (sorted names).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import InputError
from .io.manifest import display_name, is_utf8

SINGLE_LABEL = "all"


class LabelError(InputError):
    """Labels cannot be resolved (bad CSV, unknown mode): a usage error."""


@dataclass
class LabelAssignment:
    """Label name per relative file path; files that could not be labelled are in ``problems``."""

    mode: str
    labels: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.values()))


def assign_labels(root: Path, files: list[str], source: str = "auto") -> LabelAssignment:
    """Label every file of ``files`` (relative POSIX paths below ``root``) from ``source``."""
    if source == "auto":
        source = "folders" if any("/" in f for f in files) else "single"
    if source == "single":
        return LabelAssignment("single", {f: SINGLE_LABEL for f in files})
    if source == "folders":
        assignment = LabelAssignment("folders")
        for f in files:
            if "/" not in f:
                assignment.problems[f] = "not inside a class subfolder, so it has no label"
                continue
            label = f.split("/", 1)[0]
            if is_utf8(label):
                assignment.labels[f] = label
            else:
                assignment.problems[f] = non_utf8_label_message(label)
        return assignment
    if source == "clusters":
        raise LabelError(
            "--labels clusters needs a surrogate; it is resolved by the protect command"
        )
    if source.lower().endswith(".csv") or Path(source).is_file():
        return _labels_from_csv(Path(source), files)
    raise LabelError(
        f"--labels must be auto, folders, single, clusters or a CSV file; got {source!r}"
    )


def non_utf8_label_message(label: str) -> str:
    """Why a file in the class folder ``label`` (a name that is not valid UTF-8) has no label."""
    return (
        f"class folder {display_name(label)!r} (bytes {os.fsencode(label).hex()}) is not valid "
        "UTF-8 text, e.g. a name in another encoding; a label's protection is derived from its "
        "text: rename it in UTF-8 (e.g. convmv -f latin1 -t utf8 -r --notest DIR)"
    )


def read_label_csv(path: Path) -> dict[str, str]:
    """Read ``path,label`` rows (optional header) into a mapping of normalised relative paths."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError(f"label file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read label file {path}: {exc}") from None
    mapping: dict[str, str] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise LabelError(f"{path}:{number}: expected 2 columns (path,label), got {len(row)}")
        rel, label = row[0].strip(), row[1].strip()
        if number == 1 and rel.lower() in {"path", "file", "filename"} and label.lower() == "label":
            continue
        if not label:
            raise LabelError(f"{path}:{number}: empty label for {rel!r}")
        normalised = _normalise_relative(rel)
        if normalised in mapping and mapping[normalised] != label:
            raise LabelError(f"{path}:{number}: {rel!r} has two different labels")
        mapping[normalised] = label
    if not mapping:
        raise LabelError(f"label file {path} has no rows")
    return mapping


def _normalise_relative(rel: str) -> str:
    rel = rel.replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    return PurePosixPath(rel).as_posix()


def _labels_from_csv(path: Path, files: list[str]) -> LabelAssignment:
    mapping = read_label_csv(path)
    assignment = LabelAssignment(f"csv:{path.name}")
    for f in files:
        if f in mapping:
            assignment.labels[f] = mapping[f]
        else:
            assignment.problems[f] = f"no label for this file in {path.name}"
    return assignment


# --------------------------------------------------------------------------- built-in demo set

DEMO_CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "h-stripes",
    "v-stripes",
    "checker",
    "diamond",
    "dots",
)


def make_demo_images(
    per_class: int, size: int = 32, seed: int = 0, classes: tuple[str, ...] = DEMO_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic labelled image set made without any download.

    Each class is a shape or texture drawn at a random position and scale, in a random colour
    (biased towards a class hue), on a random two-colour gradient with pixel noise: learnable
    by a small CNN in a few epochs, but not by a single pixel statistic.

    Returns uint8 images ``(N, size, size, 3)`` and int64 labels ``(N,)``, N = per_class * classes,
    in class-major order. Deterministic for ``seed``.
    """
    rng = np.random.default_rng(seed)
    n_classes = len(classes)
    images = np.empty((per_class * n_classes, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), per_class)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    for index, label in enumerate(labels):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5
        c0, c1 = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
        background = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
        colour = rng.uniform(0.0, 1.0, 3)
        opacity = rng.uniform(0.3, 0.6)
        mask = _class_mask(classes[label], xx, yy, rng) * opacity
        picture = background * (1 - mask[..., None]) + colour * mask[..., None]
        picture += rng.normal(0, 0.12, picture.shape)
        images[index] = np.clip(picture * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, labels


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _class_mask(name: str, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.18, 0.32)
    dx, dy = xx - cx, yy - cy
    period = rng.uniform(0.12, 0.22)
    phase = rng.uniform(0, period)
    if name == "circle":
        mask = dx**2 + dy**2 < r**2
    elif name == "square":
        mask = (abs(dx) < r * 0.8) & (abs(dy) < r * 0.8)
    elif name == "triangle":
        mask = (dy < r * 0.7) & (dy > -r) & (abs(dx) < (dy + r) * 0.6)
    elif name == "cross":
        mask = ((abs(dx) < r * 0.25) & (abs(dy) < r)) | ((abs(dy) < r * 0.25) & (abs(dx) < r))
    elif name == "ring":
        d2 = dx**2 + dy**2
        mask = (d2 < r**2) & (d2 > (r * 0.6) ** 2)
    elif name == "h-stripes":
        mask = ((yy + phase) % period) < period / 2
    elif name == "v-stripes":
        mask = ((xx + phase) % period) < period / 2
    elif name == "checker":
        mask = (((xx + phase) // period + (yy + phase) // period) % 2) == 0
    elif name == "diamond":
        mask = abs(dx) + abs(dy) < r
    elif name == "dots":
        mask = (
            ((xx + phase) % period - period / 2) ** 2 + ((yy + phase) % period - period / 2) ** 2
        ) < (period / 4) ** 2
    else:
        raise ValueError(f"unknown demo class {name!r}")
    return mask.astype(np.float32)


def write_demo_folder(folder: Path, per_class: int, size: int = 32, seed: int = 0) -> int:
    """Write :func:`make_demo_images` as PNG files in ImageFolder layout; returns the count."""
    from PIL import Image

    images, labels = make_demo_images(per_class, size=size, seed=seed)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / DEMO_CLASSES[label] / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target)
    return len(images)
