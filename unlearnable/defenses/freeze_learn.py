"""FreezeAsGuard mask learning (Huang et al., MobiCom 2025), for any model with a task adapter.

The publisher holds a released model θ_pre, illegal data (an adaptation to block) and legal
data (adaptations that must stay cheap). Learning works on a copy; the caller's model is never
changed.

1. **Relearn** (``relearn_epochs``): fully fine-tune the copy on both domains with AdamW, the
   simulated user's starting point θ_ft (a user who already adapted the model).
2. **Soft mask.** Every maskable group (a tensor, or one output channel of a tensor with
   ``level="channel"``) gets a score ``x`` (initialised uniformly in [0, 1]) and a soft mask
   ``m = sigmoid(x / T)``; ``m -> 1`` means frozen at θ_pre. The effective weights are
   ``θ = φ + m·D`` with ``D = θ_pre - φ`` and φ the user's free copy (initialised to θ_ft).
   Excluded tensors (the head by default) have no mask and are always trainable.
3. **Alternate**, on the training loop :func:`unlearnable.training.fit` (the user steps are its
   optimizer steps; the mask steps run in a callback, under ``FitState.thawed()``):

   * ``user_interval - 1`` simulated-user steps on batches of both domains (loss
     ``(L_ill + L_leg) / 2``): plain SGD on φ through the mask, ``Δφ = -lr·(1 - m)·g``,
     ``θ += (1 - m)·Δφ``, ``D -= Δφ``: only the unfrozen part moves;
   * one mask step on a fresh pair of batches: ``J = (L_leg - L_ill) / 2``, the hypergradient
     of each group ``h = Σ_elements D ⊙ ∂J/∂θ`` (= ∂J/∂m), standardised across groups (zero
     mean, unit spread, so the step size does not depend on the model or the loss scale), plus
     the gradient of the ratio penalty ``penalty · (mean(m) - ratio)``; ``x -= mask_lr · (...)``
     clipped to ``[-1, 1]``; then ``θ += D·(m_new - m_old)``. The sigmoid's derivative is left
     out of the step so that saturated scores can still move back (the paper's step includes
     it; its mask learning rate is model-specific, see the dossier, §2.8.5).
   Two options the paper does not have:

   * ``tie_norm`` (channel level): output channel j of a convolution and channel j (γ_j, β_j)
     of the BatchNorm after it are one group (dossier §2.7 item 1), instead of three;
   * ``reset_interval``: learn against a *fresh* user. The simulated user starts from θ_pre
     (no relearning) and is put back to θ_pre (head and buffers included) after every
     ``reset_interval`` user steps, so the mask steps see the trajectory of a user who starts
     from the release, not of one who continues from θ_ft. ``D`` of a frozen group would stay
     about 0 on such a trajectory, so the hypergradient uses each group's would-be
     displacement (the user's unmasked SGD steps since the reset) instead, scaled by a running
     mean of its spread.

4. **Binarize**: ``"top-k"`` freezes the ``round(ratio · groups)`` groups with the highest
   scores (the frozen share of groups is exactly the target), ``"threshold"`` those with
   ``m > 0.5``.

Everything runs in fp32. One CSV row per mask step: the soft mask mean, the hard ratio
(``m > 0.5``), the illegal and legal losses of the mask step's batches and the mean user loss
since the previous row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..training import Callback, FitConfig, History, ParamFilter, fit, stream_generator
from .exposure import clone_model
from .freeze_adapters import ClassificationAdapter, TaskAdapter
from .freeze_mask import (
    LEVELS,
    FreezeMask,
    architecture_fingerprint,
    build_mask,
    resolve_excluded,
)
from .freeze_steps import (
    MaskState,
    MaskSteps,
    PairBatches,
    SimulatedUser,
    binarize,
    cycle,
    pair_loss,
    tied_families,
)

BINARIZE = ("top-k", "threshold")


@dataclass(frozen=True)
class FreezeConfig:
    """How :func:`learn_freeze_mask` learns a mask.

    * ``ratio``: target frozen share of the maskable groups, in (0, 1).
    * ``level``: ``"tensor"`` (one group per tensor, the paper) or ``"channel"`` (one group per
      slice along dim 0: output channels of convolutions, rows of linear layers).
    * ``exclude``: tensors never masked (exact names or module prefixes); ``None``: the
      adapter's default (the classifier head).
    * ``steps``: simulated-user optimizer steps; one mask step after every
      ``user_interval - 1`` of them.
    * ``batch_size``: per domain (a step sees one illegal and one legal batch).
    * ``user_lr``: the simulated user's SGD learning rate; ``mask_lr``: score step size;
      ``temperature``: T of ``sigmoid(x / T)``; ``penalty``: weight of the ratio penalty.
    * ``relearn_epochs`` / ``relearn_lr``: full fine-tuning on both domains first (AdamW).
    * ``binarize``: ``"top-k"`` or ``"threshold"``.
    * ``accumulate``, ``grad_clip``: of the user steps (see :class:`FitConfig`).
    * ``tie_norm``: channel level only; one group per convolution output channel together with
      the following BatchNorm's γ_j and β_j (:func:`~.freeze_steps.tied_families`).
    * ``reset_interval``: 0 (the paper): the simulated user continues from θ_ft; n > 0: a fresh
      user, started at θ_pre and put back there after every n user steps (see the module
      docstring; relearning and ``start_from`` are then not used).
    * ``seed``, ``device``.
    """

    ratio: float = 0.2
    level: str = "tensor"
    exclude: tuple[str, ...] | None = None
    steps: int = 400
    user_interval: int = 5
    batch_size: int = 32
    user_lr: float = 0.01
    mask_lr: float = 0.05
    temperature: float = 0.2
    penalty: float = 10.0
    relearn_epochs: int = 2
    relearn_lr: float = 1e-3
    binarize: str = "top-k"
    accumulate: int = 1
    grad_clip: float | None = None
    tie_norm: bool = False
    reset_interval: int = 0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.exclude is not None:
            if isinstance(self.exclude, str):
                raise UsageError("exclude must be a sequence of names, not one string")
            object.__setattr__(self, "exclude", tuple(self.exclude))
        if not 0.0 < self.ratio < 1.0:
            raise UsageError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.level not in LEVELS:
            raise UsageError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.binarize not in BINARIZE:
            raise UsageError(f"binarize must be one of {', '.join(BINARIZE)}")
        if self.user_interval < 2:
            raise UsageError("user_interval must be >= 2 (at least one user step per mask step)")
        for name in ("steps", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        if self.relearn_epochs < 0:
            raise UsageError("relearn_epochs must be >= 0")
        if self.reset_interval < 0:
            raise UsageError("reset_interval must be >= 0 (0: never reset)")
        if self.tie_norm and self.level != "channel":
            raise UsageError("tie_norm joins output channels: it needs level='channel'")
        for name in ("user_lr", "mask_lr", "temperature", "relearn_lr"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0")
        if self.penalty < 0:
            raise UsageError("penalty must be >= 0")


@dataclass
class FreezeResult:
    """What :func:`learn_freeze_mask` produced: the mask, one row per mask step, the
    simulated-user history, the relearning history (``None`` without relearning), seconds."""

    mask: FreezeMask
    rows: list[dict[str, Any]]
    history: History
    relearn_history: History | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- public API


def _pairs(adapter, illegal, legal, config: FreezeConfig, device, stream: str) -> PairBatches:
    ill = adapter.batches(
        illegal, config.batch_size, device, stream_generator(config.seed, f"{stream}-ill")
    )
    leg = adapter.batches(
        legal, config.batch_size, device, stream_generator(config.seed, f"{stream}-leg")
    )
    return PairBatches(ill, leg)


def _relearn(work, illegal, legal, adapter, config: FreezeConfig, params) -> History:
    device = torch.device(config.device)
    return fit(
        work,
        _pairs(adapter, illegal, legal, config, device, "relearn"),
        pair_loss(adapter),
        lambda ps: torch.optim.AdamW(ps, lr=config.relearn_lr),
        FitConfig(epochs=max(config.relearn_epochs, 1), seed=config.seed, device=str(device)),
        params=params,
    )


def relearn(
    model: nn.Module,
    illegal: Any,
    legal: Any,
    adapter: TaskAdapter | None = None,
    config: FreezeConfig | None = None,
) -> tuple[nn.Module, History]:
    """θ_ft: a copy of ``model`` fully fine-tuned on both domains (``config.relearn_epochs``
    epochs of AdamW at ``config.relearn_lr``, batches of ``config.batch_size`` per domain),
    and the history. Pass it as ``start_from`` to :func:`learn_freeze_mask` to share one
    relearning between several masks."""
    config = config or FreezeConfig()
    adapter = adapter or ClassificationAdapter()
    work = clone_model(model).to(config.device).float()
    ids = {id(p) for p in adapter.maskable(work).parameters() if p.requires_grad}
    params = ParamFilter.where(lambda _, p: id(p) in ids)
    return work, _relearn(work, illegal, legal, adapter, config, params)


def learn_freeze_mask(
    model: nn.Module,
    illegal: Any,
    legal: Any,
    adapter: TaskAdapter | None = None,
    config: FreezeConfig | None = None,
    *,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    callbacks: Sequence[Callback] = (),
    start_from: nn.Module | None = None,
) -> FreezeResult:
    """Learn a FreezeAsGuard mask for the released ``model`` (see the module docstring).

    ``illegal`` / ``legal``: data sets of ``adapter`` (default
    :class:`~unlearnable.defenses.freeze_adapters.ClassificationAdapter`, with
    :class:`~unlearnable.defenses.freeze_adapters.ClassificationData`). ``progress(step,
    steps, row)`` after every mask step; ``callbacks`` are added to the user-step
    :func:`~unlearnable.training.fit` run. ``model`` is not modified. Returns a
    :class:`FreezeResult` whose mask names the tensors of ``adapter.maskable(model)``.

    ``start_from``: the relearned model θ_ft (``model`` fully fine-tuned on both domains, same
    architecture) to start the simulated user from; relearning is then skipped.
    """
    config = config or FreezeConfig()
    adapter = adapter or ClassificationAdapter()
    start = time.perf_counter()
    device = torch.device(config.device)
    release = adapter.maskable(model)
    work = clone_model(model if start_from is None else start_from).to(device).float()
    root = adapter.maskable(work)
    named = [(n, p) for n, p in root.named_parameters() if p.requires_grad]
    if not named:
        raise UsageError("the model has no trainable tensors to mask")
    patterns = adapter.default_exclude(root) if config.exclude is None else config.exclude
    excluded = set(resolve_excluded(root, patterns))
    maskable = [(n, p) for n, p in named if n not in excluded]
    if not maskable:
        raise UsageError("every tensor is excluded: nothing left to mask")
    if config.level == "tensor" and round(config.ratio * len(maskable)) < 1:
        raise UsageError(
            f"ratio {config.ratio} of {len(maskable)} maskable tensors freezes none; "
            "raise the ratio or use level='channel'"
        )
    trainable_ids = {id(p) for _, p in named}
    user_filter = ParamFilter.where(lambda _, p: id(p) in trainable_ids)

    def pair_source(stream: str) -> PairBatches:
        return _pairs(adapter, illegal, legal, config, device, stream)

    loss_fn = pair_loss(adapter)
    relearn_history = None
    if start_from is not None and architecture_fingerprint(root) != architecture_fingerprint(
        release
    ):
        raise UsageError("start_from must have the architecture of the released model")
    fresh = None
    if config.reset_interval:  # a fresh user: start at θ_pre, back there every reset_interval
        root.load_state_dict(release.state_dict())  # copied into the fp32 working tensors
        fresh = (root, {k: v.detach().clone() for k, v in root.state_dict().items()})
    elif config.relearn_epochs and start_from is None:
        relearn_history = _relearn(work, illegal, legal, adapter, config, user_filter)

    release_params = dict(release.named_parameters())
    names = [n for n, _ in maskable]
    families = None
    if config.tie_norm:
        position = {n: k for k, n in enumerate(names)}
        families = [[position[n] for n in f] for f in tied_families(root, names)]
    masks = MaskState(
        maskable,
        [release_params[n].detach().to(device, torch.float32).clone() for n in names],
        config.level,
        config.temperature,
        stream_generator(config.seed, "mask-init"),
        families=families,
        fresh=fresh is not None,
    )
    masks.start()
    users = pair_source("user")
    per_epoch = max(len(users), 1)
    batches_needed = config.steps * config.accumulate
    epochs = math.ceil(batches_needed / per_epoch) + 1
    stepper = MaskSteps(masks, adapter, cycle(pair_source("mask")), config, progress, fresh)
    history = fit(
        work,
        users,
        loss_fn,
        SimulatedUser([p for _, p in named], config.user_lr, masks),
        FitConfig(
            epochs=epochs,
            accumulate=config.accumulate,
            grad_clip=config.grad_clip,
            seed=config.seed,
            device=str(device),
        ),
        params=user_filter,
        callbacks=[stepper, *callbacks],
    )
    frozen = binarize(masks, config)
    scores = {
        n: tuple(float(v) for v in masks.scores[masks.family_of[i]].cpu())
        for i, n in enumerate(masks.names)
    }
    meta = {
        "method": "FreezeAsGuard (Huang et al., MobiCom 2025)",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "adapter": adapter.name,
        "illegal_items": adapter.size(illegal),
        "legal_items": adapter.size(legal),
        "mask_steps": len(stepper.rows),
        "user_steps": stepper.user_steps,
        "resets": stepper.resets,
        "final": stepper.rows[-1] if stepper.rows else {},
    }
    mask = build_mask(
        release,
        frozen,
        level=config.level,
        target_ratio=config.ratio,
        excluded=excluded,
        task=adapter.name,
        scores=scores,
        metadata=meta,
    )
    return FreezeResult(mask, stepper.rows, history, relearn_history, time.perf_counter() - start)


__all__ = ["BINARIZE", "FreezeConfig", "FreezeResult", "learn_freeze_mask", "relearn"]
