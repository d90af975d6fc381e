"""``unlearnable scan`` (is this model backdoored?) and ``unlearnable purify`` (remove it): EBYD."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import EXIT_FAILURES, EXIT_FLAGGED
from .common import (
    device_option,
    json_option,
    note,
    out_console,
    output_option,
    print_json,
    progress_bars,
    quiet_option,
    summary_table,
)
from .model_options import (
    check_output_folder,
    load_model_file,
    model_file_options,
    refuse_overwriting_model,
)

EXPOSURES = ("cul", "random-label")  # = unlearnable.defenses.exposure.EXPOSURES (tested)
SCORES = ("max-share", "variance")  # = unlearnable.defenses.detection.SCORES (tested)
READOUTS = ("final", "early")  # = unlearnable.defenses.detection.READOUTS (tested)


def exposure_options(function):
    """Options shared by scan and purify: model, clean data, exposure, split, device, output."""
    options = [
        click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, path_type=Path)),
        model_file_options,
        click.option(
            "--clean",
            "clean_dir",
            required=True,
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Clean labelled images, one folder per class named as the model's classes.",
        ),
        click.option(
            "--exposure",
            type=click.Choice(EXPOSURES),
            default="cul",
            show_default=True,
            help="cul: clean unlearning (gradient ascent); random-label: fine-tuning "
            "with random labels.",
        ),
        click.option(
            "--lr",
            type=click.FloatRange(0, min_open=True),
            default=None,
            help="Exposure learning rate (default: cul 0.01 SGD, random-label 1e-4 Adam).",
        ),
        click.option("--max-epochs", type=click.IntRange(1), default=20, show_default=True),
        click.option(
            "--stop-accuracy",
            type=click.FloatRange(0, 1),
            default=None,
            help="Stop exposing once defense-set accuracy is at or below this (default: "
            "0.20 for 10 balanced classes; m + (1 - m)/9 with m the largest class share).",
        ),
        click.option(
            "--fixed-epochs",
            is_flag=True,
            help="Run all --max-epochs without the accuracy stop (EBYD's fixed-length variant).",
        ),
        click.option(
            "--defense-images",
            type=click.IntRange(2),
            default=500,
            show_default=True,
            help="Clean images used to expose (and learn masks); the rest is held out.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        device_option(),
        quiet_option,
        json_option,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _exposure_config(exposure, lr, max_epochs, stop_accuracy, fixed_epochs, seed):
    from ..defenses.exposure import ExposureConfig

    changes = {
        "max_epochs": max_epochs,
        "stop_accuracy": stop_accuracy,
        "early_stop": not fixed_epochs,
        "seed": seed,
    }
    if lr is not None:
        changes["lr"] = lr
    return ExposureConfig.for_method(exposure, **changes)


def _load(model_path, model_file, device, clean_dir, bars):
    from ..defenses.ebyd_data import load_clean_folder

    model = load_model_file(model_path, model_file, device)
    clean = load_clean_folder(
        clean_dir, model.spec.classes, model.spec.input_size, bars.counter("loading")
    )
    return model, clean


def _model_info(model) -> dict:
    return {
        "source": str(model.source),
        "format": model.source_format,
        "sha256": model.sha256,
        "arch": model.spec.arch,
        "classes": list(model.spec.classes),
        "input_size": model.spec.input_size,
    }


def _on_epoch(bars):
    def update(stage, epoch, total, row) -> None:
        acc = row.get("clean_acc")
        bars.update(
            stage,
            epoch,
            total,
            description=(
                f"{stage} epoch {epoch}/{total}" + ("" if acc is None else f" clean acc {acc:.2f}")
            ),
        )

    return update if bars.active else None


@click.command("scan")
@exposure_options
@click.option(
    "--score",
    type=click.Choice(SCORES),
    default="max-share",
    show_default=True,
    help="Detection score of the histogram the exposures agree on.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0),
    default=None,
    help="Flag when the score is at or above this (default: max-share 0.4, variance 0.01; "
    "calibrated on small CIFAR-10 CNNs, see the README).",
)
@click.option(
    "--exposures",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Independent exposures, each on its own disjoint part of the defense images; a "
    "backdoor's target must be the sink of every one (1: a single exposure).",
)
@click.option(
    "--readout",
    type=click.Choice(READOUTS),
    default="final",
    show_default=True,
    help="final: the exposed model's clean predictions; early: where the predictions moved "
    "by the first epoch that lost --early-drop of the clean accuracy.",
)
@click.option(
    "--early-drop",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.3,
    show_default=True,
    help="Fraction of the starting clean accuracy lost at the --readout early epoch.",
)
@click.option(
    "--prior/--no-prior",
    default=True,
    show_default=True,
    help="Subtract where the original model sends featureless (blurred-away) images, so "
    "that a natural sink class is not taken for a backdoor's target.",
)
@click.option(
    "--dominance",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.4,
    show_default=True,
    help="Share of clean predictions the target class must reach.",
)
@output_option("Run folder for the report (default: a new folder in ./unlearnable-runs).")
def scan(
    model_path,
    model_file,
    clean_dir,
    exposure,
    lr,
    max_epochs,
    stop_accuracy,
    fixed_epochs,
    defense_images,
    seed,
    device,
    quiet,
    as_json,
    score,
    threshold,
    exposures,
    readout,
    early_drop,
    prior,
    dominance,
    output,
) -> None:
    """Is MODEL backdoored? Expose it with clean unlearning, then read where clean images go.

    Exit code 0: clean; 3: flagged as backdoored (the report names the target class); 1:
    inconclusive (the model does not classify the clean images to begin with: check --classes
    and the data).
    MODEL may be our format, a state dict (--arch), a TorchScript or a torch.export archive
    (with --classes and --input-size).
    """

    from ..defenses.detection import DetectionConfig
    from ..defenses.ebyd import ScanConfig, scan_model
    from ..defenses.ebyd_report import write_scan_folder
    from ..run_folder import default_run_folder

    config = ScanConfig(
        exposure=_exposure_config(exposure, lr, max_epochs, stop_accuracy, fixed_epochs, seed),
        detection=DetectionConfig(
            score=score,
            threshold=threshold,
            dominance=dominance,
            readout=readout,
            early_drop=early_drop,
            prior=prior,
        ),
        defense_images=defense_images,
        seed=seed,
        exposures=exposures,
    )
    check_output_folder(output, clean_dir)
    if output is None:
        output = default_run_folder("scan")
    with progress_bars(quiet or as_json, {"loading": "loading images"}) as bars:
        model, clean = _load(model_path, model_file, device, clean_dir, bars)
        result = scan_model(model, clean, config, progress=_on_epoch(bars))
    write_scan_folder(result, output, _model_info(model))
    det = result.detection
    if as_json:
        report = result.to_report()
        print_json(
            {
                **{k: v for k, v in report.items() if k != "epochs"},
                "report": str(output / "report.md"),
            }
        )
    elif not quiet:
        exp = result.exposure
        out_console.print(
            summary_table(
                f"verdict: {det.verdict}",
                [
                    ("score", f"{det.score_name} {det.score:.3f} (flag at >= {det.threshold:g})"),
                    ("target class", result.target_name or "-"),
                    (
                        "sinks",
                        ", ".join(result.classes[t] for t in det.tops)
                        + f" ({len(result.exposures)} exposure(s))",
                    ),
                    (
                        "exposure",
                        f"{exp.config.method}, {exp.epochs} epochs, clean acc "
                        f"{exp.rows[0]['clean_acc']:.2f} -> {exp.final['clean_acc']:.2f}",
                    ),
                    ("report", str(output / "report.md")),
                ],
            )
        )
        for text in result.notes:
            note(text)
    if det.flagged:
        raise click.exceptions.Exit(EXIT_FLAGGED)
    if det.inconclusive:
        raise click.exceptions.Exit(EXIT_FAILURES)


@click.command("purify")
@exposure_options
@click.option(
    "--rule",
    type=click.Choice(("max-drop", "fixed")),
    default="max-drop",
    show_default=True,
    help="How much is pruned (never from the trigger): max-drop = the largest fraction of "
    "lowest-mask channels per layer with a defense-accuracy drop <= --max-drop; fixed = every "
    "channel with mask <= --prune-threshold (RNP).",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(0, 1),
    default=0.03,
    show_default=True,
    help="Tolerated drop of defense-set accuracy for the pruning (--rule max-drop).",
)
@click.option(
    "--prune-threshold",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Mask threshold for --rule fixed.",
)
@click.option("--mask-epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option(
    "--unlearn/--no-unlearn",
    default=True,
    show_default=True,
    help="After pruning, recover a trigger toward the target the exposure detected and "
    "unlearn it with the clean images (skipped when no target is detected).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0),
    default=None,
    help="Detection threshold (max-share) above which the exposed model's sink class counts as "
    "the backdoor's target to unlearn (default: scan's, 0.4).",
)
@click.option(
    "--unlearn-rounds",
    type=click.IntRange(1, 10),
    default=2,
    show_default=True,
    help="Recover-and-unlearn rounds.",
)
@click.option(
    "--trigger",
    default=None,
    metavar="SPEC|FILE",
    help="A known trigger to measure ASR before/after: trigger.json from `backdoor "
    "train`, or NAME[:KEY=VALUE,...]. Never used to choose the pruning.",
)
@click.option(
    "--target",
    default=None,
    help="Target class of --trigger (name or index; default: from trigger.json).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the purified model (model.json + model.safetensors) and the report.",
)
def purify(
    model_path,
    model_file,
    clean_dir,
    exposure,
    lr,
    max_epochs,
    stop_accuracy,
    fixed_epochs,
    defense_images,
    seed,
    device,
    quiet,
    as_json,
    rule,
    max_drop,
    prune_threshold,
    mask_epochs,
    unlearn,
    threshold,
    unlearn_rounds,
    trigger,
    target,
    output,
) -> None:
    """Remove a backdoor from MODEL: expose it, learn batch-norm channel masks on the exposed
    model, prune the lowest channels of the original (RNP), then recover a trigger toward the
    class the exposed model collapses into and unlearn it.

    MODEL needs batch-norm layers that can be edited: our format or a state dict with --arch
    (TorchScript and torch.export archives are refused; `scan` reads them).
    """
    from ..attacks.backdoor import trigger_and_target
    from ..defenses.detection import DetectionConfig
    from ..defenses.ebyd_data import load_clean_folder
    from ..defenses.ebyd_report import write_purify_folder
    from ..defenses.purify import PurifyConfig, purify_model, save_purified
    from ..defenses.removal import MaskConfig, PruneConfig, require_batch_norm
    from ..defenses.trigger_unlearn import UnlearnConfig

    config = PurifyConfig(
        exposure=_exposure_config(exposure, lr, max_epochs, stop_accuracy, fixed_epochs, seed),
        detection=DetectionConfig(threshold=threshold),
        masks=MaskConfig(epochs=mask_epochs, seed=seed),
        prune=PruneConfig(rule=rule, max_drop=max_drop, threshold=prune_threshold),
        unlearn=UnlearnConfig(rounds=unlearn_rounds, seed=seed) if unlearn else None,
        defense_images=defense_images,
        seed=seed,
    )
    check_output_folder(output, clean_dir)
    refuse_overwriting_model(model_path, output)
    with progress_bars(quiet or as_json, {"loading": "loading images"}) as bars:
        model = load_model_file(model_path, model_file, device)
        require_batch_norm(model, f"{model_path} ({model.source_format})")
        clean = load_clean_folder(
            clean_dir, model.spec.classes, model.spec.input_size, bars.counter("loading")
        )
        spec, target_index = trigger_and_target(trigger, target, model.spec.classes)
        result = purify_model(
            model, clean, config, trigger=spec, target=target_index, progress=_on_epoch(bars)
        )
    if clean.skipped_note():
        result.notes.append(clean.skipped_note())
    save_purified(result, output)
    write_purify_folder(result, output, _model_info(model))
    if as_json:
        report = result.to_report()
        print_json(
            {
                **{
                    k: v
                    for k, v in report.items()
                    if k not in ("epochs", "mask_epochs", "channels")
                },
                "output": str(output),
            }
        )
        return
    if not quiet:
        rows = [
            ("threshold", f"{result.choice.threshold:g} ({rule})"),
            ("pruned channels", str(len(result.choice.channels))),
            ("unlearned trigger", _unlearned(result)),
            (
                "clean accuracy",
                f"{_pct(result.clean_acc_before)} -> {_pct(result.clean_acc_after)} (held out)",
            ),
        ]
        if result.trigger is not None:
            rows.append(
                ("attack success", f"{_pct(result.asr_before)} -> {_pct(result.asr_after)}")
            )
        rows.append(("purified model", str(output)))
        out_console.print(summary_table("purified", rows))
        for text in result.notes:
            note(text)


def _unlearned(result) -> str:
    if result.unlearned is None:
        return "off" if result.config.unlearn is None else "none (no target detected)"
    trigger = result.unlearned.triggers[0]
    return (
        f"toward {result.classes[trigger.target]}, {len(result.unlearned.triggers)} round(s), "
        f"first {trigger.mask_pixels:.0f} px"
    )


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


COMMANDS = (scan, purify)
