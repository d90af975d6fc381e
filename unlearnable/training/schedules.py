"""Learning-rate schedules for :func:`~unlearnable.training.loop.fit`: ``epoch_index -> lr``.

Each is a frozen dataclass that is called with the 0-based epoch index and returns the learning
rate of that whole epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Constant:
    """``lr`` in every epoch."""

    lr: float

    def __call__(self, epoch: int) -> float:
        return self.lr


@dataclass(frozen=True)
class Cosine:
    """``lr * (1 + cos(pi * epoch / epochs)) / 2`` (no warm-up, never reaches 0 within
    ``epochs``)."""

    lr: float
    epochs: int

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")

    def __call__(self, epoch: int) -> float:
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))


@dataclass(frozen=True)
class MultiStep:
    """``lr * gamma ** (number of milestones <= epoch)`` (torch's ``MultiStepLR``, by epoch)."""

    lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))

    def __call__(self, epoch: int) -> float:
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)


__all__ = ["Constant", "Cosine", "MultiStep"]
