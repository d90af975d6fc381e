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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .attacks.base import Attack, make_attack
from .attacks.training import (
    TrainConfig,
    derive_seed,
    to_float_images,
    train_classifier,
)
from .models import build_victim, check_victim_name
from .verify_results import (
    SCHEMA,
    SCHEMA_VERSION,
    TRAIN_SETS,
    VERDICTS,
    AccuracySummary,
    AttackResult,
    RunRecord,
    Thresholds,
    VerifyResult,
    per_by_size,
    protection_score,
    verdict_for,
    versions,
)

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
