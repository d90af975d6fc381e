"""``unlearnable audit``: was this model trained on my protected images? A key-based p-value."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..errors import EXIT_FLAGGED
from .common import (
    device_option,
    json_option,
    load_key,
    note,
    out_console,
    output_option,
    progress_bars,
    quiet_option,
    warn,
)
from .model_options import check_output_folder, load_model_file, model_file_options

STATISTICS = ("auto", "labelled", "label-free")  # = unlearnable.audit.STATISTICS (tested)


def audit_table(report: dict) -> Table:
    """The verdict's statistics: observed value, null mean and spread, effect size, p-value."""
    table = Table(
        title=f"{'EVIDENCE' if report['flagged'] else 'NO EVIDENCE'} "
        f"(p = {report['p_value']:.4g}, alpha {report['alpha']})",
        title_justify="left",
    )
    for column in ("statistic", "observed", "null mean", "null std", "z", "p-value", ""):
        table.add_column(column, justify="left" if column == "statistic" else "right")
    for name in ("labelled", "label_free"):
        summary = report[name]
        if summary is None:
            continue
        used = name.replace("_", "-") == report["statistic"]
        table.add_row(
            name.replace("_", "-"),
            f"{summary['observed']:.4f}",
            f"{summary['null_mean']:.4f}",
            f"{summary['null_std']:.4f}",
            f"{summary['z']:.2f}",
            f"{summary['p_value']:.4g}",
            "verdict" if used else "info",
        )
    return table


@click.command("audit")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The key file that protected the images (never printed or written).",
)
@click.option(
    "--manifest",
    "manifest_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The protection's unlearnable-manifest.json (or the protected folder).",
)
@click.option(
    "--probe",
    "probe_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Clean probe images (not the protected ones), e.g. held-out photos of the classes.",
)
@click.option(
    "--probe-labels",
    default="auto",
    show_default=True,
    help="True classes of the probes: auto (subfolders if any) | folders | none | FILE.csv.",
)
@click.option(
    "--class-map",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV of owner_class,model_class rows when the model's class names differ.",
)
@click.option(
    "--statistic",
    type=click.Choice(STATISTICS),
    default="auto",
    show_default=True,
    help="Test statistic of the verdict: labelled (classes matched), label-free (scraper used "
    "other labels), auto (labelled when every class matches, label-free when none does).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.01,
    show_default=True,
    help="Significance level: exit 3 (evidence) when p <= alpha.",
)
@click.option(
    "--null-keys",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Other keys sampling the null distribution (smallest p-value 1/(N+1)).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Public seed of the null keys and of the probe subset (reproducible).",
)
@click.option(
    "--max-probes",
    type=click.IntRange(1),
    default=None,
    help="Use a seeded random subset of at most N probe images.",
)
@click.option(
    "--batch-size", type=click.IntRange(1), default=256, show_default=True, help="Images per batch."
)
@click.option(
    "--allow-other-key",
    is_flag=True,
    help="Test with a key whose fingerprint differs from the manifest's.",
)
@model_file_options
@output_option("Run folder for the report (default: a new folder in ./unlearnable-runs).")
@device_option("Where the model runs: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N.")
@quiet_option
@json_option
def audit(
    model_path,
    key_path,
    manifest_path,
    probe_dir,
    probe_labels,
    class_map,
    statistic,
    alpha,
    null_keys,
    seed,
    max_probes,
    batch_size,
    allow_other_key,
    model_file,
    output,
    device,
    quiet,
    as_json,
) -> None:
    """Test whether MODEL was trained on images protected with your key.

    Each class's mark of the key (for CUDA, its blur filter) is applied to the clean --probe
    images; a model trained on the protected images moves them into that class. The same is
    done with --null-keys other keys, and the p-value is your key's rank among them. Exit code
    0: no evidence at --alpha; 3: evidence. The key itself is never printed or written.
    """

    from ..audit import AuditConfig, audit_model, load_probes, verdict_text, write_audit_folder
    from ..io.manifest import read_manifest
    from ..run_folder import default_run_folder
    from ..verify_run import resolve_device

    quiet = quiet or as_json
    check_output_folder(output, probe_dir)
    key = load_key(key_path)
    config = AuditConfig(
        null_keys=null_keys,
        seed=seed,
        alpha=alpha,
        statistic=statistic,
        max_probes=max_probes,
        batch_size=batch_size,
        allow_other_key=allow_other_key,
        device=str(resolve_device(device)),
    )
    manifest = read_manifest(manifest_path)
    model = load_model_file(model_path, model_file, device)
    probes = load_probes(
        probe_dir, model.spec.input_size, probe_labels, max_images=max_probes, seed=seed
    )
    if probes.skipped and not quiet:
        warn(f"{len(probes.skipped)} probe files could not be read and were skipped")
    with progress_bars(quiet, {"keys": "marking probes (your key, then null keys)"}) as bars:
        result = audit_model(
            model,
            key,
            manifest,
            probes.images,
            probe_labels=probes.labels,
            class_map=class_map,
            config=config,
            progress=bars.counter("keys"),
        )
    if probes.skipped:
        result.notes.append(f"{len(probes.skipped)} unreadable probe files were skipped")
    folder = Path(output) if output is not None else default_run_folder("audit")
    write_audit_folder(
        result,
        folder,
        inputs={
            "model": str(model_path),
            "manifest": str(manifest_path),
            "probe": str(probe_dir),
            "key_file": str(key_path),
        },
    )
    report = result.to_json()
    report["run_folder"] = str(folder)
    if as_json:
        from ..run_folder import strict_json

        click.echo(strict_json(report), nl=False)  # non-finite numbers (z) as null
    else:
        if not quiet:
            out_console.print(audit_table(report))
        out_console.print(verdict_text(result), highlight=False)
        out_console.print(f"report: {folder / 'report.md'}", highlight=False)
        for text in result.notes:
            note(text)
    if result.flagged:
        raise click.exceptions.Exit(EXIT_FLAGGED)


COMMANDS = (audit,)
