"""The one training loop: :func:`fit` a model to a loss over batches of any structure.

``fit`` knows nothing about the task. It takes

* a **batch source**: an iterable that can be iterated once per epoch (a list, a
  ``DataLoader``, an object with ``__iter__``) or a callable ``epoch_index -> iterable``;
  batches may be tensors, tuples, lists or dicts; every tensor in a batch is moved to the
  device;
* a **loss function** ``(model, batch) -> scalar tensor`` or ``-> StepResult`` (the loss plus
  per-batch metrics such as correct predictions, averaged over the epoch into the row);
* an **optimizer**, or a factory ``(trainable parameters) -> optimizer``;
* an optional **schedule** ``epoch_index -> learning rate`` (0-based, set on every parameter
  group at the start of each epoch) and a :class:`~unlearnable.training.params.ParamFilter`;
* :class:`~unlearnable.training.callbacks.Callback` objects: evaluation columns, CSV logging,
  progress, early stopping.

Each step: the loss function runs, the gradients are cleared, ``loss`` (or ``-loss`` with
``ascend=True``) is back-propagated, gradients are clipped to ``grad_clip`` (global L2 norm over
the trainable tensors) and the optimizer steps. With ``accumulate = k > 1`` the loss is divided
by ``k`` and the optimizer steps every ``k`` batches (and once more at the end of an epoch for a
remainder, its gradient rescaled to a mean).

Tensors outside the parameter filter are never handed to the optimizer and have
``requires_grad`` switched off for the duration of the run (restored afterwards), so they get no
gradient and stay bit-identical, whatever the optimizer (weight decay, momentum). Buffers (batch
norm running statistics) do change in train mode; pass ``train_mode=False`` to keep them.

Each epoch appends a row to :class:`History`: ``epoch`` (from 1), ``train_loss`` (the mean loss
over the epoch's items, as computed, not negated by ``ascend``), one column per metric the loss
function returned, the columns callbacks add, ``lr`` (of the first parameter group) and
``seconds``. A callback may stop the run after any step or epoch
(:meth:`FitState.request_stop`); the history records that and why.

Randomness: ``fit`` runs inside :func:`~unlearnable.training.seeding.seeded_global_rng` with
``config.seed``, so global-RNG ops (dropout) are repeatable and the caller's global RNG is left as
it was. Everything else (shuffling, augmentation) should draw from dedicated generators
(:func:`~unlearnable.training.seeding.stream_generator`). Two runs with the same seed, data and
model give identical histories and weights on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .batches import batch_len, to_device
from .params import ParamFilter, select_parameters
from .seeding import seeded_global_rng

if TYPE_CHECKING:
    from .callbacks import Callback

LossFn = Callable[[nn.Module, Any], "Tensor | StepResult"]
"""``(model, batch) -> scalar loss`` or a :class:`StepResult`."""

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
"""``(trainable parameters, in model order) -> optimizer over exactly those``."""

Schedule = Callable[[int], float]
"""``0-based epoch index -> learning rate`` for that epoch (see :mod:`.schedules`)."""

BatchSource = Iterable[Any] | Callable[[int], Iterable[Any]]
"""An iterable re-iterated every epoch, or ``epoch_index -> iterable`` of batches."""


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` steps.

    * ``epochs``: passes over the batch source (>= 1).
    * ``ascend``: maximise the loss (gradient ascent) instead of minimising it.
    * ``grad_clip``: max global L2 norm of the trainable gradients (``None`` or 0: no clipping).
    * ``accumulate``: batches per optimizer step (gradient accumulation, >= 1).
    * ``device``: move the model and every batch there (``None``: the model's own device).
    * ``seed``: seeds the global RNG inside the run (see the module docstring).
    * ``train_mode``: the model's mode during the steps (``False``: eval mode, e.g. to keep
      batch-norm statistics). The model is left in eval mode after the run.
    """

    epochs: int = 1
    ascend: bool = False
    grad_clip: float | None = None
    accumulate: int = 1
    device: str | None = None
    seed: int = 0
    train_mode: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if self.accumulate < 1:
            raise UsageError(f"accumulate must be >= 1, got {self.accumulate}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise UsageError(f"grad_clip must be >= 0 or None, got {self.grad_clip}")


@dataclass(frozen=True)
class Mean:
    """A per-batch contribution to an epoch mean: the column's value is ``sum(total) /
    sum(count)`` over the epoch's batches (``None`` if the counts sum to 0). ``total`` may be a
    tensor on the device (summed without synchronising) or a number."""

    total: Tensor | float | int
    count: int


@dataclass(frozen=True)
class StepResult:
    """What a loss function may return instead of a bare loss.

    * ``loss``: the scalar to minimise (or maximise with ``ascend``); must carry a gradient.
    * ``count``: items in the batch, the weight of this batch in ``train_loss`` (default:
      :func:`~unlearnable.training.batches.batch_len` of the batch).
    * ``metrics``: ``name -> Mean``; each becomes an epoch column (e.g. ``train_acc``).
    """

    loss: Tensor
    count: int | None = None
    metrics: Mapping[str, Mean] = field(default_factory=dict)


def _number(value: Tensor | float | int) -> float | int:
    return value.item() if isinstance(value, Tensor) else value


class _EpochTotals:
    """Running sums of one epoch (kept on the device until read)."""

    def __init__(self) -> None:
        self.loss_sum: Tensor | None = None
        self.seen = 0
        self.metrics: dict[str, list[Any]] = {}

    def add(self, loss: Tensor, count: int, metrics: Mapping[str, Mean]) -> None:
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), device=loss.device)
        self.loss_sum += loss.detach() * count
        self.seen += count
        for name, m in metrics.items():
            slot = self.metrics.setdefault(name, [None, 0])
            slot[0] = m.total if slot[0] is None else slot[0] + m.total
            slot[1] += m.count

    def mean_loss(self) -> float | None:
        if self.loss_sum is None:
            return None
        return float(self.loss_sum) / max(self.seen, 1)

    def mean(self, name: str) -> float | None:
        if name == "train_loss":
            return self.mean_loss()
        total, count = self.metrics.get(name, (None, 0))
        return _number(total) / count if count else None

    def row(self) -> dict[str, Any]:
        return {name: self.mean(name) for name in self.metrics}


