"""Scoring a verification: PER, verdicts and the records of a result.

This module holds what :func:`unlearnable.verify.run_verification` produces and how it is
judged: the report constants, :class:`Thresholds`, the per-victim :class:`RunRecord`, the
per-attack :class:`AttackResult` (PER on peak and last-epoch accuracy), the whole
:class:`VerifyResult` with its verdict and versioned report, and the per-size rows
(:func:`per_by_size`). The scores and the verdict are defined in :mod:`unlearnable.verify`'s
docstring. Everything here is re-exported by :mod:`unlearnable.verify`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .attacks.training import TrainConfig, TrainHistory
from .errors import UsageError
from .provenance import provenance
from .run_folder import finite

SCHEMA = "unlearnable.verify-report"
SCHEMA_VERSION = 2
"""Version 2 added each attack's ``image_size``, the report's ``per_by_size`` rows (one per
scraper resolution) and ``data.image_sizes``; version 1 reports still validate."""
VERDICTS = ("protected", "weak", "not protected", "inconclusive")
TRAIN_SETS = ("clean", "protected")


@dataclass(frozen=True)
class Thresholds:
    """Verdict thresholds on the worst peak-accuracy PER (see :mod:`unlearnable.verify`)."""

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
    """The outcome of :func:`~unlearnable.verify.run_verification`; :meth:`to_json` gives the
    versioned report."""

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


__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "TRAIN_SETS",
    "VERDICTS",
    "AccuracySummary",
    "AttackResult",
    "RunRecord",
    "Thresholds",
    "VerifyResult",
    "per_by_size",
    "protection_score",
    "verdict_for",
    "versions",
]
