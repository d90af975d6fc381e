"""Does a protection hold? Train victims on protected and on clean data and compare.

For every attack (what a scraper does: plain training, adversarial training, preprocessing,
...) and every seed, :func:`run_verification` trains two victims exactly the same way (same
model, initial weights, config, seed, attack):

* one on the attack's view of the **protected** training set, and
* one on the attack's view of the **clean** training set (the baseline; the attack's own
  preprocessing is applied to it too, so the score measures the protection and not the cost of
  the attack itself),

and records the clean test accuracy after every epoch (on the attack's view of the test set).

Scores, per attack (accuracies are means over seeds):

* chance level: ``max(1 / num_classes, frequency of the most common test label)``;
* protection score ``PER = (acc_clean - acc_protected) / (acc_clean - acc_chance)``: 1 means
  the protected model is no better than chance, 0 means the protection changed nothing,
  negative means the protected set trained a better model. It is computed on the peak and on
  the last-epoch accuracy, and clipped to [-1, 1] (``per_*_raw`` keep the unclipped value; a
  value above 1 means the protected model is worse than chance). PER is undefined (``None``)
  when the clean baseline does not beat chance: then the run shows nothing about the
  protection ("the clean baseline did not learn").

Verdict: the worst (lowest) **peak-accuracy** PER over the attacks decides, because a scraper
can stop training at its best epoch (early stopping on a small labelled set is a cheap
countermeasure). ``"protected"`` if it is ``>= thresholds.protected`` (default 0.7), ``"weak"``
if ``>= thresholds.weak`` (default 0.3), else ``"not protected"``; ``"inconclusive"`` if the PER
of any attack is undefined (an attack whose baseline did not learn could hide the worst case).

Scraper resolutions: every attack records the square ``image_size`` its victims trained at. A
verification at several sizes (:func:`unlearnable.verify_run.verify_folders` with several
``image_size`` s) holds one attack result per attack and size (named ``erm@112px``, ...), so
the worst case, and so the verdict, is that of the worst size; ``per_by_size`` gives one row
per size.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from .attacks.base import Attack, make_attack
from .attacks.training import (
    TrainConfig,
    TrainHistory,
    derive_seed,
    to_float_images,
    train_classifier,
)
from .errors import UsageError
from .models import build_victim, check_victim_name
from .provenance import provenance
from .run_folder import finite

SCHEMA = "unlearnable.verify-report"
SCHEMA_VERSION = 2
"""Version 2 added each attack's ``image_size``, the report's ``per_by_size`` rows (one per
scraper resolution) and ``data.image_sizes``; version 1 reports still validate."""
VERDICTS = ("protected", "weak", "not protected", "inconclusive")
TRAIN_SETS = ("clean", "protected")


# --------------------------------------------------------------------------- inputs


@dataclass
class VerifyData:
    """Already-loaded data of one verification (on the CPU).

    * ``protected_train``: uint8 ``(N, C, H, W)`` (float in [0, 1] is accepted too), the
      protected training images.
    * ``clean_train``: the same images unprotected: same shape, same order, same labels.
    * ``train_labels``: int64 ``(N,)``, the owner's labels, in ``[0, len(class_names))``.
    * ``test_images``: uint8 ``(M, C, H, W)``, clean test images (never protected).
    * ``test_labels``: int64 ``(M,)``, in the label space the victims are trained in.
    * ``class_names``: the names of the owner's classes.
    * ``scraper_labels``: optional int64 ``(N,)``, labels the scraper trains with instead of
      ``train_labels`` (its own annotation, clusters, ...); ``test_labels`` must then be in the
      scraper's label space, and the number of classes is ``1 + max`` of these labels.
    * ``scraper_class_names``: optional names of the scraper's classes (index order).
    """

    protected_train: Tensor
    clean_train: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: list[str]
    scraper_labels: Tensor | None = None
    scraper_class_names: list[str] | None = None

    def __post_init__(self) -> None:
        for name in ("protected_train", "clean_train", "test_images"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dim() != 4:
                raise ValueError(f"{name} must be a (N, C, H, W) tensor")
            if t.dtype != torch.uint8 and not t.is_floating_point():
                raise TypeError(f"{name} must be uint8 (or float in [0, 1]), got {t.dtype}")
        if self.protected_train.shape != self.clean_train.shape:
            raise ValueError(
                "protected_train and clean_train must have the same shape, got "
                f"{tuple(self.protected_train.shape)} and {tuple(self.clean_train.shape)}"
            )
        if self.test_images.shape[1:] != self.clean_train.shape[1:]:
            raise ValueError(
                f"test images are {tuple(self.test_images.shape[1:])}, training images "
                f"{tuple(self.clean_train.shape[1:])}: they must have the same (C, H, W)"
            )
        n, m = self.clean_train.shape[0], self.test_images.shape[0]
        if n < 2 or m < 1:
            raise ValueError(f"need >= 2 training and >= 1 test images, got {n} and {m}")
        self.train_labels = _labels(self.train_labels, n, "train_labels")
        self.test_labels = _labels(self.test_labels, m, "test_labels")
        if self.scraper_labels is not None:
            self.scraper_labels = _labels(self.scraper_labels, n, "scraper_labels")
        self.class_names = [str(c) for c in self.class_names]
        if int(self.train_labels.max()) >= len(self.class_names):
            raise ValueError(
                f"train_labels go up to {int(self.train_labels.max())} but there are only "
                f"{len(self.class_names)} class names"
            )
        if self.scraper_labels is None and int(self.test_labels.max()) >= len(self.class_names):
            raise ValueError(
                f"test_labels go up to {int(self.test_labels.max())} but there are only "
                f"{len(self.class_names)} class names"
            )

    @property
    def labels_for_training(self) -> Tensor:
        """The labels the victims learn: ``scraper_labels`` if given, else ``train_labels``."""
        return self.train_labels if self.scraper_labels is None else self.scraper_labels

    @property
    def num_classes(self) -> int:
        """Outputs of the victims (at least 2)."""
        if self.scraper_labels is None:
            return max(2, len(self.class_names))
        return max(2, int(max(self.scraper_labels.max(), self.test_labels.max())) + 1)

    @property
    def output_class_names(self) -> list[str]:
        """Names of the victims' outputs, in order (``class-<i>`` where no name is known)."""
        names = self.class_names if self.scraper_labels is None else self.scraper_class_names
        names = list(names or [])
        return names + [f"class-{i}" for i in range(len(names), self.num_classes)]

    @property
    def chance(self) -> float:
        """``max(1 / num_classes, frequency of the most common test label)``."""
        counts = torch.bincount(self.test_labels, minlength=self.num_classes)
        return max(1.0 / self.num_classes, float(counts.max()) / self.test_labels.numel())


