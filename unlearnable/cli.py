"""The ``unlearnable`` command line: thin wiring of options to the library, output with rich."""

from __future__ import annotations

import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ._version import __version__
from .datasets import DEMO_CLASSES, LabelError, write_demo_folder
from .io.images import DEFAULT_MAX_PIXELS
from .keys import KeyFileError, key_is_private, load_key_file, write_key_file
from .protect import OutputOptions, ProtectRun, ProtectUsageError, protect_directory
from .protect.api import METHODS
from .protect.clusters import UCConfig
from .protect.cuda import STRENGTHS
from .protect.surrogate import SurrogateError, WeakSurrogateWarning
from .protect.uc_pipeline import DEFAULT_CLUSTERS, DEFAULT_SURROGATE

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2

err_console = Console(stderr=True, soft_wrap=True)  # messages stay greppable, never re-wrapped
out_console = Console()


def fail_usage(message: str) -> None:
    """Print ``message`` and exit with the usage-error code (2)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(EXIT_USAGE)


@contextmanager
def progress_bar(description: str, quiet: bool):
    """A rich progress bar on stderr, or nothing when quiet or stderr is not a terminal.

    Yields a callback ``(done, total)``.
    """
    if quiet or not err_console.is_terminal:
        yield lambda done, total: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="unlearnable")
def main() -> None:
    """Protect image folders against unauthorised training, and verify that it works.

    \b
    Start here:
      unlearnable demo                          # the whole idea on a built-in example
      unlearnable keygen secret.bin             # make a private key
      unlearnable protect ./photos --key secret.bin
    """


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def keygen(path: Path) -> None:
    """Create a new private key file PATH (32 random bytes, mode 0600).

    Refuses to overwrite an existing file. Prints the key's fingerprint, never the key.
    Keep the key: the same key gives the same protection, and it is what makes it private.
    """
    try:
        key = write_key_file(path)
    except KeyFileError as exc:
        fail_usage(str(exc))
    out_console.print(f"wrote key {path} (fingerprint {key.fingerprint})", highlight=False)


def load_key_or_exit(path: Path):
    try:
        key = load_key_file(path)
    except KeyFileError as exc:
        fail_usage(str(exc))
    if not key_is_private(path):
        err_console.print(
            f"[yellow]warning:[/] key file {path} is readable by other users; `chmod 600 {path}`",
            highlight=False,
        )
    return key


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    return table


@main.command()
@click.argument(
    "input_dir", metavar="INPUT", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: INPUT-protected beside INPUT). Must not be inside INPUT.",
)
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file (make one with `unlearnable keygen`).",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="cuda",
    show_default=True,
    help="cuda: a key-derived blur filter per class. uc: Unlearnable Clusters, label-agnostic "
    "(one learned perturbation per cluster of surrogate features; no labels needed).",
)
@click.option(
    "--labels",
    default="auto",
    show_default=True,
    help="auto | folders | single | FILE.csv (rows: relative/path,label) | clusters (the "
    "surrogate's K clusters are the classes: label-agnostic CUDA). --method uc always uses "
    "clusters.",
)
@click.option(
    "--strength",
    type=click.Choice(STRENGTHS),
    default="mid",
    show_default=True,
    help="CUDA strength preset; (kernel size, blur) scale with the image size.",
)
@click.option(
    "--kernel-size",
    type=click.IntRange(1, 63),
    default=None,
    help="Expert: CUDA filter size k (odd), overrides the preset.",
)
@click.option(
    "--blur",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Expert: CUDA blur parameter p_b in (0, 1], overrides the preset.",
)
@click.option(
    "--surrogate",
    default=None,
    metavar="SPEC",
    help=f"Feature extractor for --method uc / --labels clusters (default {DEFAULT_SURROGATE}, "
    "downloaded on first use). MODEL:TAG (open_clip, e.g. RN50:openai), "
    "MODEL:/path/weights.safetensors, hf-hub:ORG/REPO, tv:NAME[:random|:/path] (torchvision), "
    "or random (offline trials and tests only: weak protection).",
)
@click.option(
    "--clusters",
    "num_clusters",
    type=click.IntRange(2),
    default=None,
    help=f"Number of clusters K for --method uc / --labels clusters [default: {DEFAULT_CLUSTERS}].",
)
@click.option(
    "--eps",
    type=click.FloatRange(0, 255, min_open=True),
    default=None,
    help="UC: L-inf budget in 1/255 units: no pixel moves by more than eps/255 "
    "[default: 16, as in the paper].",
)
@click.option(
    "--uc-steps",
    type=click.IntRange(0),
    default=None,
    help="UC: optimisation steps (each updates every cluster's perturbation once) [default: 100].",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where the surrogate runs: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N.",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Allow pickle-based surrogate checkpoints (.pt/.pth/.bin/.ckpt): only for files you trust.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["keep", "png", "jpeg", "webp"]),
    default="keep",
    show_default=True,
    help="Output format; lossy formats weaken the protection.",
)
@click.option(
    "--quality",
    type=click.IntRange(1, 100),
    default=None,
    help="JPEG/WebP quality (default: JPEG keeps the source's tables; WebP 90).",
)
@click.option("--strip-gps", is_flag=True, help="Remove GPS location from the EXIF of outputs.")
@click.option(
    "--max-pixels",
    type=click.IntRange(1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images with more pixels (decompression-bomb guard).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a run in OUTPUT: skip files already done with the same key and parameters.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Processes for decoding/encoding (default: number of cores).",
)
@click.option(
    "--preview",
    type=click.IntRange(0),
    default=0,
    help="Write a contact sheet of N files (original | protected | amplified difference).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def protect(
    input_dir: Path,
    output_dir: Path | None,
    key_path: Path,
    method: str,
    labels: str,
    strength: str,
    kernel_size: int | None,
    blur: float | None,
    surrogate: str | None,
    num_clusters: int | None,
    eps: float | None,
    uc_steps: int | None,
    device: str,
    allow_pickle: bool,
    fmt: str,
    quality: int | None,
    strip_gps: bool,
    max_pixels: int,
    resume: bool,
    workers: int | None,
    preview: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Protect the images in INPUT into a separate output folder.

    The input is never modified. The output mirrors INPUT's folder tree, keeps each file's
    format, size and metadata, and holds unlearnable-manifest.json. Exit code 0: all files
    protected; 1: some failed (listed); 2: usage error.

    \b
    Label-agnostic protection of an unlabelled folder (Unlearnable Clusters):
      unlearnable protect ./photos --key secret.bin --method uc --clusters 10 --eps 16
      unlearnable protect ./photos --key secret.bin --labels clusters   # CUDA on clusters
    Features, clusters and perturbations are cached in the output folder (--resume reuses them).
    """
    key = load_key_or_exit(key_path)
    if kernel_size is not None and kernel_size % 2 == 0:
        fail_usage(f"--kernel-size must be odd, got {kernel_size}")
    uses_clusters = method == "uc" or labels == "clusters"
    uc_config = protect_uc_config(method, eps, uc_steps)
    if not uses_clusters and (surrogate is not None or num_clusters is not None):
        fail_usage("--surrogate and --clusters need --method uc or --labels clusters")
    target = output_dir or input_dir.with_name(input_dir.resolve().name + "-protected")
    if fmt in ("jpeg", "webp"):
        err_console.print(
            f"[yellow]warning:[/] {fmt} output is lossy; re-encoding weakens the protection. "
            "PNG keeps it intact.",
            highlight=False,
        )
    try:
        with protect_progress(quiet or as_json) as (update, stage_update), surrogate_warnings():
            run_result = protect_directory(
                input_dir,
                target,
                key,
                method=method,
                labels=labels,
                strength=strength,
                kernel_size=kernel_size,
                blur=blur,
                surrogate=surrogate,
                clusters=num_clusters or DEFAULT_CLUSTERS,
                uc_config=uc_config,
                device=device_choice(device) if uses_clusters else None,
                allow_pickle=allow_pickle,
                options=OutputOptions(
                    format=fmt, quality=quality, strip_gps=strip_gps, max_pixels=max_pixels
                ),
                resume=resume,
                workers=workers,
                progress=update,
                stage_progress=stage_update,
            )
    except SurrogateError as exc:
        fail_usage(
            f"{exc}\nTry --surrogate random to run without downloads (a weak protection, for "
            "trials), or pass local weights: --surrogate MODEL:/path/to/weights.safetensors."
        )
    except (ProtectUsageError, LabelError, ValueError) as exc:
        fail_usage(str(exc))
    if preview:
        from .io.preview import write_preview

        write_preview(input_dir, run_result, preview)
    report_protect_run(run_result, quiet, as_json)
    sys.exit(EXIT_FAILURES if run_result.failed else EXIT_OK)


