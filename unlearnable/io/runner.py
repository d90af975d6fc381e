"""The folder runner: files -> tensors -> protector -> files, with a manifest, safely.

Files flow ``input -> decode -> protector (batched tensors) -> encode -> atomic write``
(:mod:`unlearnable.io.work`); the manifest (:mod:`unlearnable.io.manifest`) records every file.
The input is never modified, a bad file is reported and skipped, a killed run can be resumed
(``resume``: files whose input and output still match their ``ok`` record are kept), and the
work runs on an :class:`~unlearnable.io.executors.Executor` (a process pool by default).

What to protect is a :class:`FolderJob`: the protector, each file's label, and what else the
manifest records. :func:`run_folder` knows nothing about protection methods; the methods
(:mod:`unlearnable.protect`) build the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .discover import Discovery, discover_images
from .executors import Executor, ProcessExecutor, SerialExecutor, default_workers
from .images import EXTENSION_FOR_FORMAT, output_format
from .manifest import MANIFEST_NAME, FileRecord, Manifest, ManifestError, read_manifest
from .work import (
    DEFAULT_OUTPUT,
    OutputOptions,
    Protector,
    Task,
    WorkContext,
    lost_chunk,
    process_chunk,
)

CHUNK_FILES = 64
CHUNK_BYTES = 16 * 1024 * 1024
CHECKPOINT_SECONDS = 5.0


class ProtectUsageError(UsageError):
    """The request cannot be carried out as given (paths, options); nothing was written."""


@dataclass
class FolderJob:
    """What :func:`run_folder` writes.

    ``labels`` maps relative paths (as :func:`~unlearnable.io.discover_images` gives them) to
    label names; ``classes`` lists the names (index = the class id given to the protector);
    ``label_mode`` is recorded in the manifest. ``problems`` (path -> message) are recorded as
    failed files. ``clusters`` (path -> cluster id) and ``manifest_extra`` (top-level manifest
    entries) are recorded as they are. ``run_files`` names top-level files the method wrote into
    the output folder before the images (its caches); they do not make the folder count as
    "not empty".
    """

    protector: Protector
    labels: dict[str, str]
    classes: list[str]
    label_mode: str
    problems: dict[str, str] = field(default_factory=dict)
    clusters: dict[str, int] | None = None
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    run_files: tuple[str, ...] = ()


@dataclass
class ProtectRun:
    """The outcome of :func:`run_folder`: the manifest plus where it is."""

    manifest: Manifest
    output_dir: Path
    manifest_path: Path
    lossy_output: bool

    @property
    def failed(self) -> list[FileRecord]:
        return [r for r in self.manifest.files if r.status == "error"]

    @property
    def succeeded(self) -> list[FileRecord]:
        return [r for r in self.manifest.files if r.status == "ok"]


def default_executor(workers: int | None = None) -> Executor:
    """A :class:`ProcessExecutor` with ``workers`` processes (default: the CPUs this process
    may use); :class:`SerialExecutor` for one."""
    workers = default_workers() if workers is None else workers
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)


def run_folder(
    input_dir: Path,
    output_dir: Path,
    job: FolderJob,
    *,
    key_fingerprint: str,
    options: OutputOptions = DEFAULT_OUTPUT,
    resume: bool = False,
    executor: Executor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ProtectRun:
    """Protect every labelled image of ``input_dir`` into ``output_dir`` as ``job`` says.

    ``key_fingerprint`` is recorded (never the key). ``executor`` runs the chunks of files
    (default: :func:`default_executor`). ``progress(done, total)`` follows the files. Returns a
    :class:`ProtectRun`; raises :class:`ProtectUsageError` before writing anything when the
    request is not valid (folders, a non-empty output without ``resume``, a resume with other
    settings).
    """
    check_folders(input_dir, output_dir)
    protector = job.protector
    manifest = Manifest(
        method=protector.method,
        parameters={**protector.parameters(), "output": options.to_json()},
        key_fingerprint=key_fingerprint,
        label_mode=job.label_mode,
        classes=list(job.classes),
        extra=dict(job.manifest_extra),
    )
    previous = _previous_records(output_dir, manifest, resume, job.run_files)
    class_index = {name: index for index, name in enumerate(job.classes)}
    clusters = job.clusters or {}
    tasks = [
        Task(path, class_index[label], label, previous.get(path), clusters.get(path))
        for path, label in sorted(job.labels.items())
    ]
    records: dict[str, FileRecord] = {
        path: FileRecord(path=path, status="error", error=message)
        for path, message in job.problems.items()
    }
    output_names, collisions = _output_names([t.path for t in tasks], options.format)
    for path, message in collisions.items():
        records[path] = FileRecord(path=path, status="error", label=job.labels[path], error=message)
    tasks = [t for t in tasks if t.path not in collisions]
    output_dir.mkdir(parents=True, exist_ok=True)
    context = WorkContext(input_dir, output_dir, protector, options, output_names)

    started = time.perf_counter()
    total = len(tasks)
    done = 0
    last_checkpoint = started
    checkpoint_every = CHECKPOINT_SECONDS
    lossy = False
    resumed = 0
    chunks = _chunks(input_dir, tasks)
    for result in (executor or default_executor()).run(process_chunk, context, chunks, lost_chunk):
        lossy |= result.lossy
        resumed += result.resumed
        for record in result.records:
            records[record.path] = record
        done += len(result.records)
        if progress is not None:
            progress(done, total)
        if time.perf_counter() - last_checkpoint > checkpoint_every:
            # A checkpoint lets a resume skip finished files after a crash; its cost grows with
            # the number of records, so checkpoints are spaced to take <= 5% of the run.
            write_started = time.perf_counter()
            manifest.files = _ordered(records)
            manifest.write(output_dir)
            last_checkpoint = time.perf_counter()
            checkpoint_every = max(CHECKPOINT_SECONDS, 20 * (last_checkpoint - write_started))
    seconds = time.perf_counter() - started

    manifest.files = _ordered(records)
    manifest.summary = _summary(manifest.files, seconds, resumed, lossy)
    manifest_path = manifest.write(output_dir)
    return ProtectRun(manifest, output_dir, manifest_path, lossy)


def check_folders(input_dir: Path, output_dir: Path) -> None:
    """Refuse an input that is not a folder, and an output equal to or inside the input."""
    if not input_dir.is_dir():
        raise ProtectUsageError(f"input folder not found: {input_dir}")
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or source in target.parents:
        raise ProtectUsageError(
            f"output folder {output_dir} is the input folder or inside it; choose a separate folder"
        )


def discover_and_check(input_dir: Path, output_dir: Path) -> Discovery:
    """Check the folders, then discover images (the output folder is never entered)."""
    check_folders(input_dir, output_dir)
    return discover_images(input_dir, exclude=output_dir if output_dir.exists() else None)


def check_output_folder(output_dir: Path, resume: bool, run_files: Collection[str] = ()) -> None:
    """Refuse a non-empty output folder without ``resume``, and one with files but no manifest
    with it. Top-level entries named in ``run_files`` (this run's own sidecar files) are ignored."""
    if not output_dir.exists():
        return
    occupied = any(entry.name not in run_files for entry in output_dir.iterdir())
    if not occupied:
        return
    if not resume:
        raise ProtectUsageError(
            f"output folder {output_dir} is not empty; use --resume to continue a run there, "
            "or choose another folder"
        )
    if not (output_dir / MANIFEST_NAME).exists():
        raise ProtectUsageError(
            f"--resume: {output_dir} has files but no {MANIFEST_NAME}; refusing to write there"
        )


def _previous_records(
    output_dir: Path, manifest: Manifest, resume: bool, run_files: Collection[str] = ()
) -> dict[str, FileRecord]:
    manifest_file = output_dir / MANIFEST_NAME
    check_output_folder(output_dir, resume, run_files)
    if not resume or not manifest_file.exists():
        return {}
    try:
        earlier = read_manifest(manifest_file)
    except ManifestError as exc:
        raise ProtectUsageError(f"--resume: {exc}") from None
    if not manifest.same_protection(earlier):
        raise ProtectUsageError(
            "--resume: the output folder was made with a different key, method or parameters; "
            "use the same ones, or another output folder"
        )
    return {r.path: r for r in earlier.files if r.status == "ok"}


def _output_names(paths: list[str], requested_format: str) -> tuple[dict[str, str], dict[str, str]]:
    """Output path per input path for formats known later, and collisions (path -> message)."""
    if requested_format == "keep":
        return {p: p for p in paths}, {}
    names: dict[str, str] = {}
    owner: dict[str, str] = {}
    collisions: dict[str, str] = {}
    suffix = EXTENSION_FOR_FORMAT[output_format("PNG", requested_format)]
    for path in paths:
        stem, dot, _ = path.rpartition(".")
        target = f"{stem if dot else path}{suffix}"
        if target.lower() in owner:
            collisions[path] = f"output name {target} is also the output of {owner[target.lower()]}"
            continue
        owner[target.lower()] = path
        names[path] = target
    return names, collisions


def _chunks(input_dir: Path, tasks: list[Task]) -> list[list[Task]]:
    """Consecutive tasks grouped into chunks of at most CHUNK_FILES files and CHUNK_BYTES."""
    chunks: list[list[Task]] = []
    current: list[Task] = []
    current_bytes = 0
    for task in tasks:
        try:
            size = (input_dir / task.path).stat().st_size
        except OSError:
            size = 0
        if current and (len(current) >= CHUNK_FILES or current_bytes + size > CHUNK_BYTES):
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(task)
        current_bytes += size
    if current:
        chunks.append(current)
    return chunks


def _ordered(records: dict[str, FileRecord]) -> list[FileRecord]:
    return [records[path] for path in sorted(records)]


def _summary(
    records: list[FileRecord], seconds: float, resumed: int, lossy: bool
) -> dict[str, Any]:
    ok = [r for r in records if r.status == "ok"]
    finite_psnr = [r.psnr for r in ok if r.psnr is not None and np.isfinite(r.psnr)]
    ssims = [r.ssim for r in ok if r.ssim is not None]
    processed = len(ok) - resumed
    return {
        "files": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "resumed": resumed,
        "mean_psnr": round(float(np.mean(finite_psnr)), 3) if finite_psnr else None,
        "mean_ssim": round(float(np.mean(ssims)), 5) if ssims else None,
        "seconds": round(seconds, 3),
        "images_per_second": round(processed / seconds, 2) if seconds > 0 else None,
        "lossy_output": lossy,
    }


__all__ = [
    "DEFAULT_OUTPUT",
    "FolderJob",
    "OutputOptions",
    "ProtectRun",
    "ProtectUsageError",
    "Protector",
    "check_folders",
    "check_output_folder",
    "default_executor",
    "discover_and_check",
    "run_folder",
]