def _labels(t: Tensor | Sequence[int], n: int, name: str) -> Tensor:
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must be integers, got {t.dtype}")
    t = t.to(torch.int64)
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if int(t.min()) < 0:
        raise ValueError(f"{name} must be >= 0")
    return t


@dataclass(frozen=True)
class Thresholds:
    """Verdict thresholds on the worst peak-accuracy PER (see the module docstring)."""

    protected: float = 0.7
    weak: float = 0.3

    def __post_init__(self) -> None:
        if not self.weak <= self.protected:
            raise UsageError(
                f"the weak threshold ({self.weak}) must not exceed the protected one "
                f"({self.protected})"
            )

    def to_dict(self) -> dict[str, Any]:
        """``{"protected", "weak", "score": "per_peak"}``."""
        return {"protected": self.protected, "weak": self.weak, "score": "per_peak"}


# --------------------------------------------------------------------------- results


@dataclass
class RunRecord:
    """One trained victim: which attack, which training set, which seed, and its history."""

    attack: str
    train_set: str  # "clean" or "protected"
    seed: int
    history: TrainHistory

    def to_json(self) -> dict[str, Any]:  # noqa: D102
        return {"train_set": self.train_set, "seed": self.seed, **finite(self.history.to_dict())}


@dataclass
class AccuracySummary:
    """Peak and last-epoch test accuracy of one training set over seeds (fractions in [0, 1]).

    ``*_std`` is the sample standard deviation (``None`` for a single seed).
    """

    peak: list[float]
    last: list[float]

    @property
    def peak_mean(self) -> float:  # noqa: D102
        return statistics.fmean(self.peak)

    @property
    def last_mean(self) -> float:  # noqa: D102
        return statistics.fmean(self.last)

    @property
    def peak_std(self) -> float | None:  # noqa: D102
        return statistics.stdev(self.peak) if len(self.peak) > 1 else None

    @property
    def last_std(self) -> float | None:  # noqa: D102
        return statistics.stdev(self.last) if len(self.last) > 1 else None

    def to_json(self) -> dict[str, Any]:  # noqa: D102
        return {
            "peak_mean": self.peak_mean,
            "peak_std": self.peak_std,
            "last_mean": self.last_mean,
            "last_std": self.last_std,
            "peak": list(self.peak),
            "last": list(self.last),
        }


