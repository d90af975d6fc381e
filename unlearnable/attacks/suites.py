"""Named sets of attacks for ``verify`` and a parser for ``--attacks`` specs.

* ``quick``: plain training plus the cheap data squeezes (minutes on a CPU);
* ``standard``: what a careful scraper tries against CUDA-style protection (ERM, adversarial
  training, ISS squeezes, label-mixing augmentations, RSK+FF, COIN, random blur);
* ``all``: every registered attack (computed when read, so plugins are included).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from . import adversarial, augment, dat, squeeze  # noqa: F401  (register the attacks the suites name)
from .base import ATTACKS

__all__ = ["SUITES", "resolve_attacks"]

_FIXED: dict[str, tuple[str, ...]] = {
    "quick": ("erm", "jpeg", "grayscale", "sharpen-ff"),
    "standard": (
        "erm",
        "at-linf-4",
        "at-l2-0.5",
        "jpeg",
        "grayscale",
        "bit-depth",
        "mixup",
        "cutout",
        "cutmix",
        "sharpen-ff",
        "coin",
        "random-blur",
    ),
}


class _Suites(Mapping[str, list[str]]):
    """``{"quick": [...], "standard": [...], "all": [...]}``; ``"all"`` is every registered name."""

    def __getitem__(self, key: str) -> list[str]:
        if key == "all":
            return ATTACKS.names()
        return list(_FIXED[key])

    def __iter__(self) -> Iterator[str]:
        return iter((*_FIXED, "all"))

    def __len__(self) -> int:
        return len(_FIXED) + 1

    def __repr__(self) -> str:
        return repr(dict(self.items()))


#: suite name -> attack names, in the order they are run.
SUITES: Mapping[str, list[str]] = _Suites()


def resolve_attacks(spec: str) -> list[str]:
    """Turn ``"NAME,NAME"`` (attack or suite names, mixed freely, case-insensitive) into the
    ordered, de-duplicated list of registered attack names it means.

    Raises ``ValueError`` for an empty spec, an unknown name (listing the valid suites and
    attacks), or a suite that names an attack that is not registered.
    """
    tokens = [t.strip().lower() for t in spec.split(",")]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise ValueError(
            f"no attacks given in {spec!r}; use suite names ({', '.join(SUITES)}) or attack names"
        )
    registered = set(ATTACKS.names())
    unknown = [t for t in tokens if t not in SUITES and t not in registered]
    if unknown:
        raise ValueError(
            f"unknown attack or suite name(s): {', '.join(unknown)}. "
            f"Suites: {', '.join(SUITES)}. Attacks: {', '.join(sorted(registered))}"
        )
    names: list[str] = []
    for token in tokens:
        members = SUITES[token] if token in SUITES else [token]
        missing = [m for m in members if m not in registered]
        if missing:
            raise ValueError(
                f"suite {token!r} names attacks that are not registered: {', '.join(missing)}"
            )
        names.extend(m for m in members if m not in names)
    return names
