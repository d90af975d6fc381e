"""What a scraper does to learn from protected data anyway (see :mod:`unlearnable.attacks.base`)."""

from . import adversarial, augment, dat, squeeze  # noqa: F401  (import registers their attacks)
from .base import ATTACKS, Attack, ERMPolicy, TrainingPolicy, make_attack
from .suites import SUITES, resolve_attacks

__all__ = [
    "ATTACKS",
    "SUITES",
    "Attack",
    "ERMPolicy",
    "TrainingPolicy",
    "make_attack",
    "resolve_attacks",
]