def protection_score(acc_clean: float, acc_protected: float, chance: float) -> float | None:
    """Unclipped ``(acc_clean - acc_protected) / (acc_clean - chance)``; ``None`` if the clean
    accuracy does not beat chance (then the score is undefined)."""
    margin = acc_clean - chance
    if margin <= 1e-9:
        return None
    return (acc_clean - acc_protected) / margin


def _clip(x: float | None) -> float | None:
    return None if x is None else max(-1.0, min(1.0, x))


@dataclass
class AttackResult:
    """Everything measured for one attack: the runs and the scores."""

    name: str
    params: dict[str, Any]
    chance: float
    runs: list[RunRecord] = field(default_factory=list)
    image_size: int | None = None  # the square size the victims trained at

    def summary(self, train_set: str) -> AccuracySummary:
        """Peak/last accuracies of ``train_set`` ("clean" or "protected") over seeds."""
        runs = [r for r in self.runs if r.train_set == train_set]
        return AccuracySummary(
            [r.history.peak_test_acc for r in runs], [r.history.last_test_acc for r in runs]
        )

    @property
    def per_peak_raw(self) -> float | None:
        """Unclipped PER on the mean peak accuracies."""
        c, p = self.summary("clean"), self.summary("protected")
        return protection_score(c.peak_mean, p.peak_mean, self.chance)

    @property
    def per_last_raw(self) -> float | None:
        """Unclipped PER on the mean last-epoch accuracies."""
        c, p = self.summary("clean"), self.summary("protected")
        return protection_score(c.last_mean, p.last_mean, self.chance)

    @property
    def per_peak(self) -> float | None:
        """PER on peak accuracy, clipped to [-1, 1]; the verdict's score."""
        return _clip(self.per_peak_raw)

    @property
    def per_last(self) -> float | None:
        """PER on last-epoch accuracy, clipped to [-1, 1]."""
        return _clip(self.per_last_raw)

    @property
    def notes(self) -> list[str]:
        """Warnings about how far the scores can be trusted."""
        notes = []
        clean = self.summary("clean")
        if self.per_peak_raw is None:
            notes.append(
                f"the clean baseline did not learn (peak accuracy {clean.peak_mean:.3f} <= "
                f"chance {self.chance:.3f}): PER is undefined; train longer or use another model"
            )
        elif clean.peak_mean - self.chance < 0.1:
            notes.append(
                f"the clean baseline is only {100 * (clean.peak_mean - self.chance):.1f} points "
                "above chance: PER is noisy"
            )
        if self.per_last_raw is None and self.per_peak_raw is not None:
            notes.append("the clean baseline ended at chance level: last-epoch PER is undefined")
        return notes

    def to_json(self) -> dict[str, Any]:  # noqa: D102
        return finite(
            {
                "name": self.name,
                "image_size": self.image_size,
                "params": self.params,
                "chance": self.chance,
                "clean": self.summary("clean").to_json(),
                "protected": self.summary("protected").to_json(),
                "per_peak": self.per_peak,
                "per_last": self.per_last,
                "per_peak_raw": self.per_peak_raw,
                "per_last_raw": self.per_last_raw,
                "notes": self.notes,
                "runs": [r.to_json() for r in self.runs],
            }
        )


