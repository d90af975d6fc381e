"""``unlearnable protect``: protect a folder of images into a separate output folder."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ..errors import EXIT_FAILURES, EXIT_INTERRUPTED, UsageError
from ..protect.cuda_method import STRENGTHS
from ..protect.methods import DEFAULT_METHOD, METHODS
from ..protect.uc_config import DEFAULT_CLUSTERS, DEFAULT_SURROGATE
from .common import err_console, load_key, note, progress_bars, warn
from .protect_options import (
    InputPath,
    OutputPath,
    _add_method_options,
    _engine,
    _methods_help,
    default_output_folder,
    method_config_from_options,
)
from .protect_report import report_protect_run, surrogate_warnings

DEFAULT_MAX_PIXELS = 100_000_000
"""= :data:`unlearnable.io.images.DEFAULT_MAX_PIXELS` (not imported: that loads Pillow)."""


@click.command()
@click.argument("input_dir", metavar="INPUT", type=InputPath())
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=OutputPath(),
    help="Output folder (default: INPUT-protected beside INPUT). Must not be inside INPUT. "
    "For shards and Parquet files also a URL (s3://bucket/out/), written through fsspec.",
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
    help="Output format; a lossy format at low quality may weaken the protection.",
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
    help="Processes protecting files, this one included (default: the number of cores).",
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
    output_dir: Path | str | None,
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
      unlearnable protect s3://bucket/shards -o s3://bucket/out --key secret.bin
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
    resolved_device = resolve_device(device)  # a bad --device is a usage error for every method
    if device != "auto" and not entry.uses_surrogate:
        note(
            f"--device is where a surrogate runs (--method uc, --labels clusters); method "
            f"{entry.name} protects on the CPU"
        )
    if fmt in ("jpeg", "webp"):
        warn(
            f"{fmt} output is lossy: a low quality may weaken the protection (JPEG with the "
            "source's tables and at quality 95 with 4:4:4 chroma kept it on CIFAR-10; see the "
            "README). PNG keeps the pixels exactly."
        )
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
        device=resolved_device if entry.uses_surrogate else None,
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

        sheet = write_preview(input_dir, run_result, preview)
        if sheet is not None:
            note(
                f"contact sheet: {sheet}; it shows originals, unprotected: leave it out of what "
                "you publish"
            )
    report_protect_run(run_result, quiet, as_json)
    if run_result.failed:
        raise click.exceptions.Exit(EXIT_FAILURES)


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


_add_method_options(protect)

COMMANDS = (protect,)
