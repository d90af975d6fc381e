"""Load the folders of a verification into tensors: protected train, clean train, clean test.

Alignment of protected and clean training images:

* with a manifest in the protected folder (or given as the path): every ``ok`` record pairs
  ``PROTECTED/output_path`` with ``CLEAN/path`` and gives the owner's label;
* without one: files with the same relative path in both folders, labels from ``--labels``.

Resize policy: images of one common square size are used as they are. Otherwise every image's
short side is resized to ``S`` (bilinear, antialiased) and the centre ``S x S`` is cropped, with
``S = image_size`` if given, else ``min(median short side of the training images, 224)``.
Grayscale images are repeated to 3 channels; alpha is dropped (victims see RGB).

Clean inputs: a manifest records the SHA-256 of every input it protected. The clean training
files are checked against those hashes (``input_check``): ``refuse`` (default) raises
:class:`CleanInputMismatchError` when any clean file differs from what was protected (same name,
other content: the verdict would compare the protected files with other images), ``warn`` goes
on with a :class:`CleanInputMismatchWarning` and lists them in
:attr:`LoadedFolders.input_mismatches`, ``off`` skips the check. The protected files are
checked against the output hashes the manifest recorded (unless ``off``): files changed since
(re-saved, replaced) are noted in :attr:`LoadedFolders.notes` (the report's warnings), and so is
the journal of a protect run that did not finish; a protected file the manifest lists but the
folder lacks is an error.

Scraper labels (``hacker_labels``): ``folders`` uses the top-level subfolders of the clean
training and test folders (e.g. the true classes when the owner protected with clusters); a
CSV file maps owner label -> scraper label (e.g. ``cat,animal``) for training and test labels.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .datasets import LabelError, assign_labels, read_label_csv
from .errors import InputError, IntegrityError
from .imageops import square_rgb, to_uint8
from .io.discover import discover_images
from .io.hashing import sha256_file
from .io.images import ImageDecodeError, decode_image
from .io.journal import JOURNAL_NAME
from .io.manifest import MANIFEST_NAME, ManifestError, read_manifest
from .verify import VerifyData

MAX_DEFAULT_SIZE = 224
INPUT_CHECKS = ("refuse", "warn", "off")


class VerifyInputError(InputError):
    """The folders given to ``verify`` cannot be used as they are; the message says why."""


class CleanInputMismatchError(IntegrityError):
    """Clean training files differ from the inputs the manifest recorded (exit 1)."""


class CleanInputMismatchWarning(UserWarning):
    """``input_check="warn"``: clean training files differ from the manifest's inputs."""


