"""``verify_folders``: the library call behind ``unlearnable verify``.

Loads the protected, clean-training and test folders, trains the victims of every attack
(:func:`~unlearnable.verify.run_verification`), and writes a run folder
(:func:`~unlearnable.report.write_run_folder`)::

    import unlearnable as ul

    run = ul.verify_folders("photos-protected", "photos", "test-photos",
                            ul.VerifyOptions(attacks=("erm", "at-linf-4"), budget="quick"))
    print(run.result.verdict, run.folder / "report.md")

Bad input raises :class:`~unlearnable.errors.UsageError` (or its subclass
:class:`~unlearnable.errors.InputError`) before any training starts; nothing here exits the
process or prints.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .attacks.training import BUDGETS
from .errors import UsageError
from .run_folder import default_run_folder
from .verify import Thresholds, VerifyProgress, VerifyProgressCallback, VerifyResult

#: The budget names :func:`verify_folders` accepts.
BUDGET_NAMES = tuple(BUDGETS)
DEVICE_HELP = "auto | cpu | cuda | cuda:N"
INPUT_CHECKS = ("refuse", "warn", "off")


@dataclass(frozen=True)
class VerifyOptions:
    """How :func:`verify_folders` plays the scraper.

    * ``labels``: owner labels of the training images: ``auto`` (the manifest, else folders),
      ``folders``, ``single`` or a CSV path. ``test_labels``: ``auto``, ``folders`` or a CSV.
    * ``hacker_labels``: ``None`` (the scraper uses the owner's labels), ``folders`` (the
      subfolders of the clean folders) or a CSV mapping owner label -> scraper label.
    * ``attacks``: attack and/or suite names (``erm``, ``at-linf-4``, ``quick``, ...).
    * ``budget``: one of :data:`BUDGET_NAMES`; ``model`` and ``epochs`` override its victim
      model and epochs. ``seeds``: number of seeds (0 .. seeds-1).
    * ``image_size``: the square size victims train at (``None``: follows the data), or
      several sizes (a sequence, e.g. ``(112, 224)``): the whole comparison runs at each, the
      report has one row per size (``per_by_size``) and the verdict is that of the worst size.
    * ``device``: ``auto`` (a CUDA GPU when there is one), ``cpu``, ``cuda``, ``cuda:N``.
    * ``thresholds``: worst peak PER needed for "protected" and "weak".
    * ``ratio``: the protected share for the ``partial`` attack; ``pgd_steps``: PGD steps of
      adversarial training (both ``None``: the attacks' defaults).
    * ``save_models``: keep every trained victim in the run folder (``models/``).
    * ``input_check``: what to do when a clean training file differs from the input hash the
      protected folder's manifest recorded: ``refuse`` (default; an
      :class:`~unlearnable.errors.IntegrityError`), ``warn`` (listed in
      :attr:`VerifyRun.input_mismatches`) or ``off``.
    """

    labels: str = "auto"
    test_labels: str = "auto"
    hacker_labels: str | None = None
    attacks: tuple[str, ...] = ("quick",)
    budget: str = "quick"
    model: str | None = None
    epochs: int | None = None
    seeds: int = 1
    image_size: int | tuple[int, ...] | None = None
    device: str = "auto"
    thresholds: Thresholds = field(default_factory=Thresholds)
    ratio: float | None = None
    pgd_steps: int | None = None
    save_models: bool = False
    input_check: str = "refuse"

    def __post_init__(self) -> None:
        if isinstance(self.attacks, str):
            object.__setattr__(self, "attacks", (self.attacks,))
        if self.budget not in BUDGET_NAMES:
            raise UsageError(
                f"unknown budget {self.budget!r}; choose from: {', '.join(BUDGET_NAMES)}"
            )
        if self.seeds < 1:
            raise UsageError(f"seeds must be >= 1, got {self.seeds}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if self.image_size is not None and not isinstance(self.image_size, int):
            sizes = tuple(dict.fromkeys(int(size) for size in self.image_size))
            if not sizes:
                raise UsageError("give at least one image size")
            object.__setattr__(self, "image_size", sizes[0] if len(sizes) == 1 else sizes)
        if any(size is not None and size < 8 for size in self.image_sizes):
            raise UsageError(f"image size must be >= 8, got {self.image_size}")
        if self.input_check not in INPUT_CHECKS:
            raise UsageError(
                f"input_check must be one of {', '.join(INPUT_CHECKS)}, got {self.input_check!r}"
            )
        if self.ratio is not None and not 0 <= self.ratio <= 1:
            raise UsageError(f"ratio must be in [0, 1], got {self.ratio}")

    @property
    def image_sizes(self) -> tuple[int | None, ...]:
        """The sizes to verify at: ``(None,)`` when following the data."""
        size = self.image_size
        return (size,) if size is None or isinstance(size, int) else tuple(size)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable copy (thresholds as a dict)."""
        data = asdict(self)
        data["attacks"] = list(self.attacks)
        if isinstance(self.image_size, tuple):
            data["image_size"] = list(self.image_size)
        data["thresholds"] = self.thresholds.to_dict()
        return data


