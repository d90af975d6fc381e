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

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .attacks.training import BUDGETS
from .errors import UsageError
from .run_folder import default_run_folder
from .verify import Thresholds, VerifyProgressCallback, VerifyResult

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
    * ``image_size``: the square size victims train at (``None``: follows the data).
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
    image_size: int | None = None
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
        if self.image_size is not None and self.image_size < 8:
            raise UsageError(f"image size must be >= 8, got {self.image_size}")
        if self.input_check not in INPUT_CHECKS:
            raise UsageError(
                f"input_check must be one of {', '.join(INPUT_CHECKS)}, got {self.input_check!r}"
            )
        if self.ratio is not None and not 0 <= self.ratio <= 1:
            raise UsageError(f"ratio must be in [0, 1], got {self.ratio}")

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable copy (thresholds as a dict)."""
        data = asdict(self)
        data["attacks"] = list(self.attacks)
        data["thresholds"] = self.thresholds.to_dict()
        return data


@dataclass
class VerifyRun:
    """What :func:`verify_folders` did: the result, its report dict and the run folder."""

    result: VerifyResult
    report: dict[str, Any]
    folder: Path
    image_size: int
    model_paths: list[Path] = field(default_factory=list)
    input_mismatches: list[str] = field(default_factory=list)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is available, else ``cpu``; ``UsageError`` for a
    CUDA device on a machine without one."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: no CUDA GPU is available")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise UsageError(f"unknown device {device!r}; use {DEVICE_HELP}")
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
    loaded = load_verify_folders(
        protected,
        clean_train,
        test,
        labels=options.labels,
        test_labels=options.test_labels,
        hacker_labels=options.hacker_labels,
        image_size=options.image_size,
        progress=load_progress,
        input_check=options.input_check,
    )
    folder = Path(output) if output is not None else default_run_folder("verify")
    saver = (
        _ModelSaver(folder, victim, loaded.data.output_class_names) if options.save_models else None
    )
    result = run_verification(
        loaded.data,
        attacks,
        victim,
        config,
        list(range(options.seeds)),
        options.thresholds,
        progress=progress,
        on_trained=saver,
    )
    write_run_folder(
        result,
        folder,
        extra_config={
            "protected": str(protected),
            "clean_train": str(clean_train),
            "test": str(test),
            "options": options.to_json(),
            "budget": options.budget,
            "image_size": loaded.image_size,
            "owner_labels": loaded.owner_label_mode,
        },
    )
    paths = saver.paths if saver else []
    mismatches = list(loaded.input_mismatches)
    return VerifyRun(result, result.to_json(), folder, loaded.image_size, paths, mismatches)


class _ModelSaver:
    """``on_trained`` callback of :func:`run_verification`: writes each trained victim to
    ``FOLDER/models/<attack>-<train set>-seed<N>/`` (model.safetensors + model.json) at once,
    so no more than one victim is held in memory."""

    def __init__(self, folder: Path, builder: str, class_names: list[str]) -> None:
        self.folder, self.builder, self.class_names = folder, builder, list(class_names)
        self.paths: list[Path] = []

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
                "attack": attack,
                "train_set": train_set,
                "seed": seed,
            },
        )
        target = self.folder / "models" / f"{_safe(attack)}-{train_set}-seed{seed}"
        save_model(model, target, spec)
        self.paths.append(target)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


__all__ = [
    "BUDGET_NAMES",
    "VerifyOptions",
    "VerifyRun",
    "build_attacks",
    "resolve_device",
    "verify_folders",
]
