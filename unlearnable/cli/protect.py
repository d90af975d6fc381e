"""``unlearnable protect``: protect a folder of images into a separate output folder."""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ..errors import EXIT_FAILURES, EXIT_INTERRUPTED, UsageError
from ..protect.cuda_method import STRENGTHS
from ..protect.methods import DEFAULT_METHOD, METHODS, Method
from ..protect.uc_config import DEFAULT_CLUSTERS, DEFAULT_SURROGATE
from .common import (
    err_console,
    load_key,
    out_console,
    print_json,
    progress_bars,
    summary_table,
    warn,
)

DEFAULT_MAX_PIXELS = 100_000_000
"""= :data:`unlearnable.io.images.DEFAULT_MAX_PIXELS` (not imported: that loads Pillow)."""


class InputPath(click.Path):
    """An existing local path, or a URL (``s3://...``: shards and Parquet files, read through
    fsspec) kept as text."""

    def __init__(self) -> None:
        super().__init__(exists=True, path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "://" in value:
            return value
        return super().convert(value, param, ctx)


def _methods_help() -> str:
    return " ".join(f"{name}: {METHODS.get(name).summary}." for name in METHODS.names())


@click.command()
@click.argument("input_dir", metavar="INPUT", type=InputPath())
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
    type=click.Choice(METHODS.names()),
    default=DEFAULT_METHOD,
    show_default=True,
    help=_methods_help(),
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
    help="Strength preset: photo scales blur and colour by 0.5/1/1.5; for cuda, (kernel size, "
    "blur) scale with the image size.",
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
    "--include-hidden",
    is_flag=True,
    help="Also protect hidden files and folders (names starting with '.'); by default they are "
    "reported as skipped.",
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
    "--max-visual-cost",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    metavar="X",
    help="Visual-cost budget per file (shift-tolerant 1 - SSIM; ~0.02-0.05 is just visible): "
    "files over it are protected again at lower strength; a file still over it at the "
    "weakest setting is written and flagged in the manifest and the summary.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images with more pixels (decompression-bomb guard). Protecting an image takes "
    "about 100 bytes per pixel (2.4 GB at 24 MP, 10 GB at 100 MP); large images take turns "
    "when the workers would need more than 3/4 of the free memory.",
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
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: a process pool on this machine; ray: Ray tasks (a local Ray instance, or the "
    'cluster at --ray-address). Needs pip install "unlearnable[ray]".',
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="--engine ray: the cluster to join (auto, ray://HOST:10001); default: start a local one.",
)
@click.option(
    "--input-format",
    type=click.Choice(["auto", "folder", "webdataset", "parquet"]),
    default="auto",
    show_default=True,
    help="What INPUT holds: a folder of images, WebDataset .tar shards, or .parquet files with "
    "image bytes (one file, or a folder of them); auto detects it.",
)
@click.option(
    "--image-column",
    default="image",
    show_default=True,
    help="Parquet: the column of image bytes (binary, or a struct with a bytes field).",
)
@click.option(
    "--label-column",
    default=None,
    help="Parquet: the label column [default: label when present, else one label for all].",
)
@click.option(
    "--wds-label",
    default=None,
    metavar="cls|json:FIELD|none",
    help="WebDataset: a sample's label is its .cls member, a field of its .json member, or none "
    "(one label) [default: cls when the shards have .cls members].",
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
    input_dir: Path | str,
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
    include_hidden: bool,
    allow_pickle: bool,
    fmt: str,
    quality: int | None,
    strip_gps: bool,
    max_visual_cost: float | None,
    max_pixels: int,
    resume: bool,
    workers: int | None,
    engine: str,
    ray_address: str | None,
    input_format: str,
    image_column: str,
    label_column: str | None,
    wds_label: str | None,
    preview: int,
    quiet: bool,
    as_json: bool,
    **method_options: object,
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

    \b
    Datasets: INPUT may also be WebDataset .tar shards or .parquet files (a folder of them,
    or one file); they come out under the same names, other members and columns unchanged:
      unlearnable protect ./shards --key secret.bin --engine ray
    """
    from ..io.formats import FormatOptions
    from ..protect import OutputOptions, RunOptions
    from ..protect.dataset import protect_dataset
    from ..protect.surrogate import SurrogateError
    from ..verify_run import resolve_device

    key = load_key(key_path)
    values = {
        "labels": labels,
        "strength": strength,
        "kernel_size": kernel_size,
        "blur": blur,
        "surrogate": surrogate,
        "clusters": num_clusters,
        "eps": eps,
        "uc_steps": uc_steps,
        **method_options,
    }
    config = method_config_from_options(METHODS.get(method), values)
    entry = METHODS.for_config(config)
    assert entry is not None  # from_options returns a registered config
    if output_dir is None and isinstance(input_dir, str):
        raise UsageError(f"INPUT {input_dir} is a URL: give the output folder with -o")
    target = output_dir or default_output_folder(input_dir)
    if fmt in ("jpeg", "webp"):
        warn(f"{fmt} output is lossy; re-encoding weakens the protection. PNG keeps it intact.")
    run = RunOptions(
        output=OutputOptions(
            format=fmt,
            quality=quality,
            strip_gps=strip_gps,
            max_pixels=max_pixels,
            max_visual_cost=max_visual_cost,
        ),
        resume=resume,
        workers=workers,
        executor=_engine(engine, ray_address, workers),
        device=resolve_device(device) if entry.uses_surrogate else None,
        allow_pickle=allow_pickle,
        include_hidden=include_hidden,
    )
    names = {
        "reading": "hashing files",
        "scanning": "reading shards",
        "features": "surrogate features",
        "perturbations": "optimising perturbations",
        "protecting": "protecting",
    }
    from ..io.runner import RunStorageError

    try:
        with (
            progress_bars(quiet or as_json, names) as bars,
            surrogate_warnings(),
            sigterm_as_interrupt(),
        ):
            run_result = protect_dataset(
                input_dir,
                target,
                key,
                config,
                run,
                FormatOptions(input_format, image_column, label_column, wds_label),
                progress=bars.counter("protecting"),
                stage_progress=bars.update,
            )
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: the files finished so far are kept in {target}; rerun the same "
            "command with --resume to continue",
            highlight=False,
        )
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except RunStorageError as exc:
        if exc.run is not None:
            report_protect_run(exc.run, quiet=True, as_json=as_json)
        raise
    except SurrogateError as exc:
        raise UsageError(
            f"{exc}\nTry --surrogate random to run without downloads (a weak protection, for "
            "trials), or pass local weights: --surrogate MODEL:/path/to/weights.safetensors."
        ) from None
    except UsageError:
        raise
    except ValueError as exc:  # parameter validation in the library, before any file is written
        raise UsageError(str(exc)) from None
    if preview and "input_format" in run_result.manifest.extra:
        warn("--preview works on folders of images; no preview written for shards or Parquet")
    elif preview:
        from ..io.preview import write_preview

        write_preview(input_dir, run_result, preview)
    report_protect_run(run_result, quiet, as_json)
    if run_result.failed:
        raise click.exceptions.Exit(EXIT_FAILURES)


def _engine(engine: str, address: str | None, workers: int | None):
    """The executor of ``--engine`` (None: the local process pool)."""
    if engine == "local":
        if address is not None:
            raise UsageError("--ray-address needs --engine ray")
        return None
    from ..engines.ray_engine import RayExecutor

    return RayExecutor(address=address, workers=workers)


def default_output_folder(input_dir: Path) -> Path:
    """``INPUT-protected`` beside INPUT (also for ``.``, ``./`` and ``..``)."""
    resolved = input_dir.resolve()
    if resolved.parent == resolved:
        raise UsageError(f"cannot put an output folder beside {resolved}; give -o OUTPUT")
    return resolved.parent / f"{resolved.name}-protected"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does (workers stopped, journal kept, exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def method_config_from_options(entry: Method, values: dict[str, object]):
    """The method config from the command's options (the entry's ``from_options``); a
    ``ValueError`` from a config's validation becomes a usage error."""
    try:
        return entry.config_from_options(values)
    except UsageError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _add_method_options(command: click.Command) -> None:
    """Add the command-line options that registered methods bring (:class:`MethodOption`)."""
    taken = {param.name for param in command.params}
    for name in METHODS.names():
        for option in METHODS.get(name).cli_options:
            if option.name in taken:
                continue
            taken.add(option.name)
            command.params.append(
                click.Option(
                    [option.flag],
                    option.name,
                    type=option.type,
                    default=None,
                    help=f"{name}: {option.help}" if option.help else None,
                    metavar=option.metavar,
                )
            )


@contextmanager
def surrogate_warnings():
    """Show a random-surrogate warning as one readable line (other warnings pass through)."""
    from ..protect.surrogate import WeakSurrogateWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WeakSurrogateWarning)
        try:
            yield
        finally:
            for item in caught:
                if issubclass(item.category, WeakSurrogateWarning):
                    warn(str(item.message))
                else:
                    warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def report_protect_run(run_result, quiet: bool, as_json: bool) -> None:
    from rich.markup import escape

    from ..io.manifest import display_name
    from ..protect.expectations import expect_for_run

    summary = run_result.manifest.summary
    expectation = expect_for_run(run_result.manifest.method, run_result.succeeded)
    budget = run_result.manifest.parameters.get("output", {}).get("max_visual_cost")
    if summary.get("over_budget"):
        warn(
            f"{summary['over_budget']} files are over the visual-cost budget {budget} even at "
            "the weakest setting; they were written at it and are flagged over_budget in the "
            "manifest"
        )
    clustering = run_result.manifest.extra.get("clustering")
    if run_result.lossy_output:
        warn(
            "some outputs were written in a lossy format (JPEG/WebP); "
            "re-encoding weakens the protection. Use --format png to keep it intact."
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
                "expectation": expectation.to_json() if expectation else None,
                "failures": [
                    {"path": display_name(r.path), "error": r.error} for r in run_result.failed
                ],
            }
        )
        return
    for record in run_result.failed:
        err_console.print(
            f"[red]failed:[/] {escape(display_name(record.path))}: {escape(record.error or '')}",
            highlight=False,
        )
    skipped = run_result.skipped
    if skipped:
        reasons: dict[str, int] = {}
        for record in skipped:
            kind = (record.reason or "skipped").split(";")[0].split(" (")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        detail = ", ".join(f"{count} {kind}" for kind, count in sorted(reasons.items()))
        err_console.print(
            f"[yellow]skipped:[/] {len(skipped)} files ({escape(detail)}); listed in the manifest",
            highlight=False,
        )
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
        ("skipped", str(summary.get("skipped", 0))),
        (
            "mean PSNR",
            f"{summary['mean_psnr']:.2f} dB" if summary["mean_psnr"] is not None else "-",
        ),
        ("mean SSIM", f"{summary['mean_ssim']:.4f}" if summary["mean_ssim"] is not None else "-"),
        ("visual cost", _visual_cost_text(summary, budget)),
        ("time", f"{summary['seconds']:.1f} s" + (f" ({rate:.1f} images/s)" if rate else "")),
        ("key", run_result.manifest.key_fingerprint),
        ("output", str(run_result.output_dir)),
    ]
    if clustering:
        rows[-2:-2] = clustering_rows(run_result.manifest.method, clustering)
    out_console.print(summary_table("unlearnable protect", rows))
    if expectation is not None:
        out_console.print(expectation.line(), highlight=False, soft_wrap=True)


def _visual_cost_text(summary: dict, budget: float | None) -> str:
    """``mean 0.012, max 0.031 (budget 0.05: 2 weakened, 1 over)`` for the summary table."""
    if summary.get("mean_visual_cost") is None:
        return "-"
    text = f"mean {summary['mean_visual_cost']:.3f}, max {summary['max_visual_cost']:.3f}"
    if budget is not None:
        text += (
            f" (budget {budget:g}: {summary.get('weakened', 0)} weakened, "
            f"{summary.get('over_budget', 0)} over)"
        )
    return text


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


_add_method_options(protect)

COMMANDS = (protect,)
