"""Clean labelled images for EBYD: read a class-folder tree, match its classes to a model's by
name, and split it into the defense set (unlearning, masks) and a held-out set (reports).

Folder layout: ``DATA/<class name>/<image>`` (any depth below the class folder); the class of
an image is its top-level folder. Every class folder must name one of the model's classes
(``UsageError`` otherwise, listing both); model classes without a folder are allowed (an
auditor may have images of some classes only) and are listed in :attr:`CleanSet.missing`.
Images are decoded, grey repeated to RGB, centre-cropped to a square and resized to the model's
input size, and kept as uint8 ``(N, 3, S, S)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError
from ..imageops import square_rgb, to_uint8
from ..io.discover import discover_images
from ..io.images import ImageDecodeError, decode_image


@dataclass
class CleanSet:
    """Labelled clean images: ``images`` uint8 ``(N, 3, S, S)``, ``labels`` int64 ``(N,)``
    (indices into ``classes``, the model's class names in output order), ``files`` (relative
    paths, same order), ``missing`` (model classes without images) and ``skipped`` (relative
    path -> why: files that could not be read or visited, left out and reported)."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    files: list[str] = field(default_factory=list)
    missing: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Tensor) -> CleanSet:
        """The images at ``index`` (int64 ``(M,)``)."""
        files = [self.files[int(i)] for i in index] if self.files else []
        return CleanSet(
            self.images[index], self.labels[index], self.classes, files, self.missing, self.skipped
        )

    def skipped_note(self) -> str | None:
        """One line naming the skipped files (the first few, with why), or ``None``."""
        if not self.skipped:
            return None
        shown = "; ".join(f"{rel}: {why}" for rel, why in list(self.skipped.items())[:3])
        more = len(self.skipped) - 3
        return (
            f"{len(self.skipped)} clean file(s) could not be read and were skipped ({shown}"
            + (f"; and {more} more" if more > 0 else "")
            + ")"
        )


def match_classes(folder_classes: Sequence[str], model_classes: Sequence[str], root: Path) -> None:
    """``InputError`` unless every class folder names a model class (and there are >= 2)."""
    check_utf8_names(folder_classes, root)
    unknown = sorted(set(folder_classes) - set(model_classes))
    if unknown:
        raise InputError(
            f"class folders of {root} do not match the model's classes by name: "
            f"{', '.join(unknown[:8])} {'is' if len(unknown) == 1 else 'are'} not a model class "
            f"(model classes: {', '.join(model_classes[:20])}"
            f"{', ...' if len(model_classes) > 20 else ''}); rename the folders, or give the "
            "model's class names with --classes" + near_miss_hint(unknown, model_classes)
        )
    if len(set(folder_classes)) < 2:
        raise InputError(
            f"{root} has images of {len(set(folder_classes))} class(es); EBYD needs "
            "clean images of at least 2 classes in class subfolders"
        )


def check_utf8_names(names: Sequence[str], root: Path) -> None:
    """``InputError`` for a class folder name that is not UTF-8 text (a class name is text)."""
    bad = [name for name in names if printable(name) != name]
    if bad:
        raise InputError(
            f"class folder '{printable(bad[0])}' of {root} is not valid UTF-8 text (a name in "
            "another encoding); rename it in UTF-8 (e.g. convmv -f latin1 -t utf8 -r --notest "
            "DIR)"
        )