@dataclass
class VerifyRun:
    """What :func:`verify_folders` did: the result, its report dict and the run folder.
    ``image_size`` is the (first) size victims trained at, ``image_sizes`` all of them;
    ``warnings`` are also in the report's notes (e.g. a size far from the files' own)."""

    result: VerifyResult
    report: dict[str, Any]
    folder: Path
    image_size: int
    model_paths: list[Path] = field(default_factory=list)
    input_mismatches: list[str] = field(default_factory=list)
    image_sizes: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is available, else ``cpu``; ``UsageError`` for a
    CUDA device on a machine without one."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise UsageError(f"unknown device {device!r}; use {DEVICE_HELP}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: no CUDA GPU is available")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UsageError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return device


def build_attacks(names: tuple[str, ...] | list[str], ratio: float | None, pgd_steps: int | None):
    """Attack objects for attack/suite ``names`` with the per-attack options."""
    from .attacks.base import make_attack
    from .attacks.suites import resolve_attacks

    try:
        resolved = resolve_attacks(",".join(names))
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc).strip('"')) from None
    attacks = []
    for name in resolved:
        options: dict[str, Any] = {}
        if name == "partial" and ratio is not None:
            options["ratio"] = ratio
        if name.startswith("at-") and pgd_steps is not None:
            options["steps"] = pgd_steps
        attacks.append(make_attack(name, **options))
    return attacks


def verify_folders(
    protected: str | Path,
    clean_train: str | Path,
    test: str | Path,
    options: VerifyOptions | None = None,
    *,
    output: str | Path | None = None,
    progress: VerifyProgressCallback | None = None,
    load_progress: Callable[[int, int], None] | None = None,
) -> VerifyRun:
    """Verify a protected folder against its clean copy; write and return the run.

    ``protected``: the protected training folder (or its manifest); ``clean_train``: the same
    images unprotected; ``test``: clean test images. ``output``: the run folder (default: a new
    folder below ``./unlearnable-runs``). ``progress`` follows the victims' epochs and
    ``load_progress(done, total)`` the image loading. Raises :class:`UsageError` /
    :class:`~unlearnable.errors.InputError` for bad options or folders (before any training).
    """
    from .attacks.training import get_budget
    from .models import check_victim_name
    from .report import write_run_folder
    from .verify import run_verification
    from .verify_inputs import load_verify_folders

    options = options or VerifyOptions()
    attacks = build_attacks(options.attacks, options.ratio, options.pgd_steps)
    chosen = get_budget(options.budget)
    config = replace(chosen.config, device=resolve_device(options.device))
    if options.epochs is not None:
        config = replace(config, epochs=options.epochs)
    victim = options.model or chosen.model
    try:
        check_victim_name(victim)
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc).strip('"')) from None
    folder = Path(output) if output is not None else default_run_folder("verify")
    if folder.exists() and not folder.is_dir():  # found now, not after the training
        raise UsageError(f"the run folder {folder} is a file; give a folder as -o/--output")
    sizes = options.image_sizes
    per_size: list[tuple[int, VerifyResult]] = []
    saver = None
    mismatches: list[str] = []
    folder_notes: list[str] = []
    for index, size in enumerate(sizes):
        loaded = load_verify_folders(
            protected,
            clean_train,
            test,
            labels=options.labels,
            test_labels=options.test_labels,
            hacker_labels=options.hacker_labels,
            image_size=size,
            progress=load_progress,
            input_check=options.input_check if index == 0 else "off",
        )
        if index == 0:
            mismatches = list(loaded.input_mismatches)
            folder_notes = list(loaded.notes)
            if options.save_models:
                saver = _ModelSaver(folder, victim, loaded.data.output_class_names)
        suffix = f"@{loaded.image_size}px" if len(sizes) > 1 else ""
        if saver is not None:
            saver.suffix = suffix
        result = run_verification(
            loaded.data,
            attacks,
            victim,
            config,
            list(range(options.seeds)),
            options.thresholds,
            progress=_offset_progress(progress, index, len(sizes), suffix),
            on_trained=saver,
        )
        per_size.append((loaded.image_size, result))
    median_side = _median_short_side(Path(clean_train), loaded.train_files)
    warnings = folder_notes + resolution_warnings([size for size, _ in per_size], median_side)
    result = combine_sizes(per_size, warnings)
    trained_sizes = [size for size, _ in per_size]
    write_run_folder(
        result,
        folder,
        extra_config={
            "protected": str(protected),
            "clean_train": str(clean_train),
            "test": str(test),
            "options": options.to_json(),
            "budget": options.budget,
            "image_size": trained_sizes[0] if len(trained_sizes) == 1 else trained_sizes,
            "file_median_short_side": median_side,
            "owner_labels": loaded.owner_label_mode,
        },
    )
    paths = saver.paths if saver else []
    return VerifyRun(
        result,
        result.to_json(),
        folder,
        trained_sizes[0],
        paths,
        mismatches,
        trained_sizes,
        warnings,
    )


