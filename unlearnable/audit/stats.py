"""The audit's statistics on top-1 predictions (numpy only; no model, no key).

Notation: key ``j = 0`` is the owner's, ``j = 1 .. J`` the null keys; ``c`` an owner class
(one transform per class); ``k`` a class of the model; ``i`` a probe image.

* ``preds[j, c, i]``: the model's class for probe ``i`` marked with key ``j``'s class-``c``
  transform. ``clean[i]``: its class for the unmarked probe; ``labels[i]``: the probe's true
  class in the model's classes (``-1`` when unknown).
* Probe ``i`` is *eligible* for target class ``k`` when the model does not already put it
  there (``clean[i] != k``) and it does not belong there (``labels[i] != k``).
* ``rates[j, c, k]``: the share of the probes eligible for ``k`` that key ``j``'s class-``c``
  mark moves to ``k`` (NaN when no probe is eligible for ``k``).

Labelled statistic (owner class ``c`` is model class ``target[c]``): the *move rate*
``rates[j, c, target[c]]`` per class, and their mean over classes per key.

Label-free statistic (no class correspondence needed): the best one-to-one pairing of the
key's marks with model classes (each mark to its own class, as the Hungarian algorithm finds
it) and the mean move rate over the pairs. A model trained on marked images, whatever labels the
scraper gave them, sends each mark consistently to its own class; marks of other keys land less
consistently and often on the same classes. (A model with fewer classes than the manifest
pairs only as many marks as it has classes.)

Both are computed the same way for every key, so for a model that never saw data marked with
the owner's key the owner's value is exchangeable with the null values, and the empirical
p-value ``(1 + #{null >= observed}) / (1 + J)`` is valid (never below ``1 / (1 + J)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_TIE = 1e-12


@dataclass(frozen=True)
class Summary:
    """The owner's value of a statistic against its null values.

    ``p_value``: empirical, ``(1 + #{null >= observed}) / (1 + len(null))``. ``excess``:
    ``observed - null_mean``; ``z``: ``excess / null_std`` (the effect size in null standard
    deviations; ``inf`` when the null does not vary and the observed value is above it, NaN
    with fewer than 2 null values).
    """

    observed: float
    null_mean: float
    null_std: float
    excess: float
    z: float
    p_value: float
    null_count: int

    def to_json(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def summarize(values: np.ndarray) -> Summary:
    """``values[0]`` is the owner's statistic, ``values[1:]`` the null keys' (finite)."""
    observed = float(values[0])
    null = np.asarray(values[1:], dtype=np.float64)
    if null.size == 0:
        raise ValueError("need at least one null value")
    mean = float(null.mean())
    std = float(null.std(ddof=1)) if null.size > 1 else 0.0
    excess = observed - mean
    if null.size < 2:
        z = math.nan
    elif std > 0:
        z = excess / std
    else:
        z = math.inf if excess > _TIE else (-math.inf if excess < -_TIE else 0.0)
    p = (1 + int(np.count_nonzero(null >= observed - _TIE))) / (1 + null.size)
    return Summary(observed, mean, std, excess, z, p, int(null.size))


def eligible_counts(clean: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K,)``: how many probes are eligible for each target class (see the module docs)."""
    n = clean.shape[0]
    in_clean = np.bincount(clean, minlength=num_classes)[:num_classes]
    known = labels >= 0
    in_label = np.bincount(labels[known], minlength=num_classes)[:num_classes]
    both = np.bincount(clean[known & (clean == labels)], minlength=num_classes)[:num_classes]
    return n - in_clean - in_label + both


def move_rates(
    preds: np.ndarray, clean: np.ndarray, labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """``rates[j, c, k]`` (float64, NaN where no probe is eligible for ``k``) from
    ``preds (J+1, C, N)``, ``clean (N,)`` and ``labels (N,)`` (``-1``: unknown), all int."""
    keys, classes, n = preds.shape
    counted = (preds != clean[None, None, :]) & (preds != labels[None, None, :])
    cell = (np.arange(keys * classes).reshape(keys, classes, 1) * num_classes + preds)[counted]
    hits = np.bincount(cell, minlength=keys * classes * num_classes).astype(np.float64)
    hits = hits.reshape(keys, classes, num_classes)
    eligible = eligible_counts(clean, labels, num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(eligible > 0, hits / eligible, np.nan)


def labelled_rates(rates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(J+1, C)``: the move rate of each class's mark to its own model class ``targets[c]``."""
    return rates[:, np.arange(rates.shape[1]), targets]


def label_free_pairs(rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one key's ``rates[c, k]`` ``(C, K)``: ``(model class (C,), rate (C,))`` of the best
    one-to-one pairing (``-1`` and NaN for marks left unpaired when ``K < C``). Rates that
    cannot be measured (NaN) count as 0."""
    from scipy.optimize import linear_sum_assignment

    filled = np.nan_to_num(rates, nan=0.0)
    rows, cols = linear_sum_assignment(filled, maximize=True)
    paired = np.full(rates.shape[0], -1, dtype=np.int64)
    values = np.full(rates.shape[0], np.nan)
    paired[rows] = cols
    values[rows] = filled[rows, cols]
    return paired, values


def label_free_values(rates: np.ndarray) -> np.ndarray:
    """``(J+1,)``: the label-free statistic of every key from ``rates (J+1, C, K)``."""
    return np.array([np.nanmean(label_free_pairs(r)[1]) for r in rates])


__all__ = [
    "Summary",
    "eligible_counts",
    "label_free_pairs",
    "label_free_values",
    "labelled_rates",
    "move_rates",
    "summarize",
]