def protect_uc_config(method: str, eps: float | None, uc_steps: int | None) -> UCConfig | None:
    """The UC settings from ``--eps`` (1/255 units) and ``--uc-steps``; None for CUDA."""
    if method != "uc":
        if eps is not None or uc_steps is not None:
            fail_usage("--eps and --uc-steps are settings of --method uc")
        return None
    defaults = UCConfig()
    return UCConfig(
        eps=(eps if eps is not None else 16.0) / 255.0,
        steps=uc_steps if uc_steps is not None else defaults.steps,
    )


@contextmanager
def surrogate_warnings():
    """Show a random-surrogate warning as one readable line (other warnings pass through)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WeakSurrogateWarning)
        try:
            yield
        finally:
            for item in caught:
                if issubclass(item.category, WeakSurrogateWarning):
                    err_console.print(f"[yellow]warning:[/] {item.message}", highlight=False)
                else:
                    warnings.showwarning(item.message, item.category, item.filename, item.lineno)


@contextmanager
def protect_progress(quiet: bool):
    """Progress bars for ``protect``: yields ``(files_callback, stage_callback)``; one bar per
    clustering stage (reading, features, perturbations), then one for the files."""
    if quiet or not err_console.is_terminal:
        yield (lambda done, total: None), (lambda stage, done, total: None)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    names = {
        "reading": "hashing files",
        "features": "surrogate features",
        "perturbations": "optimising perturbations",
        "protecting": "protecting",
    }
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, object] = {}

        def stage_update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(names.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        def update(done: int, total: int) -> None:
            stage_update("protecting", done, total)

        yield update, stage_update


def report_protect_run(run_result: ProtectRun, quiet: bool, as_json: bool) -> None:
    summary = run_result.manifest.summary
    clustering = run_result.manifest.extra.get("clustering")
    if run_result.lossy_output:
        err_console.print(
            "[yellow]warning:[/] some outputs were written in a lossy format (JPEG/WebP); "
            "re-encoding weakens the protection. Use --format png to keep it intact.",
            highlight=False,
        )
    if as_json:
        print_json(
            {
                "output": str(run_result.output_dir),
                "manifest": str(run_result.manifest_path),
                "key_fingerprint": run_result.manifest.key_fingerprint,
                "method": run_result.manifest.method,
                **({"clustering": clustering} if clustering else {}),
                **summary,
                "failures": [{"path": r.path, "error": r.error} for r in run_result.failed],
            }
        )
        return
    for record in run_result.failed:
        err_console.print(f"[red]failed:[/] {record.path}: {record.error}", highlight=False)
    if clustering and clustering.get("uc"):
        err_console.print(
            f"[yellow]warning:[/] {clustering['state_file']} in the output folder holds the "
            "perturbations, which would let anyone remove them: keep it (it makes --resume "
            "fast) but do not publish it with the images",
            highlight=False,
        )
    if quiet:
        return
    rate = summary.get("images_per_second")
    rows = [
        ("files", str(summary["files"])),
        (
            "protected",
            f"{summary['ok']}"
            + (f" ({summary['resumed']} from an earlier run)" if summary["resumed"] else ""),
        ),
        ("failed", str(summary["failed"])),
        (
            "mean PSNR",
            f"{summary['mean_psnr']:.2f} dB" if summary["mean_psnr"] is not None else "-",
        ),
        ("mean SSIM", f"{summary['mean_ssim']:.4f}" if summary["mean_ssim"] is not None else "-"),
        ("time", f"{summary['seconds']:.1f} s" + (f" ({rate:.1f} images/s)" if rate else "")),
        ("key", run_result.manifest.key_fingerprint),
        ("output", str(run_result.output_dir)),
    ]
    if clustering:
        rows[-2:-2] = clustering_rows(run_result.manifest.method, clustering)
    out_console.print(summary_table("unlearnable protect", rows))


def clustering_rows(method: str, clustering: dict) -> list[tuple[str, str]]:
    """Summary rows for a run that used surrogate clusters (UC or cluster-CUDA)."""
    rate = clustering.get("feature_images_per_second")
    features = (
        "from the cache"
        if clustering.get("features_from_cache")
        else f"{clustering.get('feature_seconds', 0):.1f} s"
        + (f" ({rate:.1f} images/s)" if rate else "")
    )
    rows = [
        ("method", "Unlearnable Clusters" if method == "uc" else "CUDA on clusters"),
        ("surrogate", f"{clustering['surrogate']} ({clustering.get('surrogate_name', '')})"),
        (
            "clusters",
            f"{clustering['k']} (sizes {', '.join(map(str, clustering['cluster_sizes']))})",
        ),
        ("features", features),
    ]
    uc = clustering.get("uc")
    if uc:
        rows.append(
            (
                "perturbations",
                f"eps {uc['eps_255']:g}/255, {uc['config']['steps']} steps, "
                + (
                    "from the cache"
                    if clustering.get("state_from_cache")
                    else f"{uc['optimise_seconds']:.1f} s"
                ),
            )
        )
    rows.append(
        (
            "do not publish",
            f"{clustering['state_file']} and {clustering['feature_cache']} (run caches"
            + (": they hold the perturbations" if uc else "")
            + "); share only the images",
        )
    )
    return rows


def fresh_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... whichever does not exist yet."""
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


