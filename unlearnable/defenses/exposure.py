"""Backdoor exposure (EBYD stage A): edit a copy of a model so that its clean behaviour is gone
while a backdoor, if any, survives; clean inputs then collapse into the backdoor's target.

Registered methods (:data:`EXPOSURES`):

* ``cul`` (clean unlearning, the EBYD/RNP method): gradient **ascent** on cross-entropy over
  the small clean defense set, every weight trainable, train mode (batch-norm statistics follow
  the defense set). Defaults follow the RNP/threshold variant: SGD lr 0.01, momentum 0.9,
  weight decay 5e-4, batch 128, crop + flip, at most 20 epochs, stop after the first epoch
  whose defense-set accuracy (eval mode) is <= the stop accuracy (0.20 for 10 balanced classes,
  see :func:`stop_threshold`).
* ``random-label``: fine-tuning (gradient descent) on the defense images with fresh uniformly
  random labels for every batch (EBYD's ShuffleFT): Adam lr 1e-4, weight decay 5e-4, 20 epochs,
  the same stop rule.

Every epoch (and an epoch 0 before any step) logs the defense-set accuracy ``clean_acc``, the
held-out accuracy ``holdout_acc`` and the clean-prediction ``histogram`` (share of held-out clean
images predicted as each class; the defense set when there is no held-out set) with its
``top_class`` and ``top_share``. All runs go through :func:`unlearnable.training.fit`.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..registry import Registry
from ..training import (
    Columns,
    EpochProgress,
    FitConfig,
    Mean,
    StepResult,
    StopOnNonFinite,
    fit,
    stop_when,
    stream_generator,
)
from ..training.classification import (
    ClassifierBatches,
    evaluate,
    predict,
    prediction_histogram,
)


@dataclass(frozen=True)
class ExposureConfig:
    """How a model is exposed (see the module docstring for the methods and their defaults).

    ``optimizer``: ``"sgd"`` or ``"adam"``; ``stop_accuracy``: stop once defense-set accuracy
    is <= this (``None``: automatic, see :func:`stop_threshold`); ``early_stop=False`` runs all
    ``max_epochs`` (EBYD's fixed-length variant); ``augment``: crop + flip the defense images;
    ``grad_clip``: global gradient-norm clip (``None``: none; the released EBYD code clipped
    before ``backward()``, so its published runs were unclipped).
    """

    method: str = "cul"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    max_epochs: int = 20
    stop_accuracy: float | None = None
    early_stop: bool = True
    augment: bool = True
    grad_clip: float | None = None
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise UsageError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr <= 0 or self.batch_size < 2 or self.max_epochs < 1:
            raise UsageError("exposure needs lr > 0, batch_size >= 2 and max_epochs >= 1")
        if self.stop_accuracy is not None and not 0 <= self.stop_accuracy <= 1:
            raise UsageError(f"stop_accuracy must be in [0, 1], got {self.stop_accuracy}")

    @classmethod
    def for_method(cls, method: str, **changes: Any) -> ExposureConfig:
        """The registered defaults of ``method`` with ``changes`` applied."""
        return replace(cls(method=method, **get_exposure(method).defaults), **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LossFactory = Callable[[int, torch.Generator], Callable[[nn.Module, Any], StepResult]]


@dataclass(frozen=True)
class ExposureMethod:
    """A registered exposure: ``make_loss(num_classes, generator)`` gives the loss function of
    :func:`fit`; ``ascend`` maximises it; ``defaults`` are its :class:`ExposureConfig` fields."""

    name: str
    summary: str
    ascend: bool
    make_loss: LossFactory
    defaults: dict[str, Any] = field(default_factory=dict)


#: name -> :class:`ExposureMethod`.
EXPOSURES: Registry[ExposureMethod] = Registry("exposure method")


def _accuracy(logits: Tensor, labels: Tensor) -> Mean:
    return Mean((logits.detach().argmax(1) == labels).sum(), labels.shape[0])


def _cul_loss(num_classes: int, generator: torch.Generator):
    def loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        x, y = batch
        logits = model(x)
        return StepResult(
            F.cross_entropy(logits, y), x.shape[0], {"train_acc": _accuracy(logits, y)}
        )

    return loss


def _random_label_loss(num_classes: int, generator: torch.Generator):
    def loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        x, y = batch
        fake = torch.randint(0, num_classes, y.shape, generator=generator).to(y.device)
        logits = model(x)
        return StepResult(
            F.cross_entropy(logits, fake), x.shape[0], {"train_acc": _accuracy(logits, y)}
        )

    return loss


EXPOSURES.add(
    "cul",
    ExposureMethod(
        "cul",
        "clean unlearning: gradient ascent on cross-entropy over the clean defense set",
        ascend=True,
        make_loss=_cul_loss,
        defaults={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "max_epochs": 20},
    ),
)
EXPOSURES.add(
    "random-label",
    ExposureMethod(
        "random-label",
        "fine-tuning on the defense images with fresh random labels per batch",
        ascend=False,
        make_loss=_random_label_loss,
        defaults={"optimizer": "adam", "lr": 1e-4, "max_epochs": 20},
    ),
)


def get_exposure(name: str) -> ExposureMethod:
    """The registered exposure ``name`` (``UsageError`` listing the choices)."""
    try:
        return EXPOSURES.get(name)
    except KeyError as exc:
        raise UsageError(str(exc).strip('"')) from None


@dataclass
class ExposureResult:
    """The exposed copy, its per-epoch ``rows`` (epoch 0 = before exposure) and why it
    stopped. ``final``: the last row (the exposed model's state)."""

    model: nn.Module
    rows: list[dict[str, Any]]
    stopped_early: bool
    stop_reason: str | None
    config: ExposureConfig
    stop_threshold: float | None = None

    @property
    def final(self) -> dict[str, Any]:
        return self.rows[-1]

    @property
    def epochs(self) -> int:
        return int(self.final["epoch"])


def exposure_columns(
    defense_images: Tensor,
    defense_labels: Tensor,
    holdout_images: Tensor,
    holdout_labels: Tensor,
    num_classes: int,
) -> Callable[[nn.Module], dict[str, Any]]:
    """``model -> {clean_acc, holdout_acc, histogram, top_class, top_share}`` (eval mode)."""
    observe = holdout_images if holdout_images.shape[0] else defense_images

    def columns(model: nn.Module) -> dict[str, Any]:
        predictions = predict(model, observe)
        hist = prediction_histogram(predictions, num_classes)
        top = max(range(num_classes), key=lambda k: hist[k])
        holdout = (
            float((predictions.cpu() == holdout_labels.cpu()).float().mean())
            if holdout_images.shape[0]
            else None
        )
        return {
            "clean_acc": evaluate(model, defense_images, defense_labels),
            "holdout_acc": holdout,
            "histogram": hist,
            "top_class": top,
            "top_share": hist[top],
        }

    return columns


def stop_threshold(config: ExposureConfig, labels: Tensor) -> float | None:
    """The defense-set accuracy at which exposure stops (``None`` without early stopping).

    ``config.stop_accuracy`` when given; otherwise ``m + (1 - m) / 9`` with ``m`` the share of
    the defense set's largest class (the accuracy of a model that predicts one class for
    everything): 0.20 for 10 balanced classes (EBYD/RNP's threshold), 0.33 for 4, 0.56 for 2.
    An absolute 0.20 could never be reached by a collapse with fewer than 5 classes.
    """
    if not config.early_stop:
        return None
    if config.stop_accuracy is not None:
        return config.stop_accuracy
    counts = torch.bincount(labels.cpu())
    majority = float(counts.max()) / max(int(labels.numel()), 1)
    return majority + (1 - majority) / 9


def _copy_script(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A TorchScript module copied through save/load (``deepcopy`` would give parameters that
    are not leaves, which no optimizer accepts)."""
    buffer = io.BytesIO()
    device = next(iter(module.parameters()), torch.zeros(0)).device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        torch.jit.save(module, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location=device)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are trainable leaves (TorchScript and
    exported modules inside it too)."""
    if isinstance(model, torch.jit.ScriptModule):
        return _copy_script(model)
    try:
        copied = copy.deepcopy(model)
    except Exception as exc:  # pragma: no cover - depends on the archive
        raise UsageError(f"cannot copy the model to edit it: {exc}") from exc
    scripts = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    done: list[str] = []
    for name, module in scripts:
        if any(name.startswith(f"{outer}.") for outer in done):
            continue  # inside a script module already copied
        parent_name, _, attr = name.rpartition(".")
        parent = copied.get_submodule(parent_name) if parent_name else copied
        setattr(parent, attr, _copy_script(module))
        done.append(name)
    return copied


def _optimizer(config: ExposureConfig):
    def build(params):
        if config.optimizer == "adam":
            return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )

    return build


def expose(
    model: nn.Module,
    defense_images: Tensor,
    defense_labels: Tensor,
    num_classes: int,
    config: ExposureConfig | None = None,
    holdout_images: Tensor | None = None,
    holdout_labels: Tensor | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> ExposureResult:
    """Expose a **copy** of ``model`` (left untouched) with ``config.method``.

    ``model``: a classifier taking float ``(B, C, S, S)`` in [0, 1] (a
    :class:`~unlearnable.checkpoints.LoadedModel` or one of our victims). ``defense_images``:
    uint8 or float ``(N, C, S, S)`` with int64 labels ``(N,)`` in ``[0, num_classes)``;
    ``holdout_*``: more clean images for the histogram (optional). ``progress(epoch, max_epochs,
    row)`` after every epoch.
    """
    config = config or ExposureConfig()
    method = get_exposure(config.method)
    if defense_images.shape[0] < 2:
        raise UsageError("exposure needs at least 2 clean defense images")
    if holdout_images is None or holdout_labels is None:
        holdout_images = defense_images[:0]
        holdout_labels = defense_labels[:0]
    exposed = clone_model(model)
    if config.device is not None:
        exposed.to(config.device)
    columns = exposure_columns(
        defense_images, defense_labels, holdout_images, holdout_labels, num_classes
    )
    rows: list[dict[str, Any]] = [{"epoch": 0, "train_loss": None, **columns(exposed)}]
    device = next(exposed.parameters()).device
    batches = ClassifierBatches(
        defense_images,
        defense_labels,
        config.batch_size,
        device,
        shuffle=stream_generator(config.seed, "expose-shuffle"),
        augment=stream_generator(config.seed, "expose-augment") if config.augment else None,
    )
    callbacks: list[Any] = [Columns(columns), StopOnNonFinite()]
    threshold = stop_threshold(config, defense_labels)
    if threshold is not None:
        callbacks.append(stop_when("clean_acc", "<=", threshold))
    if progress is not None:
        callbacks.append(EpochProgress(progress))
    history = fit(
        exposed,
        batches,
        method.make_loss(num_classes, stream_generator(config.seed, "expose-labels")),
        _optimizer(config),
        FitConfig(
            epochs=config.max_epochs,
            ascend=method.ascend,
            grad_clip=config.grad_clip,
            seed=config.seed,
        ),
        callbacks=callbacks,
    )
    rows += [dict(r) for r in history.rows]
    return ExposureResult(
        exposed, rows, history.stopped_early, history.stop_reason, config, threshold
    )


__all__ = [
    "EXPOSURES",
    "ExposureConfig",
    "ExposureMethod",
    "ExposureResult",
    "clone_model",
    "expose",
    "exposure_columns",
    "get_exposure",
]
