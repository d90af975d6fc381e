"""``unlearnable verify``: play the scraper and score the protection."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .common import (
    device_option,
    json_option,
    merge_alias,
    note,
    out_console,
    output_option,
    print_json,
    progress_bars,
    quiet_option,
    warn,
)

BUDGETS = ("smoke", "quick", "standard", "paper")  # = unlearnable.verify_run.BUDGET_NAMES (tested)
SUITES = ("quick", "standard", "all")  # = unlearnable.attacks.suites.SUITES (tested)


def verify_table(report: dict) -> Table:
    """The per-attack accuracies and PER of a verify report."""
    table = Table(title=f"verdict: {report['verdict']}", title_justify="left")
    columns = (
        "attack",
        "clean peak",
        "clean last",
        "protected peak",
        "protected last",
        "chance",
        "PER peak",
        "PER last",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "attack" else "right")

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    def score(value):
        return "-" if value is None else f"{value:.2f}"

    for attack in report["attacks"]:
        clean, protected = attack["clean"], attack["protected"]
        table.add_row(
            attack["name"],
            pct(clean["peak_mean"]),
            pct(clean["last_mean"]),
            pct(protected["peak_mean"]),
            pct(protected["last_mean"]),
            pct(attack["chance"]),
            score(attack["per_peak"]),
            score(attack["per_last"]),
        )
    return table


def size_table(report: dict) -> Table:
    """One row per scraper resolution: the worst attack there and its PER."""
    table = Table(title="PER per scraper resolution", title_justify="left")
    for column in ("image size", "worst attack", "PER peak", "PER last", "verdict"):
        table.add_column(column, justify="right" if column.startswith("PER") else "left")
    for row in report["per_by_size"]:
        table.add_row(
            f"{row['image_size']} px" if row["image_size"] else "-",
            row["worst_attack"] or "-",
            "-" if row["per_peak"] is None else f"{row['per_peak']:.2f}",
            "-" if row["per_last"] is None else f"{row['per_last']:.2f}",
            row["verdict"],
        )
    return table


def parse_sizes(values: tuple[str, ...]) -> int | tuple[int, ...] | None:
    """``--image-size`` values (``112,224`` and/or repeated) -> None, one size or a tuple."""
    sizes: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                size = int(part)
            except ValueError:
                raise click.BadParameter(
                    f"{part!r} is not a size", param_hint="--image-size"
                ) from None
            if size < 8:
                raise click.BadParameter(f"{size} is below 8", param_hint="--image-size")
            sizes.append(size)
    unique = tuple(dict.fromkeys(sizes))
    if not unique:
        return None
    return unique[0] if len(unique) == 1 else unique


def run_verify(protected, clean_train, test, options, output, quiet: bool):
    """``verify_folders`` with progress bars; returns the :class:`VerifyRun`."""
    from ..verify_run import verify_folders

    with progress_bars(quiet, {"loading": "loading images"}) as bars:

        def on_epoch(event) -> None:
            stats = event.stats
            bars.update(
                "training",
                (event.run - 1) * event.num_epochs + event.epoch,
                event.num_runs * event.num_epochs,
                description=(
                    f"{event.attack} / {event.train_set} (seed {event.seed}) "
                    f"epoch {event.epoch}/{event.num_epochs} loss {stats.get('train_loss', 0):.3f} "
                    f"test acc {100 * stats.get('test_acc', 0):.1f}%"
                ),
            )

        return verify_folders(
            protected,
            clean_train,
            test,
            options,
            output=output,
            progress=on_epoch if bars.active else None,
            load_progress=bars.counter("loading"),
        )


def verify_options(function):
    """The options of ``verify`` (shared by its alias ``verify-unlearnability``)."""
    options = [
        click.argument("protected", type=click.Path(exists=True, path_type=Path)),
        click.option(
            "--clean-train",
            required=True,
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="The same training images, unprotected (the baseline).",
        ),
        click.option(
            "--test",
            "test_dir",
            required=True,
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Clean test images (class subfolders, or --test-labels).",
        ),
        click.option(
            "--labels",
            default="auto",
            show_default=True,
            help="Owner labels of the training images: auto (manifest, else folders) | "
            "folders | single | FILE.csv.",
        ),
        click.option(
            "--test-labels",
            default="auto",
            show_default=True,
            help="Labels of the test images: auto | folders | FILE.csv.",
        ),
        click.option(
            "--hacker-labels",
            default=None,
            help="Train as a scraper who labels differently: 'folders' (the subfolders "
            "of the clean train/test folders) or a CSV mapping owner label -> scraper label.",
        ),
        click.option(
            "--attacks",
            "attack_names",
            default=None,
            help="Comma-separated attacks and/or suites (default: the quick suite).",
        ),
        click.option(
            "--suite",
            type=click.Choice(SUITES),
            default=None,
            help="A named set of attacks; the report's headline is the worst case.",
        ),
        click.option(
            "--budget",
            type=click.Choice(BUDGETS),
            default="quick",
            show_default=True,
            help="Training budget (model, epochs, schedule).",
        ),
        click.option(
            "--model",
            default=None,
            help="Victim model (default: the budget's); e.g. small-cnn, resnet18, tv:resnet50.",
        ),
        click.option(
            "--epochs", type=click.IntRange(1), default=None, help="Override the budget's epochs."
        ),
        click.option(
            "--seeds",
            type=click.IntRange(1),
            default=1,
            show_default=True,
            help="Repeat with N seeds (mean and spread).",
        ),
        click.option(
            "--image-size",
            "image_sizes",
            multiple=True,
            metavar="S[,S...]",
            help="Resize/crop images to S x S (default: follows the data). Several sizes "
            "(--image-size 112,224 or repeated) run the comparison at each scraper resolution; "
            "the verdict uses the worst.",
        ),
        click.option(
            "--ratio",
            type=click.FloatRange(0, 1),
            default=None,
            help="Protected fraction for the 'partial' attack.",
        ),
        click.option(
            "--pgd-steps",
            type=click.IntRange(1),
            default=None,
            help="PGD steps of adversarial training.",
        ),
        click.option(
            "--protected-threshold",
            type=float,
            default=0.7,
            show_default=True,
            help="Worst PER needed for 'protected'.",
        ),
        click.option(
            "--weak-threshold",
            type=float,
            default=0.3,
            show_default=True,
            help="Worst PER needed for 'weak'.",
        ),
        click.option(
            "--input-check",
            type=click.Choice(("refuse", "warn", "off")),
            default="refuse",
            show_default=True,
            help="When a --clean-train file differs from the input the manifest recorded: refuse, "
            "warn, or do not check.",
        ),
        click.option(
            "--save-models",
            is_flag=True,
            help="Keep every trained victim in the run folder (models/, safetensors + JSON).",
        ),
        output_option(
            "Run folder for the report (default: a new folder in ./unlearnable-runs).",
            hidden_alias="--run-dir",
        ),
        device_option("Where victims train: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N."),
        quiet_option,
        json_option,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def verify_command(
    protected,
    clean_train,
    test_dir,
    labels,
    test_labels,
    hacker_labels,
    attack_names,
    suite,
    budget,
    model,
    epochs,
    seeds,
    image_sizes,
    ratio,
    pgd_steps,
    protected_threshold,
    weak_threshold,
    input_check,
    save_models,
    output,
    output_alias,
    device,
    quiet,
    as_json,
) -> None:
    """Play the scraper: train victims on the protected data and on clean data, and compare.

    For every attack, two models are trained the same way, one on PROTECTED (a folder or its
    manifest) and one on --clean-train, and tested on --test. The protection score
    PER = (acc_clean - acc_protected) / (acc_clean - chance) is 1 when the scraper is held at
    chance and 0 when the protection changed nothing; the verdict uses the worst PER.
    """
    from ..verify import Thresholds
    from ..verify_run import VerifyOptions

    output = merge_alias(output, output_alias, "--run-dir")
    names = tuple(s for s in (attack_names, suite) if s) or ("quick",)
    options = VerifyOptions(
        labels=labels,
        test_labels=test_labels,
        hacker_labels=hacker_labels,
        attacks=names,
        budget=budget,
        model=model,
        epochs=epochs,
        seeds=seeds,
        image_size=parse_sizes(image_sizes),
        device=device,
        thresholds=Thresholds(protected=protected_threshold, weak=weak_threshold),
        ratio=ratio,
        pgd_steps=pgd_steps,
        save_models=save_models,
        input_check=input_check,
    )
    run = run_verify(protected, clean_train, test_dir, options, output, quiet or as_json)
    report = run.report
    if as_json:
        print_json(report)
        return
    if not quiet:  # the warnings below go to stderr either way
        print_summary(run)
    for text in report["notes"]:
        if text in run.warnings:
            warn(text)
        else:
            note(text)
    if run.input_mismatches:
        shown = ", ".join(run.input_mismatches[:5])
        warn(
            f"{len(run.input_mismatches)} clean training files differ from the inputs the "
            f"manifest recorded (e.g. {shown}): the baseline may not be the protected images' "
            "originals"
        )


def print_summary(run) -> None:
    """The verdict table, the worst case and where the report is (stdout)."""
    report = run.report
    out_console.print(verify_table(report))
    if len(report.get("per_by_size", [])) > 1:
        out_console.print(size_table(report))
    thresholds = report["thresholds"]
    worst = report["worst_per"]
    out_console.print(
        f"worst case: {report['worst_attack']} (PER {worst if worst is None else round(worst, 2)}); "
        f"protected if worst PER >= {thresholds['protected']}, weak if >= {thresholds['weak']}; "
        f"report: {run.folder / 'report.md'}",
        highlight=False,
    )
    if run.model_paths:
        out_console.print(
            f"saved {len(run.model_paths)} models in {run.folder / 'models'}", highlight=False
        )


verify = click.command("verify")(verify_options(verify_command))
verify_alias = click.command("verify-unlearnability", help="Alias of `verify`.")(
    verify_options(verify_command)
)


COMMANDS = (verify, verify_alias)
