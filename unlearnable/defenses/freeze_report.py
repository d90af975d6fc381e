"""Run folders of ``unlearnable freeze`` and ``unlearnable finetune`` (see
:class:`~unlearnable.run_folder.RunFolder`).

``freeze`` folder: ``mask.json`` (the mask to publish), ``config.json``, ``report.json``
(schema ``unlearnable.freeze-report``), ``steps.csv`` (one row per mask step: mask mean, hard
ratio, illegal and legal loss, user loss), ``mask.png`` (mask ratio per step), ``losses.png``
(both losses per step) and ``report.md``.

``finetune`` folder: ``model/`` (the fine-tuned model), ``config.json``, ``report.json``
(``unlearnable.finetune-report``), ``epochs.csv``, ``loss.png`` and ``report.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..plots import Series, line_plot
from ..run_folder import RunFolder
from .freeze_enforce import FinetuneConfig, FinetuneResult
from .freeze_learn import FreezeConfig, FreezeResult
from .freeze_mask import FreezeMask, save_mask

REPORT_VERSION = 1


def mask_summary(mask: FreezeMask) -> dict[str, Any]:
    """Counts and shares of a mask, for reports and ``--json``."""
    share = mask.share
    maskable = len(mask.tensors) - len(mask.excluded)
    return {
        "level": mask.level,
        "target_ratio": mask.target_ratio,
        "tensors": len(mask.tensors),
        "maskable_tensors": maskable,
        "frozen_tensors": len(mask.frozen),
        "parameters": sum(t.numel for t in mask.tensors),
        "frozen_parameters": mask.frozen_parameter_count,
        "share_tensors": share["tensors"],
        "share_parameters": share["parameters"],
        "share_groups": share["groups"],
        "excluded": list(mask.excluded),
        "frozen": mask.frozen_names,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def write_freeze_run(
    folder: str | Path, result: FreezeResult, config: FreezeConfig, context: Mapping[str, Any]
) -> dict[str, Any]:
    """Write a ``freeze`` run folder; returns the report (also in ``report.json``).
    ``context``: where the model and data came from (``model``, ``illegal``, ``legal``...)."""
    run = RunFolder(folder, "freeze")
    run.write_config({"inputs": dict(context), "freeze": asdict(config)}, seeds=[config.seed])
    mask_file = save_mask(result.mask, run.path)
    rows = result.rows
    run.write_rows("steps.csv", rows)
    steps = [r["step"] for r in rows]
    run.write_plot(
        "mask.png",
        line_plot(
            [
                Series("soft mask mean", steps, [r["mask_mean"] for r in rows]),
                Series("hard ratio (m > 0.5)", steps, [r["hard_ratio"] for r in rows]),
            ],
            "FreezeAsGuard: mask ratio per step",
            "simulated-user step",
            "share of groups",
            hlines={"target": config.ratio},
            y_range=(0.0, 1.0),
        ),
    )
    run.write_plot(
        "losses.png",
        line_plot(
            [
                Series("illegal loss", steps, [r["illegal_loss"] for r in rows]),
                Series("legal loss", steps, [r["legal_loss"] for r in rows]),
            ],
            "FreezeAsGuard: losses at the mask steps",
            "simulated-user step",
            "loss",
        ),
    )
    final = rows[-1] if rows else {}
    report = {
        "inputs": dict(context),
        "mask_file": mask_file.name,
        "mask": mask_summary(result.mask),
        "final_step": final,
        "mask_steps": len(rows),
        "seconds": result.seconds,
        "relearn": None if result.relearn_history is None else result.relearn_history.to_dict(),
    }
    run.write_report(report, REPORT_VERSION)
    summary = report["mask"]
    lines = [
        "# FreezeAsGuard mask",
        "",
        f"- model: `{context.get('model', '?')}` (task {result.mask.task})",
        f"- illegal data: `{context.get('illegal', '?')}`; legal data: `{context.get('legal', '?')}`",
        f"- level: {summary['level']}; target ratio {config.ratio}",
        f"- frozen tensors: {summary['frozen_tensors']} of {summary['tensors']} "
        f"({_pct(summary['share_tensors'])} by count, {_pct(summary['share_parameters'])} "
        "by parameters)",
        f"- excluded (always trainable): {', '.join(summary['excluded']) or 'none'}",
        f"- final mask step: soft mean {final.get('mask_mean', float('nan')):.3f}, "
        f"illegal loss {final.get('illegal_loss', float('nan')):.4f}, "
        f"legal loss {final.get('legal_loss', float('nan')):.4f}",
        f"- time: {result.seconds:.1f} s",
        "",
        "![mask ratio](mask.png)",
        "",
        "![losses](losses.png)",
        "",
        "Frozen tensors: " + (", ".join(f"`{n}`" for n in summary["frozen"]) or "none"),
        "",
        "Enforcement is procedural: the mask holds only where fine-tuning goes through "
        "`unlearnable finetune` (or a service that honours the mask). Whoever holds the raw "
        "weights can train every tensor.",
    ]
    run.write_markdown("\n".join(lines))
    return report


def write_finetune_run(
    folder: str | Path,
    result: FinetuneResult,
    config: FinetuneConfig,
    mask: FreezeMask,
    context: Mapping[str, Any],
    model_path: Path | None,
) -> dict[str, Any]:
    """Write a ``finetune`` run folder (the model itself is saved by the caller); returns the
    report."""
    run = RunFolder(folder, "finetune")
    run.write_config({"inputs": dict(context), "finetune": asdict(config)}, seeds=[config.seed])
    rows = result.history.rows
    run.write_rows("epochs.csv", rows)
    epochs = [r["epoch"] for r in rows]
    series = [Series("train loss", epochs, [r["train_loss"] for r in rows])]
    if rows and "eval_loss" in rows[0]:
        series.append(Series("test loss", epochs, [r["eval_loss"] for r in rows]))
    run.write_plot("loss.png", line_plot(series, "fine-tuning under a mask", "epoch", "loss"))
    last = rows[-1] if rows else {}
    report = {
        "inputs": dict(context),
        "model_path": None if model_path is None else str(model_path),
        "mask": mask_summary(mask),
        "frozen_verified": result.verified,
        "frozen_tensors": result.frozen_tensors,
        "frozen_parameters": result.frozen_parameters,
        "trainable_parameters": result.trainable_parameters,
        "last_epoch": last,
        "seconds": result.seconds,
    }
    run.write_report(report, REPORT_VERSION)
    lines = [
        "# Fine-tuning under a FreezeAsGuard mask",
        "",
        f"- model: `{context.get('model', '?')}`; data: `{context.get('data', '?')}`",
        f"- frozen: {result.frozen_tensors} tensors, {result.frozen_parameters} parameters; "
        f"trainable: {result.trainable_parameters} parameters",
        "- frozen tensors bit-identical to the release after training: "
        + ("yes" if result.verified else "NO"),
        f"- last epoch: train loss {last.get('train_loss', float('nan')):.4f}"
        + (f", test accuracy {_pct(last['eval_acc'])}" if "eval_acc" in last else ""),
        f"- fine-tuned model: `{model_path}`" if model_path is not None else "- model not saved",
        "",
        "![loss](loss.png)",
    ]
    run.write_markdown("\n".join(lines))
    return report


__all__ = ["REPORT_VERSION", "mask_summary", "write_finetune_run", "write_freeze_run"]
