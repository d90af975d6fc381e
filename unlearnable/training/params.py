"""Which parameters a run trains: a filter by names and/or a predicate over named parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from ..errors import UsageError

ParamPredicate = Callable[[str, nn.Parameter], bool]
"""``(name as in model.named_parameters(), parameter) -> train it?``"""


@dataclass(frozen=True)
class ParamFilter:
    """Train only some tensors of a model.

    * ``names``: exact names from ``model.named_parameters()``; each must exist and require
      gradients (a typo or a contradiction is an error, not a silent no-op).
    * ``predicate``: ``(name, parameter) -> bool``.

    A parameter is trained when it requires gradients, is in ``names`` (if given) and passes
    ``predicate`` (if given). With neither, every parameter that requires gradients is trained.
    """

    names: frozenset[str] | None = None
    predicate: ParamPredicate | None = None

    def __post_init__(self) -> None:
        if self.names is not None:
            if isinstance(self.names, str):
                raise UsageError("ParamFilter.names must be a collection of names, not a string")
            object.__setattr__(self, "names", frozenset(self.names))

    @classmethod
    def only(cls, names: Iterable[str]) -> ParamFilter:
        """Exactly these parameter names."""
        return cls(names=frozenset(names))

    @classmethod
    def where(cls, predicate: ParamPredicate) -> ParamFilter:
        """The parameters for which ``predicate(name, parameter)`` is true."""
        return cls(predicate=predicate)

    @classmethod
    def prefixes(cls, *prefixes: str) -> ParamFilter:
        """Parameters whose name starts with one of ``prefixes`` (e.g. ``"fc."``)."""
        if not prefixes:
            raise UsageError("give at least one prefix")
        return cls(predicate=lambda name, _: name.startswith(tuple(prefixes)))


def select_parameters(
    model: nn.Module, selection: ParamFilter | None = None
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs ``selection`` trains, in ``model.named_parameters()``
    order. ``UsageError`` for unknown or non-trainable names, or an empty selection."""
    named = list(model.named_parameters())
    selection = selection or ParamFilter()
    if selection.names is not None:
        known = {name: p for name, p in named}
        unknown = sorted(selection.names - set(known))
        if unknown:
            raise UsageError(f"no parameters named {unknown} in the model")
        frozen = sorted(n for n in selection.names if not known[n].requires_grad)
        if frozen:
            raise UsageError(f"parameters {frozen} do not require gradients")
    chosen = [
        (name, p)
        for name, p in named
        if p.requires_grad
        and (selection.names is None or name in selection.names)
        and (selection.predicate is None or selection.predicate(name, p))
    ]
    if not chosen:
        raise UsageError("the parameter filter selects no trainable parameter")
    return chosen


__all__ = ["ParamFilter", "ParamPredicate", "select_parameters"]