@dataclass
class VerifyResult:
    """The outcome of :func:`run_verification`; :meth:`to_json` gives the versioned report."""

    model: str
    config: TrainConfig
    seeds: list[int]
    thresholds: Thresholds
    attacks: list[AttackResult]
    data: dict[str, Any]
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    warnings: list[str] = field(default_factory=list)  # run-level notes from the caller

    @property
    def worst(self) -> AttackResult | None:
        """The attack with the lowest peak PER (``None`` if no PER is defined)."""
        scored = [a for a in self.attacks if a.per_peak is not None]
        return min(scored, key=lambda a: a.per_peak) if scored else None  # type: ignore[arg-type, return-value]

    @property
    def verdict(self) -> str:
        """``"protected"``, ``"weak"``, ``"not protected"`` or ``"inconclusive"``."""
        if any(a.per_peak is None for a in self.attacks) or self.worst is None:
            return "inconclusive"
        return verdict_for(self.worst.per_peak, self.thresholds)  # type: ignore[arg-type]

    @property
    def notes(self) -> list[str]:
        """Run-level notes (per-attack notes are prefixed with the attack name)."""
        notes = list(self.warnings) + [f"{a.name}: {n}" for a in self.attacks for n in a.notes]
        undefined = [a.name for a in self.attacks if a.per_peak is None]
        if undefined:
            notes.insert(
                0,
                "verdict inconclusive: the clean baseline did not learn under "
                + ", ".join(undefined),
            )
        return notes

    def to_json(self) -> dict[str, Any]:
        """The report dict (``schema`` ``unlearnable.verify-report``, ``schema_version`` 2)."""
        worst = self.worst
        return finite(
            {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "created": self.created,
                "versions": versions(),
                "model": self.model,
                "config": self.config.to_dict(),
                "seeds": list(self.seeds),
                "data": dict(self.data),
                "thresholds": self.thresholds.to_dict(),
                "verdict": self.verdict,
                "worst_attack": worst.name if worst is not None else None,
                "worst_per": worst.per_peak if worst is not None else None,
                "per_by_size": per_by_size(self.attacks, self.thresholds),
                "notes": self.notes,
                "attacks": [a.to_json() for a in self.attacks],
            }
        )


def per_by_size(attacks: Sequence[AttackResult], thresholds: Thresholds) -> list[dict[str, Any]]:
    """One row per scraper resolution (the attacks' ``image_size``, in order of appearance):
    ``image_size``, the ``worst_attack`` there, its ``per_peak`` / ``per_last`` and the
    ``verdict`` that size alone would get. The run's verdict is that of the worst row."""
    sizes = list(dict.fromkeys(a.image_size for a in attacks))
    rows = []
    for size in sizes:
        group = [a for a in attacks if a.image_size == size]
        scored = [a for a in group if a.per_peak is not None]
        worst = min(scored, key=lambda a: a.per_peak) if scored else None  # type: ignore[arg-type, return-value]
        verdict = "inconclusive"
        if worst is not None and worst.per_peak is not None and len(scored) == len(group):
            verdict = verdict_for(worst.per_peak, thresholds)
        rows.append(
            {
                "image_size": size,
                "worst_attack": worst.name if worst is not None else None,
                "per_peak": worst.per_peak if worst is not None else None,
                "per_last": worst.per_last if worst is not None else None,
                "verdict": verdict,
            }
        )
    return rows


def verdict_for(per: float, thresholds: Thresholds) -> str:
    """The verdict for a worst-case peak PER under ``thresholds``."""
    if per >= thresholds.protected:
        return "protected"
    if per >= thresholds.weak:
        return "weak"
    return "not protected"


def versions() -> dict[str, str]:
    """Versions of unlearnable, torch and Python, for reports (see :func:`provenance`)."""
    info = provenance()
    return {name: info[name] for name in ("unlearnable", "torch", "python")}


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class VerifyProgress:
    """What :func:`run_verification` reports to its ``progress`` callback after every epoch.

    ``run`` counts trained victims from 1 to ``num_runs``; ``stats`` is the epoch's row of
    :attr:`TrainHistory.epochs` (``epoch``, ``train_loss``, ``train_acc``, ``test_acc``, ...).
    """

    run: int
    num_runs: int
    attack: str
    train_set: str
    seed: int
    epoch: int
    num_epochs: int
    stats: dict[str, Any]


VerifyProgressCallback = Callable[[VerifyProgress], None]

#: ``on_trained(attack, train_set, seed, model, image_shape)``: see :func:`run_verification`.
TrainedCallback = Callable[[str, str, int, torch.nn.Module, tuple[int, int, int]], None]


def _as_attack(attack: str | Attack) -> Attack:
    return make_attack(attack) if isinstance(attack, str) else attack


def _view(attack: Attack, images: Tensor, clean: Tensor, generator: torch.Generator) -> Tensor:
    """The attack's view of a training set; keeps the uint8 tensor when the attack is identity."""
    as_float = to_float_images(images)
    view = attack.prepare_train(as_float, to_float_images(clean), generator)
    return images if view is as_float else view


def _test_view(attack: Attack, images: Tensor) -> Tensor:
    as_float = to_float_images(images)
    view = attack.prepare_test(as_float)
    return images if view is as_float else view


