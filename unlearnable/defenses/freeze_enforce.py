"""Fine-tuning that honours a FreezeAsGuard mask: :func:`finetune`.

* The mask must fit the model (:meth:`FreezeMask.check`: names, shapes, dtypes) and, unless
  ``check_release=False``, the frozen values must be the release's
  (:meth:`FreezeMask.check_release`).
* Whole frozen tensors are left out of the parameter filter of
  :func:`~unlearnable.training.fit`: they get no gradient (``requires_grad`` is off during the
  run) and are never handed to the optimizer, so weight decay and momentum cannot move them.
* Frozen channels (``level="channel"``) live in tensors that are otherwise trained: a gradient
  hook zeroes their slices, and after every optimizer step the released values are copied back
  (weight decay and momentum would otherwise move slices whose gradient is zero).
* After training every frozen tensor (or slice) is compared with its released value; any
  difference raises :class:`~unlearnable.errors.IntegrityError`.

Buffers (batch-norm running statistics) are not parameters and are not covered by a mask; pass
``train_mode=False`` to keep them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import IntegrityError, UsageError
from ..training import (
    Callback,
    Columns,
    EpochProgress,
    FitConfig,
    FitState,
    History,
    ParamFilter,
    StepInfo,
    fit,
    stream_generator,
)
from ..training.modes import kept_modes
from .freeze_adapters import ClassificationAdapter, TaskAdapter
from .freeze_mask import FreezeMask

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """How :func:`finetune` trains (a user's ordinary fine-tuning run).

    ``optimizer``: ``"adamw"`` (with ``weight_decay``) or ``"sgd"`` (momentum 0.9, with
    ``weight_decay``). ``check_release``: refuse a model whose frozen values are not the
    release's. ``train_mode``: the model's mode during the steps (see :class:`FitConfig`).
    """

    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    optimizer: str = "adamw"
    accumulate: int = 1
    grad_clip: float | None = None
    seed: int = 0
    device: str = "cpu"
    check_release: bool = True
    train_mode: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("epochs and batch_size must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise UsageError("lr must be > 0 and weight_decay >= 0")


@dataclass
class FinetuneResult:
    """What :func:`finetune` did. ``verified``: every frozen tensor/slice was compared with its
    released value after training and was bit-identical (a failure raises instead)."""

    history: History
    frozen_tensors: int
    frozen_parameters: int
    trainable_parameters: int
    verified: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.to_dict(),
            "frozen_tensors": self.frozen_tensors,
            "frozen_parameters": self.frozen_parameters,
            "trainable_parameters": self.trainable_parameters,
            "verified": self.verified,
            "seconds": self.seconds,
        }


def _channel_mask(p: Tensor, channels: tuple[int, ...]) -> Tensor:
    keep = torch.ones(p.shape[0], dtype=p.dtype, device=p.device)
    keep[list(channels)] = 0
    return keep.reshape([-1] + [1] * (p.dim() - 1))


def _zero_slices(keep: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda grad: grad * keep


class _RestoreChannels(Callback):
    """After every optimizer step, copy the released values back into frozen slices."""

    def __init__(self, slices: list[tuple[nn.Parameter, list[int], Tensor]]) -> None:
        self.slices = slices

    @torch.no_grad()
    def _restore(self) -> None:
        for p, index, values in self.slices:
            p[index] = values

    def on_step_end(self, state: FitState, step: StepInfo) -> None:  # noqa: D102
        if step.updated:
            self._restore()

    def epoch_columns(self, state: FitState) -> dict[str, Any]:  # noqa: D102
        self._restore()  # after a remainder step at the end of the epoch, before evaluations
        return {}


def _optimizer(config: FinetuneConfig) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    if config.optimizer == "adamw":
        return lambda ps: torch.optim.AdamW(ps, lr=config.lr, weight_decay=config.weight_decay)
    return lambda ps: torch.optim.SGD(
        ps, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
    )


def finetune(
    model: nn.Module,
    mask: FreezeMask,
    data: Any,
    adapter: TaskAdapter | None = None,
    config: FinetuneConfig | None = None,
    *,
    eval_data: Any = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``data`` with the tensors of ``mask`` frozen (see the
    module docstring); its train/eval mode and ``requires_grad`` flags are left as they were.
    ``eval_data``: evaluated after every epoch (``eval_*`` columns). ``progress(epoch, epochs,
    row)`` after every epoch. Raises ``MaskFileError`` for a mask of
    another model, ``IntegrityError`` for frozen values that are not the release's or that
    changed (which would be a bug)."""
    config = config or FinetuneConfig()
    adapter = adapter or ClassificationAdapter()
    start = time.perf_counter()
    device = torch.device(config.device)
    model.to(device)
    root = adapter.maskable(model)
    frozen = mask.frozen_parameters(root)  # checks the fingerprint and the names
    if config.check_release:
        mask.check_release(root)
    whole = {id(p) for _, p, channels in frozen if channels is None}
    snapshots = [(name, p, channels, p.detach().clone()) for name, p, channels in frozen]
    slices = [
        (p, list(channels), p.detach()[list(channels)].clone())
        for _, p, channels in frozen
        if channels is not None
    ]
    hooks = [
        p.register_hook(_zero_slices(_channel_mask(p, channels)))
        for _, p, channels in frozen
        if channels is not None
    ]
    root_ids = {id(p) for p in root.parameters()}
    params = ParamFilter.where(lambda _, p: id(p) in root_ids and id(p) not in whole)
    all_callbacks: list[Callback] = [_RestoreChannels(slices)] if slices else []
    if eval_data is not None:
        all_callbacks.append(
            Columns(
                lambda m: {
                    f"eval_{k}": v for k, v in adapter.evaluate(m, eval_data, device).items()
                }
            )
        )
    if progress is not None:
        all_callbacks.append(EpochProgress(progress))
    all_callbacks.extend(callbacks)
    batches = adapter.batches(
        data, config.batch_size, device, stream_generator(config.seed, "finetune")
    )
    try:
        with kept_modes(model):  # the caller's modes, whatever fit() leaves
            history = fit(
                model,
                batches,
                adapter.loss,
                _optimizer(config),
                FitConfig(
                    epochs=config.epochs,
                    accumulate=config.accumulate,
                    grad_clip=config.grad_clip,
                    seed=config.seed,
                    device=str(device),
                    train_mode=config.train_mode,
                ),
                params=params,
                callbacks=all_callbacks,
            )
    finally:
        for hook in hooks:
            hook.remove()
    changed = []
    for name, p, channels, before in snapshots:
        now, then = p.detach(), before
        if channels is not None:
            now, then = now[list(channels)], before[list(channels)]
        if not torch.equal(now, then):
            changed.append(name)
    if changed:
        raise IntegrityError(
            f"frozen tensors changed during fine-tuning: {', '.join(changed[:5])}; "
            "the mask was not enforced"
        )
    trainable = sum(
        p.numel() for p in root.parameters() if p.requires_grad and id(p) not in whole
    ) - sum(len(ch) * (p[0].numel() if p.dim() else 1) for p, ch, _ in slices)
    return FinetuneResult(
        history=history,
        frozen_tensors=len(frozen),
        frozen_parameters=mask.frozen_parameter_count,
        trainable_parameters=int(trainable),
        verified=True,
        seconds=time.perf_counter() - start,
    )


__all__ = ["OPTIMIZERS", "FinetuneConfig", "FinetuneResult", "finetune"]
