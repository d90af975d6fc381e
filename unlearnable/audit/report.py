"""The audit's verdict in plain language, its Markdown report and its run folder.

Run folder (:class:`~unlearnable.run_folder.RunFolder` of kind ``audit``)::

    config.json             the audit config, the seed, provenance; the key's fingerprint only
    report.json             schema unlearnable.audit-report, version 1 (AuditResult.to_json())
    classes.csv             per owner class: model class, eligible probes, move rate, null, p
    null.csv                each null key's statistics (null keys are public)
    null-distribution.png   the verdict's statistic: null histogram and the observed value
    report.md               verdict, tables and what the p-value does and does not prove
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..plots import histogram_plot
from ..run_folder import RunFolder
from .result import AuditResult

REPORT_VERSION = 1

STATISTIC_NAMES = {
    "labelled": "move rate into the key's class (labelled)",
    "label-free": "move rate over the best class pairing (label-free)",
}


def _p(value: float) -> str:
    return f"{value:.4g}"


def verdict_headline(result: AuditResult) -> str:
    """One line: ``EVIDENCE`` or ``NO EVIDENCE`` with the p-value and alpha."""
    word = "EVIDENCE" if result.flagged else "NO EVIDENCE"
    sign = "<=" if result.flagged else ">"
    return (
        f"{word} of training on images protected with this key "
        f"(p = {_p(result.p_value)} {sign} alpha {result.config.alpha}, "
        f"{result.statistic} statistic, {result.null_keys_used} null keys"
        f"{', stopped early' if result.stopped_early else ''})"
    )


def verdict_text(result: AuditResult) -> str:
    """The verdict in plain language: what was seen and what the p-value does and does not
    prove."""
    primary = result.primary
    n = result.null_keys_used
    floor = 1 / (n + 1)
    what = (
        "moved this model's predictions into their classes"
        if result.statistic == "labelled"
        else "each moved this model's predictions consistently into a class of its own"
    )
    if result.flagged:
        first = (
            f"Your key's marks {what} more strongly than the marks of "
            f"{'all' if primary.p_value <= floor + 1e-12 else 'almost all'} of {n} other keys "
            f"(effect size {primary.z:.1f} null standard deviations). A model that never saw "
            f"images protected with this key behaves like this with probability at most "
            f"{_p(primary.p_value)}."
        )
        proves = (
            "What this shows: the model's behaviour is hard to explain unless images protected "
            "with this key (or images carrying the same marks) were in its training data. What "
            "it does not show: how many of your images were used, who trained the model or when, "
            f"or that the use was unlawful. Tested on many innocent models, about "
            f"{100 * result.config.alpha:g}% of them would be flagged by chance, and the "
            f"smallest p-value {n} null keys can give is {_p(floor)}."
        )
    else:
        first = (
            f"Your key's marks {what} no more than the marks of other keys do (p = "
            f"{_p(primary.p_value)}: about that share of the keys did at least as well"
            + (
                f"; the audit stopped after {n} of {result.config.null_keys} null keys, once the "
                "verdict could no longer change)."
                if result.stopped_early
                else f", among your key and {n} null keys)."
            )
        )
        proves = (
            "This does not prove that the model never saw your images: a model trained on few "
            "of them, only briefly, or with countermeasures that wash the marks out can leave a "
            "trace too weak for this test. More probe images make a weak trace easier to see; "
            "a p-value above alpha is an absence of evidence, not evidence of absence."
        )
    return f"{verdict_headline(result)}.\n\n{first}\n\n{proves}"


def _summary_row(name: str, summary) -> str:
    return (
        f"| {name} | {summary.observed:.4f} | {summary.null_mean:.4f} ± {summary.null_std:.4f} "
        f"| {summary.excess:+.4f} | {summary.z:.2f} | {_p(summary.p_value)} |"
    )


def report_markdown(result: AuditResult) -> str:
    """The Markdown report of a run folder."""
    lines = [
        "# Audit: was this model trained on images protected with this key?",
        "",
        verdict_text(result),
        "",
        "## Statistics",
        "",
        "| statistic | observed | null mean ± std | excess | z | p-value |",
        "|---|---|---|---|---|---|",
    ]
    if result.labelled is not None:
        lines.append(_summary_row(STATISTIC_NAMES["labelled"], result.labelled))
    lines.append(_summary_row(STATISTIC_NAMES["label-free"], result.label_free))
    lines += [
        "",
        f"The verdict uses the **{result.statistic}** statistic, chosen before looking at the "
        "data; the other one is shown for information only.",
        "",
        "## Per class",
        "",
        "Per-class p-values are descriptive (one test per class: do not pick the smallest).",
        "",
        "| owner class | model class | eligible probes | move rate | null mean | p-value "
        "| label-free pair | its rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result.classes:
        s = row.labelled
        lines.append(
            f"| {row.owner_class} | {row.model_class or '-'} | "
            f"{'-' if row.eligible is None else row.eligible} | "
            f"{f'{s.observed:.3f}' if s else '-'} | {f'{s.null_mean:.3f}' if s else '-'} | "
            f"{_p(s.p_value) if s else '-'} | {row.paired_with or '-'} | {row.paired_rate:.3f} |"
        )
    probes = result.probes
    accuracy = probes.get("clean_accuracy")
    lines += [
        "",
        "## Setting",
        "",
        f"- protection: {result.method}, {result.plan.get('source', '')}",
        f"- key fingerprint: {result.key_fingerprint} (manifest: {result.manifest_fingerprint})",
        f"- probes: {probes['count']} of {probes['available']} images at {probes['size']} px"
        + (f", clean accuracy {100 * accuracy:.1f}%" if accuracy is not None else ""),
        f"- null keys: {result.null_keys_used} of {result.config.null_keys}, seed "
        f"{result.config.seed} (public: anyone "
        "can re-derive them)",
        "",
        "## How the test works",
        "",
        "Each class's mark of your key (for CUDA, its blur filter) is applied to clean probe "
        "images the model does not already put in that class, and the test counts how often the "
        "prediction moves into the class. The same is done with the marks of many other keys; "
        "the p-value is your key's rank among all of them. A model trained on images protected "
        "with your key learned 'this mark means this class' and ranks your key first; for any "
        "other model your key is just one random key, so the p-value is uniform and alpha is "
        "the false-alarm rate.",
    ]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def class_rows(result: AuditResult) -> list[dict[str, Any]]:
    rows = []
    for row in result.classes:
        s = row.labelled
        rows.append(
            {
                "owner_class": row.owner_class,
                "model_class": row.model_class,
                "eligible_probes": row.eligible,
                "move_rate": s.observed if s else None,
                "null_mean": s.null_mean if s else None,
                "null_std": s.null_std if s else None,
                "z": s.z if s else None,
                "p_value": s.p_value if s else None,
                "paired_with": row.paired_with,
                "paired_rate": row.paired_rate,
            }
        )
    return rows


def write_audit_folder(
    result: AuditResult, folder: str | Path, inputs: Mapping[str, Any] | None = None
) -> Path:
    """Write the run folder (see the module docstring); returns the folder. ``inputs``
    (paths of the model, manifest, probes; never the key) go into ``config.json``."""
    run = RunFolder(folder, kind="audit")
    run.write_config(
        {
            "audit": asdict(result.config),
            "inputs": dict(inputs or {}),
            "key_fingerprint": result.key_fingerprint,
        },
        seeds=[result.config.seed],
    )
    run.write_report(result.to_json(), version=REPORT_VERSION)
    run.write_rows("classes.csv", class_rows(result))
    null_rows = []
    for index in range(result.null_keys_used):
        row: dict[str, Any] = {"null_key": index}
        for name, values in result.null_values.items():
            row[name] = values[index]
        null_rows.append(row)
    run.write_rows("null.csv", null_rows)
    primary = result.primary
    run.write_plot(
        "null-distribution.png",
        histogram_plot(
            result.null_values[result.statistic],
            primary.observed,
            f"{STATISTIC_NAMES[result.statistic]}: your key (red) vs "
            f"{result.null_keys_used} other keys, p = {_p(primary.p_value)}",
            STATISTIC_NAMES[result.statistic],
        ),
    )
    run.write_markdown(report_markdown(result))
    return run.path


__all__ = [
    "REPORT_VERSION",
    "class_rows",
    "report_markdown",
    "verdict_headline",
    "verdict_text",
    "write_audit_folder",
]
