"""The ``unlearnable`` command line: thin wiring of options to the library, output with rich."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ._version import __version__
from .datasets import DEMO_CLASSES, LabelError, write_demo_folder
from .io.images import DEFAULT_MAX_PIXELS
from .protect import OutputOptions, ProtectRun, ProtectUsageError, protect_directory
from .protect.cuda import STRENGTHS
from .keys import KeyFileError, key_is_private, load_key_file, write_key_file

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2

err_console = Console(stderr=True)
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
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
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


def run(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return its exit code (for tests and scripts)."""
    try:
        main.main(args=argv, prog_name="unlearnable", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    return table



def output_options(format: str, quality: int | None, strip_gps: bool, max_pixels: int) -> OutputOptions:
    return OutputOptions(format=format, quality=quality, strip_gps=strip_gps, max_pixels=max_pixels)


@main.command()
@click.argument("input_dir", metavar="INPUT", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default: INPUT-protected beside INPUT). Must not be inside INPUT.")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Private key file (make one with `unlearnable keygen`).")
@click.option("--method", type=click.Choice(["cuda"]), default="cuda", show_default=True,
              help="Protection method.")
@click.option("--labels", default="auto", show_default=True,
              help="auto | folders | single | FILE.csv (rows: relative/path,label).")
@click.option("--strength", type=click.Choice(STRENGTHS), default="mid", show_default=True,
              help="CUDA strength preset; (kernel size, blur) scale with the image size.")
@click.option("--kernel-size", type=click.IntRange(1, 63), default=None,
              help="Expert: CUDA filter size k (odd), overrides the preset.")
@click.option("--blur", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Expert: CUDA blur parameter p_b in (0, 1], overrides the preset.")
@click.option("--format", "fmt", type=click.Choice(["keep", "png", "jpeg", "webp"]), default="keep",
              show_default=True, help="Output format; lossy formats weaken the protection.")
@click.option("--quality", type=click.IntRange(1, 100), default=None,
              help="JPEG/WebP quality (default: JPEG keeps the source's tables; WebP 90).")
@click.option("--strip-gps", is_flag=True, help="Remove GPS location from the EXIF of outputs.")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels (decompression-bomb guard).")
@click.option("--resume", is_flag=True, help="Continue a run in OUTPUT: skip files already done with the same key and parameters.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes for decoding/encoding (default: number of cores).")
@click.option("--preview", type=click.IntRange(0), default=0, help="Write a contact sheet of N files (original | protected | amplified difference).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def protect(input_dir: Path, output_dir: Path | None, key_path: Path, method: str, labels: str,
            strength: str, kernel_size: int | None, blur: float | None, fmt: str, quality: int | None,
            strip_gps: bool, max_pixels: int, resume: bool, workers: int | None, preview: int,
            quiet: bool, as_json: bool) -> None:
    """Protect the images in INPUT into a separate output folder.

    The input is never modified. The output mirrors INPUT's folder tree, keeps each file's
    format, size and metadata, and holds unlearnable-manifest.json. Exit code 0: all files
    protected; 1: some failed (listed); 2: usage error.
    """
    key = load_key_or_exit(key_path)
    if kernel_size is not None and kernel_size % 2 == 0:
        fail_usage(f"--kernel-size must be odd, got {kernel_size}")
    target = output_dir or input_dir.with_name(input_dir.resolve().name + "-protected")
    if fmt in ("jpeg", "webp"):
        err_console.print(f"[yellow]warning:[/] {fmt} output is lossy; re-encoding weakens the protection. "
                          "PNG keeps it intact.", highlight=False)
    try:
        with progress_bar("protecting", quiet or as_json) as update:
            run_result = protect_directory(
                input_dir, target, key, method=method, labels=labels, strength=strength,
                kernel_size=kernel_size, blur=blur,
                options=output_options(fmt, quality, strip_gps, max_pixels),
                resume=resume, workers=workers, progress=update,
            )
    except (ProtectUsageError, LabelError, ValueError) as exc:
        fail_usage(str(exc))
    if preview:
        from .io.preview import write_preview

        write_preview(input_dir, run_result, preview)
    report_protect_run(run_result, quiet, as_json)
    sys.exit(EXIT_FAILURES if run_result.failed else EXIT_OK)


def report_protect_run(run_result: ProtectRun, quiet: bool, as_json: bool) -> None:
    summary = run_result.manifest.summary
    if run_result.lossy_output:
        err_console.print("[yellow]warning:[/] some outputs were written in a lossy format (JPEG/WebP); "
                          "re-encoding weakens the protection. Use --format png to keep it intact.",
                          highlight=False)
    if as_json:
        print_json({"output": str(run_result.output_dir), "manifest": str(run_result.manifest_path),
                    "key_fingerprint": run_result.manifest.key_fingerprint, **summary,
                    "failures": [{"path": r.path, "error": r.error} for r in run_result.failed]})
        return
    for record in run_result.failed:
        err_console.print(f"[red]failed:[/] {record.path}: {record.error}", highlight=False)
    if quiet:
        return
    rate = summary.get("images_per_second")
    rows = [
        ("files", str(summary["files"])),
        ("protected", f"{summary['ok']}" + (f" ({summary['resumed']} from an earlier run)" if summary["resumed"] else "")),
        ("failed", str(summary["failed"])),
        ("mean PSNR", f"{summary['mean_psnr']:.2f} dB" if summary["mean_psnr"] is not None else "-"),
        ("mean SSIM", f"{summary['mean_ssim']:.4f}" if summary["mean_ssim"] is not None else "-"),
        ("time", f"{summary['seconds']:.1f} s" + (f" ({rate:.1f} images/s)" if rate else "")),
        ("key", run_result.manifest.key_fingerprint),
        ("output", str(run_result.output_dir)),
    ]
    out_console.print(summary_table("unlearnable protect", rows))


def fresh_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... whichever does not exist yet."""
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


@main.command()
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the demo (default: a new ./unlearnable-demo folder).")
@click.option("--per-class", type=click.IntRange(2), default=60, show_default=True,
              help="Training images per class of the built-in example.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(output_dir: Path | None, per_class: int, quiet: bool) -> None:
    """Run the main job on a built-in example: no downloads, no data to fetch.

    Makes a small labelled image set, a fresh key, and a protected copy, and says where
    everything is.
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
        run_result = protect_directory(clean_train, protected_train, key, labels="folders",
                                       workers=1, progress=update)
    summary = run_result.manifest.summary
    rows = [
        ("example", f"{count} training + {test_count} test images, {len(DEMO_CLASSES)} classes, 32x32 px"),
        ("clean images", str(clean_train)),
        ("key", f"{key_path} (fingerprint {key.fingerprint})"),
        ("protected copy", f"{protected_train} ({summary['ok']} files, mean PSNR {summary['mean_psnr']:.1f} dB)"),
        ("manifest", str(run_result.manifest_path)),
    ]
    out_console.print(summary_table("unlearnable demo", rows))
    if run_result.failed:
        sys.exit(EXIT_FAILURES)