FAR_FACTOR = 2.0
"""verify warns when it trains more than this factor away from the files' median short side."""


def resolution_warnings(sizes: list[int], median_side: int | None) -> list[str]:
    """A warning for every training size more than :data:`FAR_FACTOR` away from the files' own
    median short side (a scraper training near the files' size may see another protection)."""
    if not median_side:
        return []
    far = [s for s in sizes if s > FAR_FACTOR * median_side or s * FAR_FACTOR < median_side]
    return [
        f"victims trained at {size} px, far from the files' own size (median short side "
        f"{median_side} px): a scraper training near {median_side} px may see another "
        f"protection; add that size (e.g. --image-size {size},{min(median_side, 1024)})"
        for size in far
    ]


def _median_short_side(folder: Path, files: list[str], sample: int = 200) -> int | None:
    """Median short side of up to ``sample`` of ``files`` (headers only, no decoding)."""
    from PIL import Image

    sides = []
    for name in files[:: max(1, len(files) // sample)]:
        try:
            with Image.open(folder / name) as image:
                sides.append(min(image.size))
        except OSError:
            continue
    return int(statistics.median(sides)) if sides else None


def combine_sizes(
    per_size: list[tuple[int, VerifyResult]], warnings: list[str] | None = None
) -> VerifyResult:
    """One :class:`VerifyResult` from the results at each size: every attack result is kept,
    named ``NAME@SIZEpx`` when there are several sizes, with its ``image_size``; the verdict is
    therefore that of the worst size. ``data`` is the first size's, with ``image_sizes``."""
    first = per_size[0][1]
    attacks = []
    for size, result in per_size:
        for attack in result.attacks:
            attack.image_size = size
            if len(per_size) > 1:
                attack.name = f"{attack.name}@{size}px"
                for run in attack.runs:
                    run.attack = attack.name
            attacks.append(attack)
    data = {**first.data, "image_sizes": [size for size, _ in per_size]}
    return VerifyResult(
        first.model,
        first.config,
        first.seeds,
        first.thresholds,
        attacks,
        data,
        first.created,
        list(warnings or []),
    )


def _offset_progress(
    progress: VerifyProgressCallback | None, index: int, count: int, suffix: str
) -> VerifyProgressCallback | None:
    """``progress`` for the ``index``-th of ``count`` sizes: runs counted over all sizes and
    attack names with the size suffix."""
    if progress is None or count == 1:
        return progress

    def report(event: VerifyProgress) -> None:
        progress(
            replace(
                event,
                run=index * event.num_runs + event.run,
                num_runs=count * event.num_runs,
                attack=event.attack + suffix,
            )
        )

    return report


class _ModelSaver:
    """``on_trained`` callback of :func:`run_verification`: writes each trained victim to
    ``FOLDER/models/<attack>-<train set>-seed<N>/`` (model.safetensors + model.json) at once,
    so no more than one victim is held in memory."""

    def __init__(self, folder: Path, builder: str, class_names: list[str]) -> None:
        self.folder, self.builder, self.class_names = folder, builder, list(class_names)
        self.paths: list[Path] = []
        self.suffix = ""  # "@112px" when verifying at several sizes

    def __call__(self, attack: str, train_set: str, seed: int, model: Any, image_shape) -> None:
        from .checkpoints import ModelSpec, save_model

        channels, size = int(image_shape[0]), int(image_shape[1])
        spec = ModelSpec(
            classes=tuple(self.class_names),
            input_size=size,
            arch=self.builder,
            in_channels=channels,
            metadata={
                "trained_by": "verify",
                "attack": attack + self.suffix,
                "train_set": train_set,
                "seed": seed,
            },
        )
        target = self.folder / "models" / f"{_safe(attack + self.suffix)}-{train_set}-seed{seed}"
        save_model(model, target, spec)
        self.paths.append(target)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


__all__ = [
    "BUDGET_NAMES",
    "FAR_FACTOR",
    "VerifyOptions",
    "VerifyRun",
    "build_attacks",
    "combine_sizes",
    "resolution_warnings",
    "resolve_device",
    "verify_folders",
]