@dataclass(frozen=True)
class StepInfo:
    """What step callbacks see after each batch (1-based counters)."""

    epoch: int
    batch: int
    step: int
    updated: bool
    loss: Tensor
    count: int
    metrics: Mapping[str, Mean]
    _totals: _EpochTotals = field(repr=False)

    def get(self, name: str) -> float | None:
        """``"loss"``: this batch's loss; ``"train_loss"`` or a metric name: its mean over the
        epoch so far. Reading a value synchronises with the device."""
        if name == "loss":
            return float(self.loss)
        return self._totals.mean(name)


@dataclass
class History:
    """What :func:`fit` did: one row per epoch (see the module docstring), whether it stopped
    early, why, and where (1-based epoch and global batch)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    stop_reason: str | None = None
    stop_epoch: int | None = None
    stop_step: int | None = None
    updates: int = 0

    def column(self, name: str) -> list[Any]:
        """The values of column ``name`` over the epochs (``None`` where a row lacks it)."""
        return [row.get(name) for row in self.rows]

    @property
    def last(self) -> dict[str, Any]:
        """The last epoch's row."""
        if not self.rows:
            raise UsageError("the history has no epochs")
        return self.rows[-1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return {
            "rows": [dict(r) for r in self.rows],
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "stop_epoch": self.stop_epoch,
            "stop_step": self.stop_step,
            "updates": self.updates,
        }


@dataclass
class FitState:
    """The live run, handed to every callback. ``epoch`` is the 1-based current epoch (0 before
    the first), ``step`` the number of batches processed, ``updates`` of optimizer steps.
    ``trainable``: the ``(name, parameter)`` pairs the optimizer trains; ``frozen``: the other
    parameters that normally require gradients (switched off during the run)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: FitConfig
    device: torch.device
    trainable: list[tuple[str, nn.Parameter]]
    history: History
    frozen: list[nn.Parameter] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    updates: int = 0
    stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Stop after the current step or epoch; the first reason given is kept."""
        if self.stop_reason is None:
            self.stop_reason = reason

    @contextmanager
    def thawed(self) -> Iterator[None]:
        """Within the block the frozen parameters require gradients again, e.g. for a callback
        that takes its own step on tensors outside the filter (FreezeAsGuard's mask scores
        between fine-tuning steps). Gradients it leaves on them are the callback's business;
        :func:`fit`'s optimizer never sees those tensors."""
        for p in self.frozen:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p in self.frozen:
                p.requires_grad_(False)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _build_optimizer(
    optimizer: torch.optim.Optimizer | OptimizerFactory, trainable: list[nn.Parameter]
) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer(list(trainable))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError("the optimizer factory must return a torch.optim.Optimizer")
    allowed = {id(p) for p in trainable}
    for group in optimizer.param_groups:
        if any(id(p) not in allowed for p in group["params"]):
            raise UsageError(
                "the optimizer holds tensors outside the parameter filter (or that do not "
                "require gradients); build it from the trainable parameters only"
            )
    return optimizer


def _epoch_batches(source: Any, epochs: int) -> Callable[[int], Iterable[Any]]:
    if isinstance(source, Iterable):
        if isinstance(source, Iterator) and epochs > 1:
            raise UsageError(
                "the batch source is a one-shot iterator; pass a re-iterable (a list, a "
                "DataLoader) or a callable epoch -> iterable"
            )
        return lambda _: source
    if callable(source):
        return source
    raise UsageError("batches must be an iterable or a callable epoch_index -> iterable")


def _as_result(out: Any) -> StepResult:
    result = out if isinstance(out, StepResult) else StepResult(out)
    loss = result.loss
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise UsageError("the loss function must return a scalar tensor (or a StepResult)")
    if not loss.requires_grad:
        raise UsageError("the loss does not depend on any trainable parameter")
    return result


class _Trainer:
    """One :func:`fit` call (kept in an object so each epoch is a readable method)."""

    def __init__(
        self,
        state: FitState,
        batches: Callable[[int], Iterable[Any]],
        loss_fn: LossFn,
        schedule: Schedule | None,
        callbacks: Sequence[Callback],
    ) -> None:
        self.state = state
        self.batches = batches
        self.loss_fn = loss_fn
        self.schedule = schedule
        self.callbacks = list(callbacks)
        self.params = [p for _, p in state.trainable]

    def update(self, pending: int) -> None:
        cfg, opt = self.state.config, self.state.optimizer
        if pending < cfg.accumulate:  # a remainder: rescale the sum of loss/k to a mean
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(cfg.accumulate / pending)
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        opt.step()
        self.state.updates += 1

    def epoch(self, index: int) -> None:
        state, cfg, opt = self.state, self.state.config, self.state.optimizer
        start = time.perf_counter()
        state.epoch = index + 1
        if self.schedule is not None:
            lr = self.schedule(index)
            for group in opt.param_groups:
                group["lr"] = lr
        else:
            lr = opt.param_groups[0]["lr"]
        for cb in self.callbacks:
            cb.on_epoch_start(state)
        state.model.train(cfg.train_mode)
        totals = _EpochTotals()
        pending = 0
        for number, batch in enumerate(self.batches(index), start=1):
            batch = to_device(batch, state.device)
            result = _as_result(self.loss_fn(state.model, batch))
            count = result.count if result.count is not None else batch_len(batch)
            if pending == 0:
                opt.zero_grad(set_to_none=True)
            objective = -result.loss if cfg.ascend else result.loss
            if cfg.accumulate > 1:
                objective = objective / cfg.accumulate
            objective.backward()
            pending += 1
            updated = pending == cfg.accumulate
            if updated:
                self.update(pending)
                pending = 0
            totals.add(result.loss, count, result.metrics)
            state.step += 1
            info = StepInfo(
                state.epoch, number, state.step, updated, result.loss.detach(), count,
                result.metrics, totals,
            )  # fmt: skip
            for cb in self.callbacks:
                cb.on_step_end(state, info)
            if state.stop_reason is not None:
                pending = 0  # no update after a stop was requested
                opt.zero_grad(set_to_none=True)
                break
        if pending:
            self.update(pending)
        row: dict[str, Any] = {"epoch": state.epoch, "train_loss": totals.mean_loss()}
        row.update(totals.row())
        for cb in self.callbacks:
            for key, value in cb.epoch_columns(state).items():
                if key in row or key in ("lr", "seconds"):
                    raise UsageError(f"column {key!r} is produced twice")
                row[key] = value
        row["lr"] = lr
        row["seconds"] = time.perf_counter() - start
        state.history.rows.append(row)
        for cb in self.callbacks:
            cb.on_epoch_end(state, row)

    def run(self) -> None:
        state = self.state
        for cb in self.callbacks:
            cb.on_fit_start(state)
        for index in range(state.config.epochs):
            if state.stop_reason is not None:
                break
            self.epoch(index)
        history = state.history
        history.updates = state.updates
        if state.stop_reason is not None:
            history.stopped_early = True
            history.stop_reason = state.stop_reason
            history.stop_epoch = state.epoch
            history.stop_step = state.step
        for cb in self.callbacks:
            cb.on_fit_end(state)


def fit(
    model: nn.Module,
    batches: BatchSource,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer | OptimizerFactory,
    config: FitConfig | None = None,
    *,
    schedule: Schedule | None = None,
    params: ParamFilter | None = None,
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train ``model`` in place; see the module docstring for the contract.

    ``batches``: an iterable re-iterated every epoch, or ``epoch_index -> iterable``.
    ``loss_fn(model, batch)``: a scalar tensor or a :class:`StepResult`. ``optimizer``: an
    optimizer over (a subset of) the trainable parameters, or a factory given them (in
    ``model.named_parameters()`` order). ``params`` restricts what is trained (default: every
    parameter that requires gradients). Returns the :class:`History`; the model is left in eval
    mode with its trainable gradients cleared.
    """
    from .callbacks import Callback

    config = config or FitConfig()
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise UsageError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    if config.device is not None:
        device = torch.device(config.device)
        model.to(device)
    else:
        device = _model_device(model)
    trainable = select_parameters(model, params)
    chosen = {id(p) for _, p in trainable}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    opt = _build_optimizer(optimizer, [p for _, p in trainable])
    source = _epoch_batches(batches, config.epochs)
    state = FitState(model, opt, config, device, trainable, History(), frozen)
    trainer = _Trainer(state, source, loss_fn, schedule, callbacks)
    for p in frozen:
        p.requires_grad_(False)
    try:
        with seeded_global_rng(config.seed, device):
            trainer.run()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        opt.zero_grad(set_to_none=True)  # free the gradient memory
    model.eval()
    return state.history


__all__ = [
    "BatchSource",
    "FitConfig",
    "FitState",
    "History",
    "LossFn",
    "Mean",
    "OptimizerFactory",
    "Schedule",
    "StepInfo",
    "StepResult",
    "fit",
]
