"""Detection on an exposed model (EBYD stage B1 and B3): which class is the backdoor's target,
and is the model backdoored at all.

After exposure, a backdoored model sends most clean inputs to its target class; a clean model
either keeps spreading its (now mostly wrong) predictions over several classes or drifts into
a "sink" class less completely. Both decisions read the clean-prediction histogram ``p`` of the
exposed model (``p[k]`` = share of held-out clean images predicted as class ``k``):

* **target label**: ``t = argmax_k p[k]``, reported only when ``p[t] >= dominance``
  (default 0.5: a strict majority, which ignores the transient sink classes of mid-run
  histograms);
* **model detection**: the score is the max share ``q = max_k p[k]`` (``score="max-share"``,
  default) or the population variance ``Var_k(p[k])`` (``score="variance"``, EBYD's detector).
  The model is **flagged** when the score is >= ``threshold``. The default threshold 0.6 for the
  max share means "at least 60 % of clean images collapse into one class"; EBYD's variance
  threshold 0.01 corresponds, for 10 classes, to a max share of about 0.4 (``Var = (q - 1/K)^2 /
  (K - 1)`` when the other classes share the rest evenly), which flags clean models in our
  measurements (see the benchmark). A flagged model has a target only if the dominance
  requirement holds too (it does whenever ``threshold >= dominance`` for the max share).

Calibrate the threshold on clean models of your own architecture when you can: the scores of
the benchmark's clean and backdoored models are printed by ``benchmarks/ebyd_cifar10.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError

SCORES = ("max-share", "variance")

#: Default flag thresholds per score.
DEFAULT_THRESHOLDS = {"max-share": 0.6, "variance": 0.01}


@dataclass(frozen=True)
class DetectionConfig:
    """``score``: ``"max-share"`` or ``"variance"``; ``threshold``: flag when score >= it
    (``None``: :data:`DEFAULT_THRESHOLDS`); ``dominance``: minimum share of the target class."""

    score: str = "max-share"
    threshold: float | None = None
    dominance: float = 0.5

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise UsageError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if not 0 < self.dominance <= 1:
            raise UsageError(f"dominance must be in (0, 1], got {self.dominance}")
        if self.threshold is not None and self.threshold < 0:
            raise UsageError(f"threshold must be >= 0, got {self.threshold}")

    @property
    def flag_threshold(self) -> float:
        """The threshold in use."""
        return DEFAULT_THRESHOLDS[self.score] if self.threshold is None else self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "threshold": self.flag_threshold}


@dataclass(frozen=True)
class Detection:
    """The verdict on one exposed model. ``target`` is ``None`` without a dominant class."""

    flagged: bool
    score: float
    threshold: float
    score_name: str
    target: int | None
    top_class: int
    top_share: float
    variance: float
    histogram: tuple[float, ...]

    @property
    def verdict(self) -> str:
        return "backdoored" if self.flagged else "clean"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["histogram"] = list(self.histogram)
        data["verdict"] = self.verdict
        return data


def histogram_variance(histogram: Sequence[float]) -> float:
    """Population variance of the shares (0 for a uniform histogram)."""
    k = len(histogram)
    mean = sum(histogram) / k
    return sum((p - mean) ** 2 for p in histogram) / k


def detect_target(histogram: Sequence[float], dominance: float = 0.5) -> int | None:
    """``argmax`` of ``histogram`` when its share is >= ``dominance``, else ``None``."""
    if not histogram:
        raise UsageError("empty histogram")
    top = max(range(len(histogram)), key=lambda k: histogram[k])
    return top if histogram[top] >= dominance else None


def detect(histogram: Sequence[float], config: DetectionConfig | None = None) -> Detection:
    """Target label and verdict from the exposed model's clean-prediction ``histogram``
    (shares per class, summing to 1)."""
    config = config or DetectionConfig()
    hist = tuple(float(p) for p in histogram)
    if len(hist) < 2:
        raise UsageError("a histogram over at least 2 classes is needed")
    top = max(range(len(hist)), key=lambda k: hist[k])
    variance = histogram_variance(hist)
    score = hist[top] if config.score == "max-share" else variance
    threshold = config.flag_threshold
    flagged = score >= threshold
    target = detect_target(hist, config.dominance) if flagged else None
    return Detection(
        flagged, score, threshold, config.score, target, top, hist[top], variance, hist
    )


def auroc(scores_positive: Sequence[float], scores_negative: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2
    (``None`` when either list is empty)."""
    if not scores_positive or not scores_negative:
        return None
    wins = 0.0
    for p in scores_positive:
        for n in scores_negative:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(scores_positive) * len(scores_negative))


__all__ = [
    "DEFAULT_THRESHOLDS",
    "SCORES",
    "Detection",
    "DetectionConfig",
    "auroc",
    "detect",
    "detect_target",
    "histogram_variance",
]