@dataclass
class LoadedFolders:
    """What :func:`load_verify_folders` read, plus facts for the report."""

    data: VerifyData
    image_size: int
    train_files: list[str]
    test_files: list[str]
    owner_label_mode: str
    scraper_label_mode: str | None
    input_mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Warnings about the protected folder for the report (files changed since the manifest
    recorded them, an unfinished protect run)."""


def load_verify_folders(
    protected: str | Path,
    clean_train: str | Path,
    test: str | Path,
    labels: str = "auto",
    test_labels: str = "auto",
    hacker_labels: str | None = None,
    image_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    input_check: str = "refuse",
) -> LoadedFolders:
    """Read and align the three folders; raise :class:`VerifyInputError` with a clear message.

    ``input_check`` (``refuse``, ``warn``, ``off``): what to do when clean training files differ
    from the inputs the manifest recorded (see the module docstring)."""
    if input_check not in INPUT_CHECKS:
        raise VerifyInputError(
            f"input_check must be one of {', '.join(INPUT_CHECKS)}, got {input_check!r}"
        )
    protected_dir, clean_dir, test_dir = (Path(p) for p in (protected, clean_train, test))
    if protected_dir.is_file() and protected_dir.name.endswith(".json"):
        protected_dir = protected_dir.parent
    for name, folder in (
        ("protected", protected_dir),
        ("clean training", clean_dir),
        ("test", test_dir),
    ):
        if not folder.is_dir():
            raise VerifyInputError(f"{name} folder not found: {folder}")

    pairs, owner_labels, owner_mode, recorded, written = _training_pairs(
        protected_dir, clean_dir, labels
    )
    if not pairs:
        raise VerifyInputError(f"no training images found in {protected_dir}")
    notes = _protected_notes(protected_dir, {} if input_check == "off" else written)
    mismatches = [] if input_check == "off" else _changed_inputs(clean_dir, recorded)
    if mismatches:
        message = (
            f"{len(mismatches)} of {len(recorded)} clean training files differ from the inputs "
            f"the manifest recorded (same name, other content), e.g. {mismatches[0]}: the "
            f"verdict would compare the protected files with other images. Give the folder "
            f"that was protected as the clean training folder"
        )
        if input_check == "refuse":
            raise CleanInputMismatchError(message + " (or input_check='warn' to go on anyway)")
        warnings.warn(message, CleanInputMismatchWarning, stacklevel=2)
    test_discovery = discover_images(test_dir)
    if not test_discovery.files:
        raise VerifyInputError(f"no test images found in {test_dir}")
    try:
        test_assignment = assign_labels(test_dir, test_discovery.files, test_labels)
    except LabelError as exc:
        raise VerifyInputError(str(exc)) from None
    if test_assignment.problems:
        first = next(iter(test_assignment.problems.items()))
        raise VerifyInputError(
            f"test folder {test_dir}: {len(test_assignment.problems)} files without a label, e.g. {first[0]}: {first[1]}"
        )
    test_files = sorted(test_assignment.labels)
    test_names = [test_assignment.labels[f] for f in test_files]

    train_rel = [clean for _, clean in pairs]
    owner_classes = sorted(set(owner_labels))
    scraper_mode = None
    if hacker_labels is None:
        _check_label_sets(owner_classes, sorted(set(test_names)))
        class_names = owner_classes
        scraper = None
        test_ids = [class_names.index(n) for n in test_names]
    else:
        scraper_mode = hacker_labels
        train_scraper, test_scraper = _scraper_labels(
            hacker_labels, train_rel, owner_labels, test_files, test_names
        )
        scraper_classes = sorted(set(train_scraper))
        _check_label_sets(scraper_classes, sorted(set(test_scraper)))
        class_names = owner_classes
        scraper = torch.tensor([scraper_classes.index(n) for n in train_scraper])
        test_ids = [scraper_classes.index(n) for n in test_scraper]
    if len(set(owner_labels if hacker_labels is None else train_scraper)) < 2:
        raise VerifyInputError(
            "the training set has only one class; a classifier needs at least two"
        )

    total = 2 * len(pairs) + len(test_files)
    counter = _Counter(progress, total)
    size = image_size or _default_size([protected_dir / p for p, _ in pairs])
    protected_images = _load([protected_dir / p for p, _ in pairs], size, counter)
    clean_images = _load([clean_dir / c for _, c in pairs], size, counter)
    test_images = _load([test_dir / f for f in test_files], size, counter)
    data = VerifyData(
        protected_train=protected_images,
        clean_train=clean_images,
        train_labels=torch.tensor([owner_classes.index(n) for n in owner_labels]),
        test_images=test_images,
        test_labels=torch.tensor(test_ids),
        class_names=class_names,
        scraper_labels=scraper,
        scraper_class_names=scraper_classes if hacker_labels is not None else None,
    )
    return LoadedFolders(
        data, size, train_rel, test_files, owner_mode, scraper_mode, mismatches, notes
    )


def _protected_notes(protected_dir: Path, written: dict[str, str]) -> list[str]:
    """Warnings about ``protected_dir``: a journal of an unfinished protect run, and files whose
    SHA-256 is not the output hash the manifest recorded (``written``: relative path -> hash)."""
    notes = []
    if (protected_dir / JOURNAL_NAME).exists():
        notes.append(
            f"{protected_dir} holds the journal of a protect run that did not finish "
            f"({JOURNAL_NAME}): its manifest is missing or out of date, and files may be missing; "
            "finish the run with `unlearnable protect ... --resume` before verifying"
        )
    changed = _changed_inputs(protected_dir, written)
    if changed:
        notes.append(
            f"{len(changed)} of {len(written)} protected files differ from the outputs the "
            f"manifest recorded, e.g. {changed[0]}: they were changed after protection (re-saved, "
            "re-compressed, replaced); the verdict is about the files as they are now"
        )
    return notes


def _changed_inputs(clean_dir: Path, recorded: dict[str, str]) -> list[str]:
    """Relative paths below ``clean_dir`` whose SHA-256 is not the one recorded (in order)."""
    changed = []
    for relative, digest in recorded.items():
        try:
            if sha256_file(clean_dir / relative) != digest:
                changed.append(relative)
        except OSError:
            changed.append(relative)
    return changed


def _training_pairs(
    protected_dir: Path, clean_dir: Path, labels: str
) -> tuple[list[tuple[str, str]], list[str], str, dict[str, str], dict[str, str]]:
    """``[(protected relative path, clean relative path)]``, owner label names, label mode, the
    input SHA-256 the manifest recorded per clean relative path and the output SHA-256 per
    protected relative path (both empty without a manifest).

    With a manifest, files are paired through it (so a changed output format is no problem)
    and labelled by it, unless ``labels`` names another source, which is then applied to the
    clean relative paths (e.g. ``folders`` for a folder protected with clusters).
    """
    if (protected_dir / MANIFEST_NAME).exists():
        try:
            manifest = read_manifest(protected_dir)
        except ManifestError as exc:
            raise VerifyInputError(str(exc)) from None
        records = [r for r in manifest.files if r.status == "ok"]
        pairs = [(r.output_path or r.path, r.path) for r in records]
        recorded = {r.path: r.input_sha256 for r in records if r.input_sha256}
        written = {r.output_path or r.path: r.output_sha256 for r in records if r.output_sha256}
        gone = [p for p, _ in pairs if not (protected_dir / p).is_file()]
        if gone:
            raise VerifyInputError(
                f"{len(gone)} protected files of the manifest are missing from {protected_dir}, "
                f"e.g. {gone[0]}"
            )
        missing = [c for _, c in pairs if not (clean_dir / c).is_file()]
        if missing:
            raise VerifyInputError(
                f"{len(missing)} files of the manifest are missing from the clean training folder "
                f"{clean_dir}, e.g. {missing[0]}"
            )
        if labels == "auto":
            owner = [r.label or "all" for r in records]
            return pairs, owner, f"manifest:{manifest.label_mode}", recorded, written
        assignment = _assign(clean_dir, [c for _, c in pairs], labels)
        owner = [assignment.labels[c] for _, c in pairs]
        return pairs, owner, assignment.mode, recorded, written
    discovery = discover_images(protected_dir)
    assignment = _assign(protected_dir, discovery.files, labels)
    files = sorted(assignment.labels)
    missing = [f for f in files if not (clean_dir / f).is_file()]
    if missing:
        raise VerifyInputError(
            f"{len(missing)} protected files have no clean counterpart with the same relative path "
            f"in {clean_dir}, e.g. {missing[0]}"
        )
    owner = [assignment.labels[f] for f in files]
    return [(f, f) for f in files], owner, assignment.mode, {}, {}


def _assign(root: Path, files: list[str], labels: str):
    try:
        assignment = assign_labels(root, files, labels)
    except LabelError as exc:
        raise VerifyInputError(str(exc)) from None
    if assignment.problems:
        first = next(iter(assignment.problems.items()))
        raise VerifyInputError(
            f"{len(assignment.problems)} training files without a label, e.g. {first[0]}: {first[1]}"
        )
    return assignment


def _scraper_labels(
    spec: str, train_rel: list[str], owner: list[str], test_files: list[str], test_names: list[str]
) -> tuple[list[str], list[str]]:
    if spec == "folders":
        if any("/" not in f for f in train_rel):
            raise VerifyInputError(
                "--hacker-labels folders: every clean training image must sit in a class subfolder"
            )
        return [f.split("/", 1)[0] for f in train_rel], test_names
    try:
        mapping = read_label_csv(Path(spec))
    except LabelError as exc:
        raise VerifyInputError(str(exc)) from None
    unknown = sorted(set(owner) - set(mapping))
    if unknown:
        raise VerifyInputError(
            f"--hacker-labels {spec}: no scraper label for owner label(s) {', '.join(unknown[:5])}"
        )
    unknown_test = sorted(set(test_names) - set(mapping))
    if unknown_test:
        raise VerifyInputError(
            f"--hacker-labels {spec}: no scraper label for test label(s) {', '.join(unknown_test[:5])}"
        )
    return [mapping[n] for n in owner], [mapping[n] for n in test_names]


def _check_label_sets(train: list[str], test: list[str]) -> None:
    if set(train) != set(test):
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        parts = []
        if only_train:
            parts.append(f"only in training: {', '.join(only_train[:8])}")
        if only_test:
            parts.append(f"only in test: {', '.join(only_test[:8])}")
        raise VerifyInputError("training and test label sets differ (" + "; ".join(parts) + ")")


class _Counter:
    def __init__(self, callback: Callable[[int, int], None] | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None and (self.done % 256 == 0 or self.done == self.total):
            self.callback(self.done, self.total)


def _decode(path: Path):
    try:
        return decode_image(path.read_bytes())
    except (OSError, ImageDecodeError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise VerifyInputError(f"cannot read {path}: {message}") from None


def _default_size(paths: list[Path]) -> int:
    sample = paths[:: max(1, len(paths) // 200)]
    shapes = [_decode(p).pixels.shape[:2] for p in sample]
    if len(set(shapes)) == 1 and shapes[0][0] == shapes[0][1]:
        return int(shapes[0][0])
    return int(min(statistics.median(min(s) for s in shapes), MAX_DEFAULT_SIZE))


def _load(paths: list[Path], size: int, counter: _Counter) -> Tensor:
    """uint8 ``(N, 3, size, size)``: grey repeated to RGB, centre square resized to ``size``."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for index, path in enumerate(paths):
        out[index] = to_uint8(square_rgb(_decode(path).pixels, size))
        counter.step()
    return out
