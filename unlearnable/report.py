"""Write a verification run folder: JSON, CSV, PNG curves and a Markdown report.

:func:`write_run_folder` takes a :class:`~unlearnable.verify.VerifyResult` (or its
``to_json()`` dict, e.g. read back from a ``report.json``) and writes into one folder:

* ``config.json``: what was run (model, training config, seeds, attacks, thresholds, data
  sizes, versions and the git commit of the code (``provenance``), plus the caller's
  ``extra_config`` such as input paths, the full options and the budget name);
* ``report.json``: the full report (schema ``unlearnable.verify-report``, version 2);
* ``epochs.csv``: one row per attack x training set x seed x epoch;
* ``accuracy_<attack>.png``: test accuracy per epoch, clean vs protected, with chance level;
* ``per_by_size.png`` (verifications at several image sizes): peak PER per scraper resolution;
* ``report.md``: verdict, thresholds, a table per attack, the curves and what the run does and
  does not show.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so
a crash never leaves a half-written report. Plots use matplotlib when it is installed and
Pillow (a dependency) otherwise (:mod:`unlearnable.report_plots`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from .io.atomic import atomic_write_bytes, atomic_write_text
from .provenance import provenance
from .report_plots import (
    CHANCE_COLOUR,
    CLEAN_COLOUR,
    PER_BY_SIZE_PLOT,
    PROTECTED_COLOUR,
    PlotBackend,
    plot_accuracy,
    plot_per_by_size,
)
from .verify import VerifyResult
from .verify_schema import validate_report

EPOCH_COLUMNS = [
    "attack",
    "train_set",
    "seed",
    "epoch",
    "train_loss",
    "train_acc",
    "test_acc",
    "lr",
    "seconds",
]


# --------------------------------------------------------------------------- files


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def plot_filenames(report: dict[str, Any]) -> dict[str, str]:
    """Attack name -> ``accuracy_<attack>.png``, with unsafe characters replaced by ``_`` and
    a numeric suffix where two names would collide."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for attack in report["attacks"]:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", attack["name"]).strip("._") or "attack"
        candidate, i = f"accuracy_{stem}.png", 2
        while candidate.lower() in used:
            candidate, i = f"accuracy_{stem}_{i}.png", i + 1
        used.add(candidate.lower())
        names[attack["name"]] = candidate
    return names


def write_run_folder(
    result: VerifyResult | dict[str, Any],
    folder: str | Path,
    extra_config: dict[str, Any] | None = None,
    plot_backend: PlotBackend = "auto",
) -> Path:
    """Write ``config.json``, ``report.json``, ``epochs.csv``, ``accuracy_<attack>.png`` and
    ``report.md`` into ``folder`` (created if needed; files of the same names are replaced).

    ``result`` is a :class:`VerifyResult` or a report dict (validated with
    :func:`~unlearnable.verify_schema.validate_report`; ``ValueError`` if it is not one).
    ``extra_config`` (JSON-serialisable) is stored under ``"run"`` in ``config.json``.
    Returns the folder's path.
    """
    report = result.to_json() if isinstance(result, VerifyResult) else result
    validate_report(report)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = plot_filenames(report)
    for attack in report["attacks"]:
        atomic_write_bytes(folder / plots[attack["name"]], plot_accuracy(attack, plot_backend))
    if len(report.get("per_by_size", [])) > 1:
        atomic_write_bytes(folder / PER_BY_SIZE_PLOT, plot_per_by_size(report))
    atomic_write_text(folder / "epochs.csv", epochs_csv(report))
    atomic_write_text(folder / "config.json", _json_text(run_config(report, extra_config)))
    atomic_write_text(folder / "report.md", markdown_report(report, plots))
    atomic_write_text(folder / "report.json", _json_text(report))
    return folder