def run_verification(
    data: VerifyData,
    attacks: Sequence[str | Attack],
    model: str,
    config: TrainConfig,
    seeds: Sequence[int],
    thresholds: Thresholds | dict[str, float] | None = None,
    progress: VerifyProgressCallback | None = None,
    on_trained: TrainedCallback | None = None,
) -> VerifyResult:
    """Train a clean and a protected victim per attack and seed; score and judge the protection.

    ``attacks``: registered attack names (``"erm"``, ``"at-linf-8"``, ...; see
    ``ATTACKS.names()``) or :class:`Attack` objects. ``model``: a victim name for
    :func:`unlearnable.models.build_victim`. Both victims of a pair start from the same weights
    (``build_victim(..., seed=seed)``) and train with ``train_classifier(..., seed=seed)``; the
    attack's ``prepare_train`` gets a generator seeded from ``seed`` too, the same for both.
    ``thresholds`` may be a :class:`Thresholds` or a dict with ``protected`` and/or ``weak``.
    ``on_trained(attack, train_set, seed, model, image_shape)`` is called with every victim
    after its training (e.g. to save it; ``image_shape`` is ``(C, H, W)``); the victim is
    dropped afterwards. See the module docstring for the scores and the verdict.
    """
    if not attacks:
        raise ValueError("give at least one attack")
    if not seeds:
        raise ValueError("give at least one seed")
    if isinstance(thresholds, dict):
        thresholds = Thresholds(**thresholds)
    thresholds = thresholds or Thresholds()
    attack_objs = [_as_attack(a) for a in attacks]
    names = [a.name for a in attack_objs]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    check_victim_name(model)

    labels = data.labels_for_training
    num_classes = data.num_classes
    _, channels, height, width = data.clean_train.shape
    chance = data.chance
    num_runs = len(attack_objs) * len(seeds) * len(TRAIN_SETS)
    run_index = 0
    results: list[AttackResult] = []
    for attack in attack_objs:
        square = height if height == width else None
        result = AttackResult(attack.name, attack.describe(), chance, image_size=square)
        test_view = _test_view(attack, data.test_images)
        for seed in seeds:
            stream = derive_seed(seed, "prepare_train")
            for train_set in TRAIN_SETS:
                source = data.clean_train if train_set == "clean" else data.protected_train
                train_view = _view(
                    attack, source, data.clean_train, torch.Generator().manual_seed(stream)
                )
                victim = build_victim(model, num_classes, height, channels, seed=seed)
                run_index += 1
                callback = None
                if progress is not None:
                    callback = _epoch_callback(
                        progress, run_index, num_runs, attack.name, train_set, seed
                    )
                history = train_classifier(
                    victim,
                    train_view,
                    labels,
                    test_view,
                    data.test_labels,
                    config,
                    attack.policy(),
                    seed=seed,
                    progress=callback,
                    num_classes=num_classes,
                )
                result.runs.append(RunRecord(attack.name, train_set, int(seed), history))
                if on_trained is not None:
                    on_trained(attack.name, train_set, int(seed), victim, (channels, height, width))
                del train_view, victim
        results.append(result)
    data_info = {
        "num_train": int(data.clean_train.shape[0]),
        "num_test": int(data.test_images.shape[0]),
        "image_shape": [int(channels), int(height), int(width)],
        "num_classes": num_classes,
        "class_names": list(data.class_names),
        "scraper_labels": data.scraper_labels is not None,
        "chance": chance,
        "image_sizes": [int(height)] if height == width else [],
    }
    return VerifyResult(model, config, [int(s) for s in seeds], thresholds, results, data_info)


def _epoch_callback(
    progress: VerifyProgressCallback,
    run: int,
    num_runs: int,
    attack: str,
    train_set: str,
    seed: int,
) -> Callable[[int, int, dict[str, Any]], None]:
    def callback(epoch: int, num_epochs: int, stats: dict[str, Any]) -> None:
        progress(VerifyProgress(run, num_runs, attack, train_set, seed, epoch, num_epochs, stats))

    return callback


__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "VERDICTS",
    "AccuracySummary",
    "AttackResult",
    "RunRecord",
    "Thresholds",
    "VerifyData",
    "VerifyProgress",
    "VerifyResult",
    "per_by_size",
    "protection_score",
    "run_verification",
    "verdict_for",
    "versions",
]
