"""Callbacks of :func:`~unlearnable.training.loop.fit`: extra columns, logging, progress, stopping.

A callback overrides any of the hooks of :class:`Callback`. Per epoch, :func:`fit` first asks
every callback for :meth:`Callback.epoch_columns` (evaluation hooks: clean accuracy, a
prediction histogram, ...), completes the row, then calls :meth:`Callback.on_epoch_end` on every
callback with the finished row (loggers, progress, early stopping), in the order given.
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..errors import UsageError
from .loop import FitState, StepInfo


class Callback:
    """Base class: every hook does nothing. Stop a run with ``state.request_stop(reason)``."""

    def on_fit_start(self, state: FitState) -> None:
        """Before the first epoch (inside the seeded RNG context)."""

    def on_epoch_start(self, state: FitState) -> None:
        """After the epoch's learning rate is set, before its first batch."""

    def on_step_end(self, state: FitState, step: StepInfo) -> None:
        """After every batch (and the optimizer step, if one was taken)."""

    def epoch_columns(self, state: FitState) -> Mapping[str, Any]:
        """Extra columns for the epoch's row (evaluated after the epoch's last step)."""
        return {}

    def on_epoch_end(self, state: FitState, row: Mapping[str, Any]) -> None:
        """With the epoch's complete row (also in ``state.history.rows[-1]``)."""

    def on_fit_end(self, state: FitState) -> None:
        """After the last epoch (also after an early stop)."""


class Columns(Callback):
    """Evaluation hook: ``fn(model) -> {column: value}`` after every epoch (e.g. clean accuracy
    on a held-out set, a prediction histogram). ``fn`` should leave the model's mode as it found
    it (:func:`~unlearnable.training.classification.evaluate` does)."""

    def __init__(self, fn: Callable[[nn.Module], Mapping[str, Any]]) -> None:
        self.fn = fn

    def epoch_columns(self, state: FitState) -> Mapping[str, Any]:  # noqa: D102
        return self.fn(state.model)


class EpochProgress(Callback):
    """Calls ``fn(epoch, epochs, row)`` after every epoch (``epoch`` from 1, ``row`` a copy)."""

    def __init__(self, fn: Callable[[int, int, dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, state: FitState, row: Mapping[str, Any]) -> None:  # noqa: D102
        self.fn(state.epoch, state.config.epochs, dict(row))


class StepProgress(Callback):
    """Calls ``fn(step_info)`` after every ``every``-th batch (progress within long epochs)."""

    def __init__(self, fn: Callable[[StepInfo], None], every: int = 1) -> None:
        if every < 1:
            raise UsageError(f"every must be >= 1, got {every}")
        self.fn, self.every = fn, every

    def on_step_end(self, state: FitState, step: StepInfo) -> None:  # noqa: D102
        if step.step % self.every == 0:
            self.fn(step)


class StopWhen(Callback):
    """Early stop on a condition over the epoch row (``every="epoch"``) or over the
    :class:`~unlearnable.training.loop.StepInfo` of every batch (``every="step"``: it has
    ``get(name)`` for the batch loss and the epoch's running means).

    ``condition(row_or_step) -> bool``; ``reason`` is a string or ``row_or_step -> str`` (it is
    recorded in :attr:`History.stop_reason`). See :func:`stop_when` for column thresholds.
    """

    def __init__(
        self,
        condition: Callable[[Any], bool],
        reason: str | Callable[[Any], str],
        every: str = "epoch",
    ) -> None:
        if every not in ("epoch", "step"):
            raise UsageError(f"every must be 'epoch' or 'step', got {every!r}")
        self.condition, self.reason, self.every = condition, reason, every

    def _check(self, state: FitState, subject: Any) -> None:
        if self.condition(subject):
            reason = self.reason(subject) if callable(self.reason) else self.reason
            state.request_stop(reason)

    def on_step_end(self, state: FitState, step: StepInfo) -> None:  # noqa: D102
        if self.every == "step":
            self._check(state, step)

    def on_epoch_end(self, state: FitState, row: Mapping[str, Any]) -> None:  # noqa: D102
        if self.every == "epoch":
            self._check(state, row)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def stop_when(column: str, op: str, threshold: float, every: str = "epoch") -> StopWhen:
    """Stop once ``column op threshold`` holds, e.g. ``stop_when("clean_acc", "<=", 0.2)``.

    ``every="epoch"`` reads the epoch row; ``every="step"`` reads ``step.get(column)`` after
    every batch (``"loss"``: the batch loss; a metric or ``"train_loss"``: its running mean over
    the epoch so far; each read synchronises with the device). A missing or ``None`` value never
    stops. The reason names the column, its value, the threshold and where it happened.
    """
    if op not in _OPS:
        raise UsageError(f"op must be one of {', '.join(_OPS)}, got {op!r}")
    compare = _OPS[op]

    def value(subject: Any) -> Any:
        return subject.get(column)

    def condition(subject: Any) -> bool:
        v = value(subject)
        return v is not None and compare(v, threshold)

    def reason(subject: Any) -> str:
        where = (
            f"epoch {subject.epoch}, batch {subject.batch}"
            if isinstance(subject, StepInfo)
            else f"epoch {subject.get('epoch')}"
        )
        return f"{column} = {value(subject):.4g} {op} {threshold:g} ({where})"

    return StopWhen(condition, reason, every)


class StopOnNonFinite(Callback):
    """Stop as soon as a batch loss is NaN or infinite (after that step; one sync per step)."""

    def on_step_end(self, state: FitState, step: StepInfo) -> None:  # noqa: D102
        value = float(step.loss)
        if not math.isfinite(value):
            state.request_stop(f"non-finite loss {value} (epoch {step.epoch}, batch {step.batch})")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text of ``rows``: a header with ``columns`` (default: every key, in order of first
    appearance), then one line per row. ``None`` is an empty cell, floats are written exactly
    (``repr``), lists, dicts and tensors as compact JSON."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()


class CSVLogger(Callback):
    """Writes every epoch row so far to ``path`` after each epoch (see :func:`rows_to_csv`).

    The whole file is rewritten atomically (temporary file + rename), so a reader or a crash
    never sees a half-written file, and a column that first appears in a later epoch still gets
    a header. ``columns`` fixes the columns and their order.
    """

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> None:
        self.path = path
        self.columns = list(columns) if columns is not None else None

    def on_epoch_end(self, state: FitState, row: Mapping[str, Any]) -> None:  # noqa: D102
        from ..io.atomic import atomic_write_text

        atomic_write_text(self.path, rows_to_csv(state.history.rows, self.columns))


__all__ = [
    "CSVLogger",
    "Callback",
    "Columns",
    "EpochProgress",
    "StepProgress",
    "StopOnNonFinite",
    "StopWhen",
    "rows_to_csv",
    "stop_when",
]