def run_config(
    report: dict[str, Any], extra_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``config.json`` content: everything needed to rerun, no results."""
    return {
        "schema": "unlearnable.verify-config",
        "schema_version": 1,
        "created": report["created"],
        "versions": report["versions"],
        "provenance": provenance(),
        "model": report["model"],
        "config": report["config"],
        "seeds": report["seeds"],
        "attacks": [a["params"] for a in report["attacks"]],
        "thresholds": report["thresholds"],
        "data": report["data"],
        "run": dict(extra_config or {}),
    }


def epochs_csv(report: dict[str, Any]) -> str:
    """CSV text with :data:`EPOCH_COLUMNS`, one row per attack x train set x seed x epoch
    (missing values are empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(EPOCH_COLUMNS)
    for attack in report["attacks"]:
        for run in attack["runs"]:
            for row in run["epochs"]:
                values = {
                    "attack": attack["name"],
                    "train_set": run["train_set"],
                    "seed": run["seed"],
                }
                values.update(row)
                writer.writerow(
                    ["" if values.get(c) is None else values.get(c) for c in EPOCH_COLUMNS]
                )
    return buf.getvalue()


def _pct(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{100 * value:.1f}%"
    if std is not None:
        text += f" ± {100 * std:.1f}"
    return text


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


_VERDICT_TEXT = {
    "protected": "PROTECTED",
    "weak": "WEAK",
    "not protected": "NOT PROTECTED",
    "inconclusive": "INCONCLUSIVE",
}


def _attack_params(params: dict[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if k not in ("name", "summary")}
    text = params.get("summary", "")
    if shown:
        parts = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
        )
        text = f"{text} ({parts})" if text else parts
    return text


def markdown_report(report: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The ``report.md`` text for a report dict; ``plots`` maps attack names to PNG file names
    (default: :func:`plot_filenames`)."""
    plots = plots if plots is not None else plot_filenames(report)
    th = report["thresholds"]
    cfg = report["config"]
    data = report["data"]
    attacks = report["attacks"]
    worst = report["worst_attack"]
    verdict = report["verdict"]
    lines: list[str] = ["# Protection verification report", ""]

    headline = f"**Verdict: {_VERDICT_TEXT.get(verdict, verdict.upper())}**"
    if worst is not None:
        headline += (
            f" (worst attack: `{worst}`, PER {_score(report['worst_per'])} on peak accuracy)"
        )
    else:
        headline += " (worst attack: none, no attack has a defined PER)"
    lines += [headline, ""]
    lines += [
        f"Thresholds: **protected** if the worst PER >= {th['protected']:.2f}, **weak** if >= "
        f"{th['weak']:.2f}, otherwise **not protected**; **inconclusive** if a clean baseline did "
        "not learn. PER = (clean acc. - protected acc.) / (clean acc. - chance), computed on the "
        "mean peak test accuracy over seeds (a scraper can stop at its best epoch) and clipped to "
        "[-1, 1]: 1 = the protected set teaches nothing, 0 = the protection changes nothing.",
        "",
    ]

    lines += ["## Setup", ""]
    lines.append(f"- Victim model: `{report['model']}`")
    lines.append(
        f"- Training: {cfg['epochs']} epochs, batch {cfg['batch_size']}, SGD lr {cfg['lr']:g} "
        f"(momentum {cfg['momentum']:g}, weight decay {cfg['weight_decay']:g}), "
        f"{cfg['schedule']} schedule, gradient clipping {cfg.get('grad_clip')}, "
        f"crop + flip augmentation {'on' if cfg.get('augment', True) else 'off'}, "
        f"device {cfg.get('device', 'cpu')}"
    )
    lines.append(f"- Seeds: {', '.join(str(s) for s in report['seeds'])}")
    shape = "x".join(str(v) for v in data["image_shape"])
    sizes = data.get("image_sizes") or []
    if len(sizes) > 1:
        shape = f"at {len(sizes)} sizes: " + ", ".join(f"{size} px" for size in sizes)
    lines.append(
        f"- Data: {data['num_train']} training images (protected copy and clean copy, same "
        f"labels), {data['num_test']} clean test images, {shape}, {data['num_classes']} classes"
        + (" (scraper's own labels)" if data.get("scraper_labels") else "")
        + f"; chance level {_pct(data.get('chance', attacks[0]['chance']))}"
    )
    v = report["versions"]
    lines.append(
        f"- Run: {report['created']}, unlearnable {v['unlearnable']}, torch {v['torch']}, "
        f"Python {v['python']}"
    )
    lines.append("")

    lines += ["## Results", ""]
    lines.append(
        "| Attack | Clean peak | Clean last | Protected peak | Protected last | Chance "
        "| PER (peak) | PER (last) |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for a in attacks:
        c, p = a["clean"], a["protected"]
        name = f"**{a['name']}** (worst)" if a["name"] == worst else a["name"]
        lines.append(
            f"| {name} | {_pct(c['peak_mean'], c['peak_std'])} | {_pct(c['last_mean'], c['last_std'])} "
            f"| {_pct(p['peak_mean'], p['peak_std'])} | {_pct(p['last_mean'], p['last_std'])} "
            f"| {_pct(a['chance'])} | {_score(a['per_peak'])} | {_score(a['per_last'])} |"
        )
    lines += [
        "",
        "Accuracies are clean test accuracy, mean ± sample standard deviation over seeds "
        "(no ± with one seed); *peak* is the best epoch, *last* the final epoch. "
        f"With {data['num_test']} test images one accuracy has a standard error of up to "
        f"{50 / math.sqrt(max(1, data['num_test'])):.1f} percentage points.",
        "",
    ]

    size_rows = report.get("per_by_size") or []
    if len(size_rows) > 1:
        lines += ["## PER per scraper resolution", ""]
        lines.append(
            "| Image size | Worst attack | PER (peak) | PER (last) | Verdict at this size |"
        )
        lines.append("|---:|---|---:|---:|---|")
        for row in size_rows:
            size = f"{row['image_size']} px" if row["image_size"] else "-"
            lines.append(
                f"| {size} | {row['worst_attack'] or '-'} | {_score(row['per_peak'])} "
                f"| {_score(row['per_last'])} | {row['verdict']} |"
            )
        lines += [
            "",
            "Every attack was run at each size (victims trained on the images resized to S x S); "
            "the verdict above is that of the worst size.",
            "",
            f"![PER per scraper resolution]({PER_BY_SIZE_PLOT})",
            "",
        ]

    lines += ["## Accuracy curves", ""]
    for a in attacks:
        lines += [f"### {a['name']}", "", _attack_params(a["params"]), ""]
        lines += [f"![Test accuracy per epoch under {a['name']}]({plots[a['name']]})", ""]

    if report["notes"]:
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in report["notes"]]
        lines.append("")

    lines += ["## What this shows and what it does not", ""]
    lines += [_threat_model(report), ""]
    return "\n".join(lines)


def _threat_model(report: dict[str, Any]) -> str:
    cfg = report["config"]
    data = report["data"]
    attacks = report["attacks"]
    names = ", ".join(f"`{a['name']}`" for a in attacks)
    best = max(attacks, key=lambda a: a["protected"]["peak_mean"])
    num_seeds = len(report["seeds"])
    scraper = (
        f"a scraper who trains `{report['model']}` from scratch for {cfg['epochs']} epochs on "
        f"these {data['num_train']} images, with the attack{'s' * (len(attacks) > 1)} {names} "
        f"({num_seeds} seed{'s' * (num_seeds > 1)})"
    )
    verdict = report["verdict"]
    if verdict == "inconclusive":
        shows = (
            f"This run is **inconclusive**: for {scraper}, a clean baseline did not beat chance, "
            "so it cannot tell whether the protection or the training budget stopped learning. "
            "Train longer, use a larger set or another model, and run it again."
        )
    else:
        learns = {
            "protected": "does **not** learn a useful classifier",
            "weak": "learns **part** of what the clean images teach",
            "not protected": "**learns** nearly as well as from the clean images",
        }[verdict]
        shows = (
            f"What it shows: {scraper}, {learns}: its best clean test accuracy is "
            f"{_pct(best['protected']['peak_mean'])} (under `{best['name']}`), against "
            f"{_pct(best['clean']['peak_mean'])} from the clean images trained the same way."
        )
    try:
        from .attacks.base import ATTACKS

        not_run = sorted(set(ATTACKS.names()) - {a["name"] for a in attacks})
    except Exception:  # pragma: no cover - registry problems must not break a report
        not_run = []
    not_run_text = (
        f" (registered here but not run: {', '.join(f'`{n}`' for n in not_run)})" if not_run else ""
    )
    limits = (
        "What it does not show: how other architectures, pretrained models (fine-tuning or "
        "linear probes on features of a foundation model such as CLIP), longer training or "
        "other hyperparameters fare; attacks that were not run"
        f"{not_run_text}, or adaptive attacks designed against this particular protection; a "
        "scraper who also holds clean images of the same classes, or leaked clean/protected "
        "pairs; or a larger data set, where the protected images may be a small share of "
        "what is scraped. A verdict is evidence about the tested setting only, not a guarantee."
    )
    return f"{shows}\n\n{limits}"


__all__ = [
    "CHANCE_COLOUR",
    "CLEAN_COLOUR",
    "EPOCH_COLUMNS",
    "PER_BY_SIZE_PLOT",
    "PROTECTED_COLOUR",
    "PlotBackend",
    "atomic_write_bytes",
    "atomic_write_text",
    "epochs_csv",
    "markdown_report",
    "plot_accuracy",
    "plot_filenames",
    "plot_per_by_size",
    "run_config",
    "write_run_folder",
]
