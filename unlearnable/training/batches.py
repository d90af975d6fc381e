"""Batches of any structure: move them to a device, count their items, index mini-batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor moved to ``device`` (tensors already there are returned as
    they are). Dicts, lists and tuples (named tuples too) are rebuilt; anything else is kept."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_len(batch: Any) -> int:
    """Items in ``batch``: the first dimension of its first tensor with a dimension
    (depth-first through dicts, lists and tuples); 1 if there is none."""
    found = _first_len(batch)
    return 1 if found is None else found


def _first_len(batch: Any) -> int | None:
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return None
    for value in values:
        found = _first_len(value)
        if found is not None:
            return found
    return None


def index_batches(perm: Tensor, batch_size: int, drop_single: bool = True) -> Iterator[Tensor]:
    """Consecutive slices of ``perm`` (int64 ``(N,)``) of ``batch_size`` indices. With
    ``drop_single``, a last slice of one index is dropped when ``N >= 2`` (batch norm cannot
    train on a single sample)."""
    n = perm.shape[0]
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if drop_single and idx.numel() < 2 and n >= 2:
            return
        yield idx


__all__ = ["batch_len", "index_batches", "to_device"]
