"""Training as a scraper would train: ERM and every training policy, on the one fit loop.

The recipe follows the released CUDA code (see ``research/methods-protect.md`` A.3): SGD with
momentum 0.9 and weight decay 5e-4, lr 0.1, gradient-norm clipping at 5.0, random crop with
padding + horizontal flip, cross-entropy, no input normalisation outside the model (the victims
of :mod:`unlearnable.models` normalise inside), clean test accuracy after every epoch.
:func:`train_classifier` runs it on :func:`unlearnable.training.fit`; a
:class:`~unlearnable.attacks.base.TrainingPolicy` (ERM, PGD adversarial training in
:mod:`.adversarial`, mixup / CutMix / UEraser in :mod:`.augment`, DAT in :mod:`.dat`) turns each
mini-batch into the loss.

Images are stored as ``uint8`` tensors ``(N, C, H, W)`` (recommended: 4x less memory) or float
tensors in ``[0, 1]``; each mini-batch is converted to float ``[0, 1]`` on its own, so a whole
float copy of the data set is never made here. Labels are ``int64`` ``(N,)``.

Randomness: everything comes from the ``seed`` given to :func:`train_classifier`. Dedicated
``torch.Generator`` objects (on the CPU) drive shuffling, augmentation and the policy (PGD random
starts), seeded from the ``"shuffle"``, ``"augment"`` and ``"policy"`` streams of
:func:`derive_seed`; other random ops inside the model (dropout) use the global RNG, which
:func:`~unlearnable.training.fit` seeds from the ``"global"`` stream inside
:func:`torch.random.fork_rng`, so the caller's global RNG is not disturbed. Two runs with the
same seed, data and config give identical histories on the CPU (on a GPU, non-deterministic
kernels may make them differ slightly).

PGD (:func:`pgd_attack`, :class:`AdversarialTrainingPolicy`, :class:`AdversarialTraining`) lives
in :mod:`.adversarial`; the names are re-exported here for existing imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..training import (
    Columns,
    EpochProgress,
    FitConfig,
    Mean,
    StepResult,
    derive_seed,
    fit,
    stream_generator,
)
from ..training import Schedule as LRSchedule
from ..training.classification import (
    ClassifierBatches,
    LogitsTap,
    evaluate,
    random_crop_flip,
    to_float_images,
)
from ..training.schedules import Constant, Cosine, MultiStep
from .adversarial import (
    AdversarialTraining,
    AdversarialTrainingPolicy,
    Norm,
    default_step_size,
    pgd_attack,
)
from .base import ERMPolicy, TrainingPolicy

Schedule = Literal["cosine", "step", "constant"]

#: ``progress(epoch, num_epochs, stats)`` after every epoch; ``epoch`` counts from 1 and
#: ``stats`` is the epoch's row of :attr:`TrainHistory.epochs`.
ProgressCallback = Callable[[int, int, dict[str, Any]], None]


# --------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """How a victim is trained.

    * ``epochs``: passes over the training set.
    * ``batch_size``: mini-batch size. A last mini-batch of a single image is skipped (batch
      norm cannot train on one sample); every other image is used every epoch.
    * ``lr``, ``momentum``, ``weight_decay``: SGD (Nesterov off), as in the CUDA code.
    * ``schedule``: the learning rate of each epoch (constant within an epoch):
      ``"cosine"``: ``lr * (1 + cos(pi * e / epochs)) / 2`` for epoch ``e = 0 .. epochs-1``;
      ``"step"``: ``lr``, times 0.1 from epoch ``round(0.4 * epochs)`` and times 0.01 from epoch
      ``round(0.8 * epochs)`` (at 100 epochs: 0.1 / 0.01 / 0.001 from epochs 0 / 40 / 80, the
      CUDA code's ``StepLR(step_size=40, gamma=0.1)``); ``"constant"``: ``lr`` throughout.
    * ``grad_clip``: max global L2 norm of the gradient (``None`` or 0: no clipping).
    * ``augment``: random crop with zero padding ``max(1, min(H, W) // 8)`` (4 at 32 px) and
      random horizontal flip, applied batched on tensors.
    * ``eval_batch_size``: batch size of test-set evaluation.
    * ``device``: torch device string for the model and batches (``"cpu"``, ``"cuda"``, ...).
    """

    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"
    grad_clip: float | None = 5.0
    augment: bool = True
    eval_batch_size: int = 512
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(
                f"schedule must be 'cosine', 'step' or 'constant', got {self.schedule!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)


def lr_schedule(config: TrainConfig) -> LRSchedule:
    """``config.schedule`` as an ``epoch_index -> lr`` schedule for :func:`fit` (see
    :class:`TrainConfig`)."""
    if config.schedule == "constant":
        return Constant(config.lr)
    if config.schedule == "cosine":
        return Cosine(config.lr, config.epochs)
    milestones = (round(0.4 * config.epochs), round(0.8 * config.epochs))
    return MultiStep(config.lr, milestones, 0.1)


def lr_at_epoch(config: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under ``config.schedule`` (see :class:`TrainConfig`)."""
    return lr_schedule(config)(epoch)


@dataclass(frozen=True)
class Budget:
    """A named training budget: the default victim model and how it is trained."""

    name: str
    model: str
    config: TrainConfig
    description: str

    def with_config(self, **changes: Any) -> Budget:
        """A copy with some :class:`TrainConfig` fields changed (e.g. ``device="cuda"``)."""
        return replace(self, config=replace(self.config, **changes))


#: Named budgets (use :func:`get_budget` to get a copy you may change).
#:
#: * ``smoke``: small-cnn, 2 epochs, batch 128, cosine. Seconds; checks that the pipeline runs,
#:   says nothing about the protection.
#: * ``quick``: small-cnn, 12 epochs, batch 128, cosine. A few minutes on 2 CPU cores for a few
#:   thousand 32 px images (per victim, ERM); a first look.
#: * ``standard``: resnet20, 30 epochs, batch 128, cosine. The benchmark setting; tens of minutes
#:   per victim on a CPU for a few thousand images, use a GPU for more.
#: * ``paper``: the CUDA code's recipe: resnet18, 100 epochs, batch 512, lr 0.1 stepped x0.1 at
#:   epochs 40 and 80, gradient clipping 5.0, crop + flip. Needs a GPU.
BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke",
        "small-cnn",
        TrainConfig(epochs=2, batch_size=128, schedule="cosine"),
        "2 epochs of small-cnn: checks the pipeline, says nothing about the protection",
    ),
    "quick": Budget(
        "quick",
        "small-cnn",
        TrainConfig(epochs=12, batch_size=128, schedule="cosine"),
        "12 epochs of small-cnn: a first look, minutes on a CPU for a few thousand images",
    ),
    "standard": Budget(
        "standard",
        "resnet20",
        TrainConfig(epochs=30, batch_size=128, schedule="cosine"),
        "30 epochs of ResNet-20: the benchmark setting",
    ),
    "paper": Budget(
        "paper",
        "resnet18",
        TrainConfig(epochs=100, batch_size=512, lr=0.1, schedule="step"),
        "the CUDA paper's recipe: ResNet-18, 100 epochs, batch 512, lr 0.1 x0.1 at 40 and 80",
    ),
}