def printable(name: str) -> str:
    """A file name fit for reports and JSON: bytes that are not UTF-8 (kept by ``os.fsdecode``
    as lone surrogates) become ``\\xNN`` escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def near_miss_hint(unknown: Sequence[str], model_classes: Sequence[str]) -> str:
    """A hint naming folders that match a model class but for case or surrounding spaces."""
    folded = {name.strip().casefold(): name for name in model_classes}
    pairs = [(u, folded[u.strip().casefold()]) for u in unknown if u.strip().casefold() in folded]
    if not pairs:
        return ""
    shown = ", ".join(f"{u!r} ~ {m!r}" for u, m in pairs[:5])
    return f". Names differ only in case or spaces: {shown} (names must match exactly)"


def load_clean_folder(
    root: str | Path,
    classes: Sequence[str],
    image_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> CleanSet:
    """Read ``root/<class>/...`` images whose class folders name ``classes`` (the model's, in
    output order), at ``image_size`` px. Files that cannot be read (damaged, unsupported) are
    left out and listed in :attr:`CleanSet.skipped`. Raises :class:`InputError` for a missing
    or empty folder, images outside class folders, unknown class names, and when fewer than 2
    classes keep a readable image."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"clean data folder not found: {root}")
    found = discover_images(root)
    if not found.files:
        raise InputError(f"no images found in {root}")
    loose = [f for f in found.files if "/" not in f]
    if loose:
        raise InputError(
            f"{root}: {len(loose)} image(s) outside a class subfolder, e.g. "
            f"{loose[0]}; put each image in a folder named after its class"
        )
    match_classes(sorted({f.split("/", 1)[0] for f in found.files}), list(classes), root)
    index = {name: i for i, name in enumerate(classes)}
    skipped = {printable(rel): why for rel, why in found.problems.items()}
    kept: list[str] = []
    images = torch.empty((len(found.files), 3, image_size, image_size), dtype=torch.uint8)
    for i, rel in enumerate(found.files):
        try:
            pixels = decode_image((root / rel).read_bytes()).pixels
        except (OSError, ImageDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            skipped[printable(rel)] = why
        else:
            images[len(kept)] = to_uint8(square_rgb(pixels, image_size))
            kept.append(rel)
        if progress is not None and (i % 256 == 255 or i + 1 == len(found.files)):
            progress(i + 1, len(found.files))
    names = [f.split("/", 1)[0] for f in kept]
    if len(set(names)) < 2:
        first = next(iter(skipped.items()), None)
        raise InputError(
            f"{root}: readable images of {len(set(names))} class(es) only; EBYD needs clean "
            "images of at least 2 classes"
            + (
                ""
                if first is None
                else f" ({len(skipped)} unreadable, e.g. {first[0]}: {first[1]})"
            )
        )
    labels = torch.tensor([index[n] for n in names], dtype=torch.int64)
    missing = tuple(c for c in classes if c not in set(names))
    return CleanSet(images[: len(kept)].clone(), labels, tuple(classes), kept, missing, skipped)


def split_defense(labels: Tensor, defense_images: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(defense, holdout)`` index tensors: a class-balanced random sample of
    ``min(defense_images, 0.8 N)`` images (round-robin over classes in a seeded random order)
    and the rest. The defense set drives unlearning and mask learning; the held-out images
    measure what the defense did. Both sorted."""
    n = labels.numel()
    want = min(int(defense_images), int(0.8 * n)) if n >= 5 else n
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    by_class: dict[int, list[int]] = {}
    for i in perm.tolist():
        by_class.setdefault(int(labels[i]), []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < want:
        for queue in queues:
            if depth < len(queue) and len(chosen) < want:
                chosen.append(queue[depth])
        depth += 1
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()


def split_parts(labels: Tensor, parts: int, seed: int) -> list[Tensor]:
    """``parts`` disjoint, class-balanced index tensors covering ``labels`` (each class's
    images in a seeded random order, dealt round-robin; part sizes differ by at most one per
    class). Each sorted. For independent exposures on disjoint data."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(labels.numel(), generator=gen)
    dealt: list[list[int]] = [[] for _ in range(parts)]
    seen: dict[int, int] = {}
    for i in perm.tolist():
        label = int(labels[i])
        dealt[(seen.get(label, 0) + label) % parts].append(i)
        seen[label] = seen.get(label, 0) + 1
    return [torch.tensor(sorted(d), dtype=torch.int64) for d in dealt]


__all__ = [
    "CleanSet",
    "check_utf8_names",
    "load_clean_folder",
    "match_classes",
    "near_miss_hint",
    "printable",
    "split_defense",
    "split_parts",
]
