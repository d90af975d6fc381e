"""Run folders of ``scan`` and ``purify`` (the layout of :mod:`unlearnable.run_folder`).

scan: ``config.json``, ``report.json`` (schema ``unlearnable.scan-report``, version
:data:`~unlearnable.defenses.ebyd.REPORT_VERSION`), ``epochs.csv`` (one row per exposure epoch
of every exposure, column ``exposure`` = 1, 2, ...; epoch 0 = before; ``share_<class>`` columns
hold the histogram),
``histogram.png`` (every class's share per epoch in the first exposure, with the flag
threshold), ``accuracy.png`` and ``report.md``.

purify adds ``masks.csv`` (mask learning per epoch), ``sweep.csv`` (every pruning threshold:
channels pruned, defense and held-out accuracy, ASR with a trigger), ``sweep.png`` and
``masks.png`` (all mask values, sorted); when a trigger was unlearned, ``unlearn.csv``
(unlearning per epoch of the last round: defense accuracy, share of stamped images still sent
to the target) and ``triggers.png`` (each recovered trigger stamped on grey, one per round).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..plots import Series, line_plot
from ..run_folder import RunFolder
from .ebyd import REPORT_VERSION, PurifyResult, ScanResult


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def epoch_rows(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> list[dict]:
    """Exposure rows with the histogram spread into ``share_<class>`` columns."""
    out = []
    for row in rows:
        flat = {k: v for k, v in row.items() if k != "histogram"}
        for name, share in zip(classes, row.get("histogram") or [], strict=False):
            flat[f"share_{name}"] = share
        out.append(flat)
    return out


def histogram_png(
    rows: Sequence[Mapping[str, Any]], classes: Sequence[str], threshold: float | None
) -> bytes:
    epochs = [float(r["epoch"]) for r in rows]
    series = [
        Series(name, epochs, [float(r["histogram"][k]) for r in rows])
        for k, name in enumerate(classes)
    ]
    return line_plot(
        series,
        "clean-prediction histogram during exposure (held-out images)",
        "epoch",
        "share of clean predictions",
        hlines={"flag threshold": threshold} if threshold is not None else None,
        y_range=(0.0, 1.0),
    )


def accuracy_png(rows: Sequence[Mapping[str, Any]], stop: float | None) -> bytes:
    epochs = [float(r["epoch"]) for r in rows]
    series = [Series("defense-set accuracy", epochs, [float(r["clean_acc"]) for r in rows])]
    if rows and rows[0].get("holdout_acc") is not None:
        series.append(Series("held-out accuracy", epochs, [float(r["holdout_acc"]) for r in rows]))
    return line_plot(
        series,
        "clean accuracy during exposure",
        "epoch",
        "accuracy",
        hlines={"stop": stop} if stop is not None else None,
        y_range=(0.0, 1.0),
    )


def _model_lines(source: str | None) -> list[str]:
    return [f"- model: `{source}`"] if source else []


def _prior_line(prior: Sequence[float] | None, classes: Sequence[str]) -> str:
    if prior is None:
        return "- featureless prior: not used"
    top = max(range(len(prior)), key=lambda k: prior[k])
    return (
        f"- featureless prior (the original model on blurred-away images, a natural sink): "
        f"{classes[top]} {_pct(prior[top])}; subtracted from the agreed shares"
    )


def write_scan_folder(
    result: ScanResult, folder: str | Path, model_info: Mapping[str, Any] | None = None
) -> RunFolder:
    """Write the scan run folder; returns it."""
    run = RunFolder(folder, kind="scan")
    run.write_config(
        {**result.config.to_dict(), "model": dict(model_info or {})},
        seeds=[result.config.seed, result.config.exposure.seed],
    )
    rows = result.exposure.rows
    report = result.to_report()
    run.write_rows("epochs.csv", epoch_rows(report["epochs"], result.classes))
    det = result.detection
    run.write_plot(
        "histogram.png",
        histogram_png(
            rows, result.classes, det.threshold if det.score_name == "max-share" else None
        ),
    )
    run.write_plot("accuracy.png", accuracy_png(rows, result.exposure.stop_threshold))
    report["model_info"] = dict(model_info or {})
    run.write_report(report, version=REPORT_VERSION)
    hist = ", ".join(
        f"{name} {100 * share:.0f}%"
        for name, share in sorted(
            zip(result.classes, det.histogram, strict=True), key=lambda kv: -kv[1]
        )[:5]
    )
    exposures = [
        f"- exposure {e['index']}: {e['method']} (seed {e['seed']}), {e['epochs']} epochs "
        f"({e['stop_reason'] or 'no stop: max epochs'}); defense-set accuracy "
        f"{_pct(e['clean_acc_before'])} -> {_pct(e['clean_acc_after'])}, held-out "
        f"{_pct(e['holdout_acc_before'])} -> {_pct(e['holdout_acc_after'])}; read at epoch "
        f"{e['readout_epoch']}: {result.classes[e['top_class']]} {_pct(e['top_share'])}"
        for e in report["exposures"]
    ]
    readout = result.config.detection.readout
    lines = [
        f"# EBYD scan: {det.verdict}",
        "",
        *_model_lines(result.source),
        f"- verdict: **{det.verdict}** ({det.score_name} {det.score:.3f} "
        f"{'>=' if det.score >= det.threshold else '<'} threshold {det.threshold:g}"
        + (f"; {det.inconclusive}" if det.inconclusive else "")
        + ")",
        f"- target class: {result.target_name or '-'} (dominance needed: "
        f"{result.config.detection.dominance:g})",
        f"- {len(exposures)} independent exposure(s) on disjoint parts of the defense set; "
        f"score read on the histogram they agree on (per-class minimum, readout "
        f"{readout!r})",
        *exposures,
        f"- clean data: {result.defense_size} defense images, {result.holdout_size} held out",
        _prior_line(det.prior, result.classes),
        f"- agreed histogram{' less the prior' if det.prior is not None else ''} (top 5): {hist}",
        "",
        "Files: `epochs.csv`, `histogram.png`, `accuracy.png`, `report.json`, `config.json`.",
    ]
    lines += [""] + [f"Note: {n}" for n in result.notes] if result.notes else []
    run.write_markdown("\n".join(lines))
    return run


def sweep_png(sweep: Sequence[Mapping[str, Any]], chosen: float) -> bytes:
    taus = [float(r["threshold"]) for r in sweep]
    series = [Series("defense accuracy", taus, [float(r["defense_acc"]) for r in sweep])]
    if sweep and "holdout_acc" in sweep[0]:
        series.append(Series("held-out accuracy", taus, [float(r["holdout_acc"]) for r in sweep]))
    if sweep and "asr" in sweep[0]:
        series.append(Series("ASR (known trigger)", taus, [float(r["asr"]) for r in sweep]))
    series.append(
        Series(
            f"chosen threshold {chosen:g}", [chosen, chosen], [0.0, 1.0], colour=(0, 0, 0), width=1
        )
    )
    return line_plot(
        series, "pruning sweep on the original model", "mask threshold", "rate", y_range=(0.0, 1.0)
    )


def masks_png(values: Sequence[float], chosen: float) -> bytes:
    ordered = sorted(values)
    return line_plot(
        [Series("mask value", list(range(len(ordered))), ordered)],
        "batch-norm channel masks learned on the exposed model (sorted)",
        "channel rank",
        "mask",
        hlines={"threshold": chosen},
        y_range=(0.0, 1.0),
    )


def triggers_png(triggers: Sequence[Any]) -> bytes:
    """The recovered triggers side by side, each stamped on mid-grey and enlarged to at least
    128 px (nearest neighbour), 8 px apart on white."""
    import io

    from PIL import Image

    tiles = []
    for trigger in triggers:
        grey = trigger.apply(0.5 * trigger.pattern.new_ones(trigger.pattern.shape))[0]
        pixels = (grey.clamp(0, 1) * 255).round().to("cpu").byte().permute(1, 2, 0).numpy()
        tile = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., :3])
        scale = max(1, -(-128 // max(tile.size)))
        tiles.append(tile.convert("RGB").resize((tile.width * scale, tile.height * scale), 0))
    width = sum(t.width for t in tiles) + 8 * (len(tiles) + 1)
    height = max(t.height for t in tiles) + 16
    sheet = Image.new("RGB", (width, height), "white")
    x = 8
    for tile in tiles:
        sheet.paste(tile, (x, 8))
        x += tile.width + 8
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def write_purify_folder(
    result: PurifyResult, folder: str | Path, model_info: Mapping[str, Any] | None = None
) -> RunFolder:
    """Write the purify run folder (next to the saved model); returns it."""
    run = RunFolder(folder, kind="purify")
    run.write_config(
        {**result.config.to_dict(), "model": dict(model_info or {})},
        seeds=[result.config.seed, result.config.exposure.seed],
    )
    run.write_rows("epochs.csv", epoch_rows(result.exposure.rows, result.classes))
    run.write_rows("masks.csv", result.masks.rows)
    run.write_rows("sweep.csv", result.choice.sweep)
    run.write_plot("sweep.png", sweep_png(result.choice.sweep, result.choice.threshold))
    values = [float(v) for vals in result.masks.masks.values() for v in vals.tolist()]
    run.write_plot("masks.png", masks_png(values, result.choice.threshold))
    if result.unlearned is not None:
        run.write_rows("unlearn.csv", result.unlearned.rows)
        run.write_plot("triggers.png", triggers_png(result.unlearned.triggers))
    report = result.to_report()
    report["model_info"] = dict(model_info or {})
    run.write_report(report, version=REPORT_VERSION)
    rule = result.config.prune
    how = (
        f"largest amount (by {rule.by}) with defense-accuracy drop <= {rule.max_drop:g}"
        if rule.rule == "max-drop"
        else f"fixed threshold {rule.threshold:g}"
    )
    lines = [
        "# EBYD purify (RNP pruning of batch-norm channels, then trigger unlearning)",
        "",
        *_model_lines(result.source),
        f"- threshold: {result.choice.threshold:g} ({how}; chosen without any trigger)",
        f"- pruned channels: {len(result.choice.channels)} of {report['total_channels']}",
        _unlearn_line(result),
        f"- held-out clean accuracy: {_pct(result.clean_acc_before)} -> "
        f"{_pct(result.clean_acc_after)}",
    ]
    if result.trigger is not None:
        lines.append(
            f"- ASR of the given trigger ({result.trigger['name']}, target "
            f"{result.classes[result.trigger['target']]}): {_pct(result.asr_before)} "
            f"-> {_pct(result.asr_after)}"
        )
    lines += [
        "",
        "Files: `sweep.csv`, `sweep.png`, `masks.csv`, `masks.png`, `epochs.csv`, "
        + ("`unlearn.csv`, `triggers.png`, " if result.unlearned is not None else "")
        + "`report.json`, `config.json`, `model.json` + `model.safetensors`.",
    ]
    lines += [""] + [f"Note: {n}" for n in result.notes] if result.notes else []
    run.write_markdown("\n".join(lines))
    return run


def _unlearn_line(result: PurifyResult) -> str:
    det = result.detection
    if result.unlearned is None:
        if result.config.unlearn is None:
            return "- trigger unlearning: off"
        if det.inconclusive:
            return "- trigger unlearning: skipped, the verdict is inconclusive (see the notes)"
        return f"- trigger unlearning: skipped, no target detected (score {det.score:.2f})"
    found = ", ".join(
        f"{t.mask_pixels:.0f} px (hit rate {100 * t.hit_rate:.0f}%)"
        for t in result.unlearned.triggers
    )
    return (
        f"- trigger unlearning: target {result.classes[det.target]} (detected, score "
        f"{det.score:.2f}); recovered triggers {found}"
        + (
            "; batch-norm statistics measured again on the clean defense images"
            if result.config.unlearn is not None and result.config.unlearn.recalibrate
            else ""
        )
    )


__all__ = ["epoch_rows", "write_purify_folder", "write_scan_folder"]