@main.command()
@click.option(
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the demo (default: a new ./unlearnable-demo folder).",
)
@click.option(
    "--per-class",
    type=click.IntRange(2),
    default=80,
    show_default=True,
    help="Training images per class of the built-in example.",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Training epochs of the verification victims.",
)
@click.option("--no-verify", is_flag=True, help="Only protect; skip the verification.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(
    output_dir: Path | None, per_class: int, epochs: int, no_verify: bool, quiet: bool
) -> None:
    """Run the main job on a built-in example: no downloads, no data to fetch.

    Makes a small labelled image set (synthetic shapes and textures), a fresh key and a
    protected copy, then plays the scraper: trains a small CNN on the clean and on the
    protected copy and prints how much the protection held (a minute or two on a laptop CPU).
    """
    folder = output_dir or fresh_folder(Path("unlearnable-demo"))
    if folder.exists() and any(folder.iterdir()):
        fail_usage(f"{folder} is not empty; choose a new folder")
    clean_train, clean_test = folder / "clean-train", folder / "clean-test"
    protected_train, key_path = folder / "protected-train", folder / "demo.key"
    count = write_demo_folder(clean_train, per_class, seed=0)
    test_count = write_demo_folder(clean_test, max(2, per_class // 3), seed=1)
    key = write_key_file(key_path)
    with progress_bar("protecting", quiet) as update:
        run_result = protect_directory(
            clean_train, protected_train, key, labels="folders", workers=1, progress=update
        )
    summary = run_result.manifest.summary
    from .io.preview import write_preview

    rows = [
        (
            "example",
            f"{count} training + {test_count} test images, {len(DEMO_CLASSES)} classes, 32x32 px",
        ),
        ("clean images", str(clean_train)),
        ("key", f"{key_path} (fingerprint {key.fingerprint})"),
        (
            "protected copy",
            f"{protected_train} ({summary['ok']} files, mean PSNR {summary['mean_psnr']:.1f} dB)",
        ),
        ("manifest", str(run_result.manifest_path)),
        ("preview", str(write_preview(clean_train, run_result, 4))),
    ]
    out_console.print(summary_table("unlearnable demo: protect", rows))
    if run_result.failed:
        sys.exit(EXIT_FAILURES)
    if no_verify:
        return
    out_console.print(
        "\nPlaying the scraper: training a small CNN on the clean and on the protected copy..."
    )
    report, run_dir = verify_folders(
        protected_train,
        clean_train,
        clean_test,
        attack_spec="erm",
        budget="quick",
        epochs=epochs,
        device="cpu",
        run_dir=folder / "verify-run",
        quiet=quiet,
    )
    out_console.print(verify_table(report))
    attack = report["attacks"][0]
    out_console.print(
        f"A model trained on the clean copy reaches {100 * attack['clean']['peak_mean']:.0f}% on new images; "
        f"trained on the protected copy it reaches {100 * attack['protected']['peak_mean']:.0f}% "
        f"(chance: {100 * attack['chance']:.0f}%). Report: {run_dir / 'report.md'}",
        highlight=False,
    )


# --------------------------------------------------------------------------- verify


def device_choice(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail_usage("--device cuda: no CUDA GPU is available")
    return device


def build_attacks(attack_spec: str, ratio: float | None, pgd_steps: int | None):
    """Attack objects for a ``--attacks``/``--suite`` spec with the per-attack options."""
    from .attacks.base import make_attack
    from .attacks.suites import resolve_attacks

    attacks = []
    for name in resolve_attacks(attack_spec):
        options = {}
        if name == "partial" and ratio is not None:
            options["ratio"] = ratio
        if name.startswith("at-") and pgd_steps is not None:
            options["steps"] = pgd_steps
        attacks.append(make_attack(name, **options))
    return attacks


@contextmanager
def verify_progress(quiet: bool):
    """A rich progress bar over all victims' epochs; yields a VerifyProgress callback."""
    if quiet or not err_console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("training victims", total=None)

        def update(event) -> None:
            stats = event.stats
            bar.update(
                task,
                completed=(event.run - 1) * event.num_epochs + event.epoch,
                total=event.num_runs * event.num_epochs,
                description=(
                    f"{event.attack} / {event.train_set} (seed {event.seed}) "
                    f"epoch {event.epoch}/{event.num_epochs} loss {stats.get('train_loss', 0):.3f} "
                    f"test acc {100 * stats.get('test_acc', 0):.1f}%"
                ),
            )

        yield update


def verify_table(report: dict) -> Table:
    table = Table(title=f"verdict: {report['verdict']}", title_justify="left")
    for column in (
        "attack",
        "clean peak",
        "clean last",
        "protected peak",
        "protected last",
        "chance",
        "PER peak",
        "PER last",
    ):
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


def verify_folders(
    protected: Path,
    clean_train: Path,
    test: Path,
    *,
    labels: str = "auto",
    test_labels: str = "auto",
    hacker_labels: str | None = None,
    attack_spec: str = "erm",
    budget: str = "quick",
    model: str | None = None,
    epochs: int | None = None,
    seeds: int = 1,
    image_size: int | None = None,
    device: str = "auto",
    thresholds: tuple[float, float] = (0.7, 0.3),
    ratio: float | None = None,
    pgd_steps: int | None = None,
    run_dir: Path | None = None,
    quiet: bool = False,
):
    """Load, verify and write the run folder; returns ``(report dict, run folder)``."""
    from dataclasses import replace

    from .attacks.training import get_budget
    from .report import write_run_folder
    from .verify import Thresholds, run_verification
    from .verify_inputs import VerifyInputError, load_verify_folders

    try:
        attacks = build_attacks(attack_spec, ratio, pgd_steps)
        chosen = get_budget(budget)
        config = replace(chosen.config, device=device_choice(device))
        if epochs is not None:
            config = replace(config, epochs=epochs)
        threshold = Thresholds(protected=thresholds[0], weak=thresholds[1])
        with progress_bar("loading images", quiet) as update:
            loaded = load_verify_folders(
                protected,
                clean_train,
                test,
                labels=labels,
                test_labels=test_labels,
                hacker_labels=hacker_labels,
                image_size=image_size,
                progress=update,
            )
    except (VerifyInputError, ValueError, KeyError) as exc:
        fail_usage(str(exc).strip('"'))
    victim = model or chosen.model
    try:
        from .models import check_victim_name

        check_victim_name(victim)
    except (KeyError, ValueError) as exc:
        fail_usage(str(exc).strip('"'))
    with verify_progress(quiet) as update:
        result = run_verification(
            loaded.data, attacks, victim, config, list(range(seeds)), threshold, progress=update
        )
    folder = run_dir or fresh_folder(
        Path("unlearnable-runs") / f"verify-{result.created[:19].replace(':', '').replace('-', '')}"
    )
    write_run_folder(
        result,
        folder,
        extra_config={
            "protected": str(protected),
            "clean_train": str(clean_train),
            "test": str(test),
            "labels": labels,
            "test_labels": test_labels,
            "hacker_labels": hacker_labels,
            "budget": budget,
            "image_size": loaded.image_size,
            "owner_labels": loaded.owner_label_mode,
        },
    )
    return result.to_json(), folder


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
            help="Owner labels of the training images: auto (manifest, else folders) | folders | single | FILE.csv.",
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
            help="Train as a scraper who labels differently: 'folders' (the subfolders of the clean "
            "train/test folders) or a CSV mapping owner label -> scraper label.",
        ),
        click.option(
            "--attacks",
            "attack_names",
            default=None,
            help="Comma-separated attacks and/or suites (default: the quick suite).",
        ),
        click.option(
            "--suite",
            type=click.Choice(["quick", "standard", "all"]),
            default=None,
            help="A named set of attacks; the report's headline is the worst case.",
        ),
        click.option(
            "--budget",
            type=click.Choice(["smoke", "quick", "standard", "paper"]),
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
            type=click.IntRange(8),
            default=None,
            help="Resize/crop images to S x S (default: follows the data).",
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
            "--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N."
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
            "--run-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Where to write the report (default: a new folder in ./unlearnable-runs).",
        ),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
        click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout."),
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
    image_size,
    ratio,
    pgd_steps,
    device,
    protected_threshold,
    weak_threshold,
    run_dir,
    quiet,
    as_json,
) -> None:
    """Play the scraper: train victims on the protected data and on clean data, and compare.

    For every attack, two models are trained the same way, one on PROTECTED (a folder or its
    manifest) and one on --clean-train, and tested on --test. The protection score
    PER = (acc_clean - acc_protected) / (acc_clean - chance) is 1 when the scraper is held at
    chance and 0 when the protection changed nothing; the verdict uses the worst PER.
    """
    spec = ",".join(s for s in (attack_names, suite) if s) or "quick"
    report, folder = verify_folders(
        protected,
        clean_train,
        test_dir,
        labels=labels,
        test_labels=test_labels,
        hacker_labels=hacker_labels,
        attack_spec=spec,
        budget=budget,
        model=model,
        epochs=epochs,
        seeds=seeds,
        image_size=image_size,
        device=device,
        thresholds=(protected_threshold, weak_threshold),
        ratio=ratio,
        pgd_steps=pgd_steps,
        run_dir=run_dir,
        quiet=quiet or as_json,
    )
    if as_json:
        print_json(report)
        return
    out_console.print(verify_table(report))
    thresholds = report["thresholds"]
    out_console.print(
        f"worst case: {report['worst_attack']} (PER {report['worst_per'] if report['worst_per'] is None else round(report['worst_per'], 2)}); "
        f"protected if worst PER >= {thresholds['protected']}, weak if >= {thresholds['weak']}; "
        f"report: {folder / 'report.md'}",
        highlight=False,
    )
    for note in report["notes"]:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)


main.command("verify")(verify_options(verify_command))
main.command("verify-unlearnability", help="Alias of `verify`.")(verify_options(verify_command))
