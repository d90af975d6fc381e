"""What an audit found (:class:`AuditResult`), built from the move rates of every key."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from .classes import ClassMatch
from .null_keys import NULL_KEY_VERSION
from .stats import Summary, label_free_pairs, label_free_values, labelled_rates, summarize


@dataclass
class ClassRow:
    """Per owner class: its model class, eligible probes, the labelled move rate against the
    null (``labelled``: None without a match), and the model class the label-free pairing gave
    its mark with that pair's move rate."""

    owner_class: str
    model_class: str | None
    eligible: int | None
    labelled: Summary | None
    paired_rate: float
    paired_with: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "owner_class": self.owner_class,
            "model_class": self.model_class,
            "eligible_probes": self.eligible,
            "labelled": self.labelled.to_json() if self.labelled is not None else None,
            "paired_with": self.paired_with,
            "paired_rate": self.paired_rate,
        }


@dataclass
class AuditResult:
    """What :func:`~unlearnable.audit.audit_model` found.

    ``statistic`` is the one the verdict uses; ``p_value`` and ``flagged`` (``p_value <=
    alpha``) are its. ``labelled`` is None when the classes are not matched. ``null_values``
    holds each statistic's null values (for plots); ``null_keys_used`` is less than
    ``config.null_keys`` when the audit stopped early (``stopped_early``: the verdict could no
    longer become "evidence").
    """

    config: Any  # AuditConfig (kept untyped here to avoid an import cycle)
    method: str
    plan: dict[str, Any]
    key_fingerprint: str
    manifest_fingerprint: str
    statistic: str
    labelled: Summary | None
    label_free: Summary
    classes: list[ClassRow]
    class_match: dict[str, Any]
    probes: dict[str, Any]
    null_values: dict[str, list[float]]
    null_keys_used: int
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def primary(self) -> Summary:
        return self.labelled if self.statistic == "labelled" and self.labelled else self.label_free

    @property
    def p_value(self) -> float:
        return self.primary.p_value

    @property
    def flagged(self) -> bool:
        return self.p_value <= self.config.alpha

    def to_json(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "alpha": self.config.alpha,
            "effect_size_z": self.primary.z,
            "method": self.method,
            "plan": self.plan,
            "key_fingerprint": self.key_fingerprint,
            "manifest_key_fingerprint": self.manifest_fingerprint,
            "null_keys": {
                "requested": self.config.null_keys,
                "used": self.null_keys_used,
                "stopped_early": self.stopped_early,
                "seed": self.config.seed,
                "derivation": f"unlearnable/audit/null-key/v{NULL_KEY_VERSION}",
            },
            "labelled": self.labelled.to_json() if self.labelled is not None else None,
            "label_free": self.label_free.to_json(),
            "classes": [row.to_json() for row in self.classes],
            "class_match": self.class_match,
            "probes": self.probes,
            "config": dataclasses.asdict(self.config),
            "notes": list(self.notes),
        }


def statistic_values(
    rates: np.ndarray, match: ClassMatch, eligible: np.ndarray
) -> dict[str, np.ndarray]:
    """Per key (``(J+1,)`` each): ``label-free`` always, ``labelled`` when every owner class
    has a model class (mean over the classes with eligible probes)."""
    values = {"label-free": label_free_values(rates)}
    if match.complete:
        targets = np.asarray(match.targets)
        usable = eligible[targets] > 0
        if not usable.any():
            raise UsageError(
                "no probe is eligible for any class (the model puts every probe in every class?)"
            )
        values["labelled"] = labelled_rates(rates, targets)[:, usable].mean(axis=1)
    return values


def stop_index(values: np.ndarray, alpha: float, total_nulls: int) -> int | None:
    """Where verdict-preserving early stopping ends (Besag & Clifford, 1991).

    With ``J = total_nulls`` the test flags only when at most ``g* = floor(alpha (J+1) - 1)``
    null values reach the observed one, so once ``h = g* + 1`` have, the verdict is "no
    evidence" whatever the remaining keys do. Returns ``l``, the number of null keys seen when
    the ``h``-th did (the sequential p-value is then ``h / l``), or None.
    """
    h = int(np.floor(alpha * (total_nulls + 1) - 1 + 1e-9)) + 1
    reached = np.flatnonzero(values[1:] >= values[0] - 1e-12)
    return int(reached[h - 1]) + 1 if len(reached) >= h else None


def build_result(
    config: Any,
    plan: Any,
    key_fingerprint: str,
    manifest_fingerprint: str,
    match: ClassMatch,
    statistic: str,
    rates: np.ndarray,
    eligible: np.ndarray,
    probes: dict[str, Any],
    notes: list[str],
    model_classes: Sequence[str] | None,
    stopped_early: bool = False,
) -> AuditResult:
    """The :class:`AuditResult` of ``rates (J+1, C, K)`` (see :mod:`unlearnable.audit.stats`)."""

    def name(index: int) -> str:
        return model_classes[index] if model_classes is not None else str(index)

    values = statistic_values(rates, match, eligible)
    summaries = {stat: summarize(v) for stat, v in values.items()}
    if stopped_early:  # the sequential p-value h / l of the verdict's statistic
        nulls = rates.shape[0] - 1
        h = int(np.floor(config.alpha * (config.null_keys + 1) - 1 + 1e-9)) + 1
        summaries[statistic] = dataclasses.replace(summaries[statistic], p_value=h / nulls)
        notes.append(
            f"stopped after {nulls} of {config.null_keys} null keys: {h} of them already reached "
            "your key's value, so the verdict could no longer be 'evidence' (sequential p-value "
            "h/l, Besag and Clifford 1991)"
        )
    verdict = summaries[statistic]
    if verdict.null_std == 0 and verdict.excess == 0:
        notes.append(
            "the model's answers reacted to no key's marks in the same way (every key scored "
            f"{verdict.observed:.3g}): the test cannot tell anything about this model"
        )
    per_class: list[Summary | None] = [None] * len(plan.classes)
    if match.complete:
        moved = labelled_rates(rates, np.asarray(match.targets))
        for c, target in enumerate(match.targets):
            if eligible[target] > 0:
                per_class[c] = summarize(moved[:, c])
        skipped = [plan.classes[c] for c, s in enumerate(per_class) if s is None]
        if skipped:
            notes.append(
                f"no eligible probe for class(es) {', '.join(skipped[:8])}: left out of the "
                "labelled statistic"
            )
    paired, paired_rates = label_free_pairs(rates[0])
    rows = [
        ClassRow(
            owner_class=owner,
            model_class=name(match.targets[c]) if match.targets[c] >= 0 else None,
            eligible=int(eligible[match.targets[c]]) if match.targets[c] >= 0 else None,
            labelled=per_class[c],
            paired_rate=float(paired_rates[c]),
            paired_with=name(int(paired[c])) if paired[c] >= 0 else None,
        )
        for c, owner in enumerate(plan.classes)
    ]
    return AuditResult(
        config=config,
        method=plan.method,
        plan=plan.describe(),
        key_fingerprint=key_fingerprint,
        manifest_fingerprint=manifest_fingerprint,
        statistic=statistic,
        labelled=summaries.get("labelled"),
        label_free=summaries["label-free"],
        classes=rows,
        class_match=match.to_json(),
        probes=probes,
        null_values={stat: v[1:].tolist() for stat, v in values.items()},
        null_keys_used=rates.shape[0] - 1,
        stopped_early=stopped_early,
        notes=notes,
    )


__all__ = ["AuditResult", "ClassRow", "build_result", "statistic_values", "stop_index"]
