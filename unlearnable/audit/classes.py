"""Which class of the suspect model each owner class (a manifest class) corresponds to.

By name when the model's class names contain the owner's (exact, else case-insensitive), or
through a mapping CSV of ``owner_class,model_class`` rows (optional header ``owner,model``;
several owner classes may map to one model class, e.g. ``cat,animal``). A scraper who used
other labels (or a model without class names) needs no mapping: the label-free statistic of the
audit does not use one.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


class AuditClassError(InputError):
    """Owner and model classes cannot be matched as asked (unknown names, a bad mapping)."""


@dataclass(frozen=True)
class ClassMatch:
    """``targets[c]``: the model class index of owner class ``c`` (``-1``: no match);
    ``how``: ``"names"``, ``"map"`` or ``"none"`` (nothing matched)."""

    owner_classes: tuple[str, ...]
    model_classes: tuple[str, ...] | None
    targets: tuple[int, ...]
    how: str

    @property
    def missing(self) -> tuple[str, ...]:
        """Owner classes without a model class."""
        return tuple(n for n, t in zip(self.owner_classes, self.targets, strict=True) if t < 0)

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_json(self) -> dict:
        names = self.model_classes
        return {
            "how": self.how,
            "pairs": {
                owner: (names[t] if names is not None else t) if t >= 0 else None
                for owner, t in zip(self.owner_classes, self.targets, strict=True)
            },
        }


def read_class_map(path: str | Path) -> dict[str, str]:
    """``owner_class,model_class`` rows of a CSV file (optional header ``owner,model``)."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditClassError(f"cannot read class map {source}: {exc}") from None
    mapping: dict[str, str] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise AuditClassError(
                f"{source}:{number}: expected 2 columns (owner_class,model_class), got {len(row)}"
            )
        owner, model = row[0].strip(), row[1].strip()
        if number == 1 and (owner.lower(), model.lower()) == ("owner", "model"):
            continue
        if not owner or not model:
            raise AuditClassError(f"{source}:{number}: empty class name")
        if mapping.get(owner, model) != model:
            raise AuditClassError(f"{source}:{number}: {owner!r} is mapped twice")
        mapping[owner] = model
    if not mapping:
        raise AuditClassError(f"class map {source} has no rows")
    return mapping


def _find(name: str, names: Sequence[str]) -> int:
    if name in names:
        return list(names).index(name)
    folded = [i for i, n in enumerate(names) if n.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else -1


def match_classes(
    owner_classes: Sequence[str],
    model_classes: Sequence[str] | None,
    class_map: Mapping[str, str] | None = None,
) -> ClassMatch:
    """Match the manifest's classes to the model's, by name or through ``class_map``.

    A mapping naming a class the manifest or the model does not have is an error
    (:class:`AuditClassError`); owner classes the mapping leaves out, or whose names the model
    lacks, get ``-1`` (see :attr:`ClassMatch.missing`).
    """
    owner = tuple(owner_classes)
    model = tuple(model_classes) if model_classes is not None else None
    if class_map:
        unknown = sorted(set(class_map) - set(owner))
        if unknown:
            raise AuditClassError(
                f"the class map names class(es) the manifest does not have: "
                f"{', '.join(unknown[:8])}; the manifest's classes: {', '.join(owner[:20])}"
            )
        if model is None:
            raise AuditClassError(
                "a class map needs the model's class names (give --classes for this model file)"
            )
        targets = []
        for name in owner:
            if name not in class_map:
                targets.append(-1)
                continue
            index = _find(class_map[name], model)
            if index < 0:
                raise AuditClassError(
                    f"the class map sends {name!r} to {class_map[name]!r}, which is not a class of "
                    f"the model ({', '.join(model[:20])})"
                )
            targets.append(index)
        return ClassMatch(owner, model, tuple(targets), "map")
    if model is None:
        return ClassMatch(owner, None, (-1,) * len(owner), "none")
    targets = tuple(_find(name, model) for name in owner)
    how = "names" if any(t >= 0 for t in targets) else "none"
    return ClassMatch(owner, model, targets, how)


def probe_targets(names: Sequence[str | None], match: ClassMatch) -> np.ndarray:
    """Model class index (``-1``: unknown) of each probe label name: a model class name, or an
    owner class name with a match."""
    owner_target = dict(zip(match.owner_classes, match.targets, strict=True))
    out = np.full(len(names), -1, dtype=np.int64)
    for i, name in enumerate(names):
        if name is None:
            continue
        index = _find(name, match.model_classes) if match.model_classes is not None else -1
        if index < 0:
            index = owner_target.get(name, -1)
        out[i] = index
    return out


__all__ = ["AuditClassError", "ClassMatch", "match_classes", "probe_targets", "read_class_map"]
