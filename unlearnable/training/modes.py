"""Train/eval modes that are given back: :func:`kept_modes`.

``model.train(flag)`` sets every submodule's mode, so restoring only ``model.training``
afterwards flattens a caller's mixed modes (a network in train mode with its batch norm in
eval, as fine-tuning recipes leave it). Every helper that switches a caller's model to eval (or
train) mode for a while restores each submodule's own flag through this one function.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s modes may change; afterwards every submodule has the
    ``training`` flag it had before, however the block ended."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


__all__ = ["kept_modes"]
