"""Detection on exposed models (EBYD stage B1 and B3): which class is the backdoor's target,
and is the model backdoored at all.

After exposure, a backdoored model sends most clean inputs to its target class. A clean model
can collapse too, into a "natural sink": the class it answers when an image's features are
gone (measured: 58 % of clean images into "ship" for one of three clean CIFAR-10 CNNs). The
decision therefore reads a *contrast* histogram ``c``:

1. every exposure contributes a histogram (``readout="final"``: the share of held-out clean
   images the exposed model predicts as each class; ``"early"``: where predictions moved by
   the first epoch that lost ``early_drop`` of the clean accuracy, :func:`read_out`);
2. with several independent exposures the histograms are combined by their per-class
   minimum (:func:`agreed_histogram`: a class scores only if *every* exposure sent clean
   images to it);
3. with ``prior=True`` (default) each class's share is lowered by the share of *featureless*
   copies of the same images (area-averaged to 1/8 of the size and back,
   :func:`featureless`) that the **original** model predicts as that class: the natural sink.

* **target label**: ``t = argmax_k c[k]``, reported when the model is flagged and
  ``c[t] >= dominance``;
* **model detection**: the score is the max share ``max_k c[k]`` (``score="max-share"``,
  default) or EBYD's population variance of the agreed histogram *without* the prior
  (threshold 0.01, which for 10 classes means about 40 % in one class). Flagged when the score
  is >= ``threshold``.

**Calibration (how the defaults were chosen).** ``benchmarks/ebyd_cifar10.py`` trains 3 clean
and 3 backdoored small CNNs (BadNets x 2, Blend; CIFAR-10 JPEG, 8k images) and prints every
variant's raw scores from the same exposure runs. With one CUL exposure on 500 defense images,
final readout and the prior, the clean models scored 0.25, 0.21, 0.30 and the backdoored ones
0.70, 0.66, 0.50 (each top class = the true target); without the prior a clean model scored
0.58 and with two exposures on disjoint halves of the defense set one BadNets model's halves
both collapsed into a non-target class (see the report). The default threshold 0.4 is the
midpoint between the highest clean and the lowest backdoored score of that population (n = 6:
in-sample, small; recalibrate on clean models of your own architecture when you can, the
benchmark prints the scores). On tiny synthetic models no setting was reliable: three
disjoint exposures, early readout and the prior flagged 3 of 4 backdoored models with the
right target but also 2 of 4 clean ones (natural sinks the prior does not catch); the test
in ``tests/test_ebyd.py`` uses a seed where it works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor

SCORES = ("max-share", "variance")
READOUTS = ("final", "early")

#: Default flag thresholds per score.
DEFAULT_THRESHOLDS = {"max-share": 0.4, "variance": 0.01}


@dataclass(frozen=True)
class DetectionConfig:
    """``score``: ``"max-share"`` or ``"variance"`` of the agreed histogram; ``threshold``: flag
    when score >= it (``None``: :data:`DEFAULT_THRESHOLDS`); ``dominance``: minimum agreed share
    of the target class; ``readout``: which histogram each exposure contributes (``"final"``:
    all clean predictions of the exposed model; ``"early"``: where the predictions moved by
    the first epoch that lost the fraction ``early_drop`` of its starting clean accuracy; see
    :func:`read_out`); ``prior``: lower each class's agreed share by the share of featureless
    images the original model gives it (:func:`featureless_prior`), so that a natural sink is
    not taken for a backdoor."""

    score: str = "max-share"
    threshold: float | None = None
    dominance: float = 0.4
    readout: str = "final"
    early_drop: float = 0.3
    prior: bool = True

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise UsageError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.readout not in READOUTS:
            raise UsageError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        if not 0 < self.dominance <= 1:
            raise UsageError(f"dominance must be in (0, 1], got {self.dominance}")
        if not 0 < self.early_drop < 1:
            raise UsageError(f"early_drop must be in (0, 1), got {self.early_drop}")
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
    """The verdict on a model from one or more exposures. ``histogram`` is the agreed histogram
    (the per-class minimum over ``exposures``, the read-out histogram of each exposure) less
    the ``prior`` (where the original model sends featureless images), when one is given;
    ``tops`` the top class of each exposure; ``target`` is ``None`` unless flagged with a
    dominant agreed class."""

    flagged: bool
    score: float
    threshold: float
    score_name: str
    target: int | None
    top_class: int
    top_share: float
    variance: float
    histogram: tuple[float, ...]
    exposures: tuple[tuple[float, ...], ...] = ()
    readout: str = "final"
    prior: tuple[float, ...] | None = None
    inconclusive: str | None = None

    @property
    def verdict(self) -> str:
        """``"backdoored"``, ``"clean"``, or ``"inconclusive"`` (``inconclusive`` says why: the
        model did not classify the clean images to begin with, so its collapse tells
        nothing)."""
        if self.inconclusive:
            return "inconclusive"
        return "backdoored" if self.flagged else "clean"

    @property
    def tops(self) -> tuple[int, ...]:
        return tuple(max(range(len(h)), key=lambda k: h[k]) for h in self.exposures)

    @property
    def agree(self) -> bool:
        """Whether every exposure has the same top class."""
        return len(set(self.tops)) <= 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["histogram"] = list(self.histogram)
        data["exposures"] = [list(h) for h in self.exposures]
        data["prior"] = None if self.prior is None else list(self.prior)
        data["tops"] = list(self.tops)
        data["agree"] = self.agree
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


def agreed_histogram(histograms: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """Per-class minimum of the shares over ``histograms`` (equal lengths): a class keeps a
    large agreed share only if every exposure sent many clean images to it."""
    if not histograms:
        raise UsageError("no histogram to detect from")
    sizes = {len(h) for h in histograms}
    if len(sizes) != 1:
        raise UsageError(f"histograms of different lengths: {sorted(sizes)}")
    return tuple(min(float(h[k]) for h in histograms) for k in range(sizes.pop()))


def gain_histogram(before: Sequence[float], after: Sequence[float]) -> tuple[float, ...]:
    """Where clean predictions moved: the positive part of ``after - before``, normalised to
    sum 1 (all zeros when nothing moved)."""
    gains = [max(0.0, float(a) - float(b)) for a, b in zip(after, before, strict=True)]
    total = sum(gains)
    return tuple(g / total if total > 0 else 0.0 for g in gains)


def _observed_acc(row: Mapping[str, Any]) -> float:
    held = row.get("holdout_acc")
    return float(row["clean_acc"] if held is None else held)


def read_out(rows: Sequence[Mapping[str, Any]], config: DetectionConfig | None = None):
    """``(histogram, epoch)`` an exposure run contributes (``rows``: its per-epoch rows, epoch
    0 first, as :func:`~unlearnable.defenses.exposure.expose` logs them).

    ``readout="final"``: the last row's ``histogram``. ``"early"``: the :func:`gain_histogram`
    (where the clean predictions moved since epoch 0) at the first epoch whose accuracy on the
    observed clean images (held-out, else defense set) has lost the fraction ``early_drop`` of its
    starting value (the last row when none has), i.e. where the exposure sends the images it
    first breaks, before a collapse of everything."""
    config = config or DetectionConfig()
    if not rows:
        raise UsageError("an exposure without rows")
    if config.readout == "final":
        return tuple(rows[-1]["histogram"]), int(rows[-1]["epoch"])
    start = _observed_acc(rows[0])
    level = start * (1 - config.early_drop)
    chosen = next((r for r in rows[1:] if _observed_acc(r) <= level), rows[-1])
    return gain_histogram(rows[0]["histogram"], chosen["histogram"]), int(chosen["epoch"])


def detect(
    histogram: Sequence[float] | Sequence[Sequence[float]],
    config: DetectionConfig | None = None,
    prior: Sequence[float] | None = None,
) -> Detection:
    """Target label and verdict from one histogram (shares per class, summing to 1) or from
    several, one per independent exposure (scored on their :func:`agreed_histogram`). With a
    ``prior`` (the original model's histogram on featureless images, see
    :func:`featureless`), each class's agreed share is lowered by its prior share (at 0): a
    class the model picks anyway when features are gone is a natural sink, not evidence of a
    backdoor."""
    config = config or DetectionConfig()
    many = bool(histogram) and isinstance(histogram[0], Sequence)
    exposures = tuple(
        tuple(float(p) for p in h)
        for h in (histogram if many else [histogram])  # type: ignore[union-attr]
    )
    hist = agreed_histogram(exposures)
    variance = histogram_variance(hist) if len(hist) > 1 else 0.0  # EBYD's: without the prior
    if prior is not None:
        prior = tuple(float(p) for p in prior)
        if len(prior) != len(hist):
            raise UsageError(f"prior over {len(prior)} classes, histograms over {len(hist)}")
        hist = tuple(max(0.0, h - p) for h, p in zip(hist, prior, strict=True))
    if len(hist) < 2:
        raise UsageError("a histogram over at least 2 classes is needed")
    top = max(range(len(hist)), key=lambda k: hist[k])
    score = hist[top] if config.score == "max-share" else variance
    threshold = config.flag_threshold
    flagged = score >= threshold
    target = detect_target(hist, config.dominance) if flagged else None
    return Detection(
        flagged, score, threshold, config.score, target, top, hist[top], variance, hist,
        exposures, config.readout, prior,
    )  # fmt: skip


def detect_exposures(
    runs: Sequence[Sequence[Mapping[str, Any]]],
    config: DetectionConfig | None = None,
    prior: Sequence[float] | None = None,
) -> Detection:
    """:func:`detect` on the :func:`read_out` histograms of several exposure runs (their rows)."""
    config = config or DetectionConfig()
    return detect([read_out(rows, config)[0] for rows in runs], config, prior)


def featureless(images: Tensor) -> Tensor:
    """Images with their features gone but their colour layout kept: area-averaged down to
    ``max(2, S // 8)`` px and bilinearly back up. ``images``: uint8 or float ``(N, C, S, S)``
    (float in [0, 1] out, same shape)."""
    import torch.nn.functional as F  # noqa: PLC0415

    from ..training.classification import to_float_images  # noqa: PLC0415

    x = to_float_images(images)
    small = F.interpolate(x, size=max(2, x.shape[-1] // 8), mode="area")
    return F.interpolate(small, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)


def featureless_prior(model: Any, images: Tensor, num_classes: int) -> tuple[float, ...]:
    """The histogram of ``model``'s predictions on :func:`featureless` copies of ``images``."""
    from ..training.classification import predict, prediction_histogram  # noqa: PLC0415

    return tuple(prediction_histogram(predict(model, featureless(images)), num_classes))


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
    "READOUTS",
    "SCORES",
    "Detection",
    "DetectionConfig",
    "agreed_histogram",
    "auroc",
    "detect",
    "detect_exposures",
    "detect_target",
    "featureless",
    "featureless_prior",
    "gain_histogram",
    "histogram_variance",
    "read_out",
]