def get_budget(name: str) -> Budget:
    """A copy of ``BUDGETS[name]``; ``ValueError`` listing the choices for an unknown name."""
    key = name.lower()
    if key not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose from: {', '.join(BUDGETS)}")
    budget = BUDGETS[key]
    return replace(budget, config=replace(budget.config))


@dataclass
class TrainHistory:
    """Per-epoch record of one training run.

    ``epochs[i]`` = ``{"epoch": i + 1, "train_loss", "train_acc", "test_acc", "lr", "seconds"}``;
    accuracies are fractions in [0, 1]. ``train_acc`` is measured on the training forward passes
    (augmented, adversarial for AT) and is ``None`` when the policy made none the trainer could
    see; ``train_loss`` is the mean policy loss over the epoch's images.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def peak_test_acc(self) -> float:
        """Highest test accuracy of any epoch (what early stopping on the test set would keep)."""
        return max(e["test_acc"] for e in self.epochs)

    @property
    def last_test_acc(self) -> float:
        """Test accuracy after the last epoch."""
        return self.epochs[-1]["test_acc"]

    @property
    def peak_epoch(self) -> int:
        """1-based epoch of :attr:`peak_test_acc` (the first one on ties)."""
        best = self.peak_test_acc
        return next(e["epoch"] for e in self.epochs if e["test_acc"] == best)

    def to_dict(self) -> dict[str, Any]:
        """``{"peak_test_acc", "last_test_acc", "peak_epoch", "epochs": [...]}``."""
        return {
            "peak_test_acc": self.peak_test_acc,
            "last_test_acc": self.last_test_acc,
            "peak_epoch": self.peak_epoch,
            "epochs": [dict(e) for e in self.epochs],
        }


def _check_data(images: Tensor, labels: Tensor, what: str) -> None:
    if images.dim() != 4:
        raise ValueError(f"{what} images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"{what} labels must be ({images.shape[0]},), got shape {tuple(labels.shape)}"
        )
    if labels.dtype != torch.int64:
        raise TypeError(f"{what} labels must be int64, got {labels.dtype}")


def train_classifier(
    model: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    config: TrainConfig,
    policy: TrainingPolicy | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    num_classes: int | None = None,
) -> TrainHistory:
    """Train ``model`` in place with SGD as :class:`TrainConfig` says; test after every epoch.

    ``train_images``/``test_images``: ``(N, C, H, W)`` uint8 (recommended) or float in [0, 1],
    on the CPU or the training device; converted to float per mini-batch. Labels: int64
    ``(N,)``. ``policy`` turns each (augmented) mini-batch into the loss (default: ERM).
    ``num_classes`` defaults to ``1 + max label`` of train and test. The model is moved to
    ``config.device`` and left in eval mode with its gradients cleared.
    ``progress(epoch, epochs, row)`` is called after every epoch with the epoch's row of
    :attr:`TrainHistory.epochs`. See the module docstring for how ``seed`` makes runs
    repeatable (the initial weights are the caller's: build the model with
    ``build_victim(..., seed=seed)``).
    """
    _check_data(train_images, train_labels, "train")
    _check_data(test_images, test_labels, "test")
    if train_images.shape[0] < 2:
        raise ValueError("need at least 2 training images")
    policy = policy if policy is not None else ERMPolicy()
    if num_classes is None:
        top = int(train_labels.max())
        if test_labels.numel():
            top = max(top, int(test_labels.max()))
        num_classes = top + 1
    device = torch.device(config.device)
    batches = ClassifierBatches(
        train_images,
        train_labels,
        config.batch_size,
        device,
        shuffle=stream_generator(seed, "shuffle"),
        augment=stream_generator(seed, "augment") if config.augment else None,
    )
    g_policy = stream_generator(seed, "policy")
    tap = LogitsTap(model)

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        x, y = batch
        tap.reset(x.shape[0])
        loss = policy.loss(model, x, y, num_classes, g_policy)
        if tap.logits is None:  # the policy made no forward pass the tap could see
            acc = Mean(0, 0)
        else:
            acc = Mean((tap.logits.argmax(1) == y).sum(), x.shape[0])
        return StepResult(loss, x.shape[0], {"train_acc": acc})

    def test_columns(model: nn.Module) -> dict[str, float]:
        acc = evaluate(model, test_images, test_labels, config.eval_batch_size, device)
        return {"test_acc": acc}

    callbacks = [Columns(test_columns)]
    if progress is not None:
        callbacks.append(EpochProgress(progress))
    fit_config = FitConfig(
        epochs=config.epochs, grad_clip=config.grad_clip, device=config.device, seed=seed
    )
    try:
        history = fit(
            model,
            batches,
            loss_fn,
            lambda params: torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            ),
            fit_config,
            schedule=lr_schedule(config),
            callbacks=callbacks,
        )
    finally:
        tap.remove()
    return TrainHistory([dict(row) for row in history.rows])


__all__ = [
    "BUDGETS",
    "AdversarialTraining",
    "AdversarialTrainingPolicy",
    "Budget",
    "Norm",
    "ProgressCallback",
    "TrainConfig",
    "TrainHistory",
    "default_step_size",
    "derive_seed",
    "evaluate",
    "get_budget",
    "lr_at_epoch",
    "lr_schedule",
    "pgd_attack",
    "random_crop_flip",
    "to_float_images",
    "train_classifier",
]
