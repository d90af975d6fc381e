"""The folder runner: files -> tensors -> protector -> files, with a manifest, safely.

Files flow ``input -> decode -> protector (batched tensors) -> encode -> atomic write``
(:mod:`unlearnable.io.work`); the manifest (:mod:`unlearnable.io.manifest`) records every file.
The input is never modified, a bad file is reported and skipped, and the work runs on an
:class:`~unlearnable.io.executors.Executor` (a process pool by default).

Crash safety: before the first output file is written, the run starts its journal
(:mod:`unlearnable.io.journal`), and every finished record is appended and fsynced as its chunk
comes back. So a run stopped at any moment (kill -9, Ctrl-C, SIGTERM, a full disk, a read-only
folder, a power cut) can be continued with ``resume``: files whose input and output still match
their ``ok`` record are kept, the others are done again, and the result (files and records) is
the same as that of an uninterrupted run. Temporary files of killed writes are removed on
resume. When the journal or the manifest cannot be written, :class:`RunStorageError` says so in
one message and carries the records so far. At the end the records are folded into the manifest
and the journal is removed.

What to protect is a :class:`FolderJob`: the protector, each file's label, and what else the
manifest records. :func:`run_folder` knows nothing about protection methods; the methods
(:mod:`unlearnable.protect`) build the job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EXIT_FAILURES, ProtectUsageError, UnlearnableError
from ..metrics import METRICS_VERSION
from .atomic import remove_stale_temporaries
from .discover import Discovery, discover_images
from .executors import Executor, ProcessExecutor, SerialExecutor, default_workers
from .images import EXTENSION_FOR_FORMAT, output_format
from .journal import Journal
from .manifest import (
    MANIFEST_NAME,
    FileRecord,
    Manifest,
    display_name,
    is_utf8,
)
from .memory import MemoryGate
from .resume import (
    check_output_folder,
    check_same_input,
    previous_records,
    resumed_metrics_version,
)
from .work import (
    DEFAULT_OUTPUT,
    OutputOptions,
    Protector,
    Task,
    WorkContext,
    lost_chunk,
    process_chunk,
    use_huge_pages,
)

CHUNK_FILES = 256
CHUNK_BYTES = 1024 * 1024
CHUNK_SPREAD = 2
"""A chunk holds at most 1 / (CHUNK_SPREAD * lanes) of the bytes still to be handed out."""


class RunStorageError(UnlearnableError):
    """The output folder stopped taking writes of the run's own records (journal, manifest):
    a full disk, a read-only or vanished folder. ``run`` holds the records so far (or None when
    nothing was started); what was written is kept and a resume continues it. Exit code 1."""

    exit_code = EXIT_FAILURES

    def __init__(self, message: str, run: ProtectRun | None = None) -> None:
        super().__init__(message)
        self.run = run


@dataclass
class FolderJob:
    """What :func:`run_folder` writes.

    ``labels`` maps relative paths (as :func:`~unlearnable.io.discover_images` gives them) to
    label names; ``classes`` lists the names (index = the class id given to the protector);
    ``label_mode`` is recorded in the manifest. ``problems`` (path -> message) are recorded as
    failed files, ``skipped`` (path -> reason; :attr:`Discovery.skipped
    <unlearnable.io.discover.Discovery.skipped>`) as skipped files (None: found again by
    walking the input). ``clusters`` (path -> cluster id) and ``manifest_extra`` (top-level manifest
    entries) are recorded as they are. ``run_files`` names top-level files the method wrote into
    the output folder before the images (its caches); they do not make the folder count as
    "not empty".
    """

    protector: Protector
    labels: dict[str, str]
    classes: list[str]
    label_mode: str
    problems: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] | None = None
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

    @property
    def skipped(self) -> list[FileRecord]:
        return [r for r in self.manifest.files if r.status == "skipped"]


def default_executor(workers: int | None = None) -> Executor:
    """A :class:`ProcessExecutor` with ``workers`` processes (default: the CPUs this process
    may use); :class:`SerialExecutor` for one."""
    workers = default_workers() if workers is None else workers
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)


def run_manifest(
    job: FolderJob, options: OutputOptions, key_fingerprint: str, **extra: Any
) -> Manifest:
    """The (still empty) manifest of a run of ``job``: its method, the protector's parameters
    with the output options, the key's fingerprint, labels and classes, the metrics version
    (:data:`~unlearnable.metrics.METRICS_VERSION`), and ``job``'s manifest extras plus
    ``extra``."""
    return Manifest(
        method=job.protector.method,
        parameters={**job.protector.parameters(), "output": options.to_json()},
        key_fingerprint=key_fingerprint,
        label_mode=job.label_mode,
        classes=list(job.classes),
        extra={"metrics_version": METRICS_VERSION, **extra, **job.manifest_extra},
    )


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
    (default: :func:`default_executor`); a :class:`ProcessExecutor` shares a
    :class:`~unlearnable.io.memory.MemoryGate`, so large images take turns when memory is short.
    ``progress(done, total)`` follows the files. Returns a :class:`ProtectRun`; raises
    :class:`ProtectUsageError` before writing anything when the request is not valid (folders,
    a non-empty output without ``resume``, a resume with other settings, a label that is not
    UTF-8 text), and :class:`RunStorageError` when the output folder stops taking the run's
    records (the run so far is kept for a resume). A ``KeyboardInterrupt`` stops the workers
    and leaves a resumable folder.
    """
    check_folders(input_dir, output_dir)
    _check_class_names(job.classes)
    protector = job.protector
    manifest = run_manifest(job, options, key_fingerprint)
    previous = previous_records(output_dir, manifest, resume, job.run_files)
    check_same_input(previous, [*job.labels, *job.problems], output_dir)
    manifest.extra["metrics_version"] = metrics_version = resumed_metrics_version(
        output_dir, resume
    )
    class_index = {name: index for index, name in enumerate(job.classes)}
    clusters = job.clusters or {}
    records: dict[str, FileRecord] = {}
    skipped = job.skipped
    if skipped is None:
        skipped = discover_images(input_dir, exclude=output_dir).skipped
    for path, reason in skipped.items():
        records[path] = FileRecord(path=path, status="skipped", reason=reason)
    for path, message in job.problems.items():
        records[path] = FileRecord(path=path, status="error", error=message)
    tasks = [
        Task(path, class_index[label], label, previous.get(path), clusters.get(path))
        for path, label in sorted(job.labels.items())
    ]
    output_names, collisions = _output_names([t.path for t in tasks], options.format)
    for path, message in collisions.items():
        records[path] = FileRecord(path=path, status="error", label=job.labels[path], error=message)
    tasks = [t for t in tasks if t.path not in collisions]
    for task in tasks:  # in the tasks, not the workers' context: see Task
        renamed = output_names[task.path]
        task.output = renamed if renamed != task.path else None
    journal = _start_journal(output_dir, manifest, previous.values())
    executor = executor or default_executor()
    memory = None
    if isinstance(executor, ProcessExecutor) and executor.workers > 1:
        memory = MemoryGate.for_workers(executor.workers)
    context = WorkContext(input_dir, output_dir, protector, options, memory=memory)
    context.metrics_version = metrics_version
    # the chunks are sized for the executor's processes (a Ray executor may not know its own)
    return run_and_record(
        executor,
        process_chunk,
        context,
        chunk_tasks(input_dir, tasks, lanes=getattr(executor, "workers", None) or 1),
        lost_chunk,
        RunBook(manifest, records, journal, output_dir),
        total=len(tasks),
        progress=progress,
    )


@dataclass
class RunBook:
    """What a run writes down: the ``manifest`` it will write, the ``records`` so far (by
    path; earlier runs', skipped and failed ones), the open ``journal`` and the
    ``output_dir``."""

    manifest: Manifest
    records: dict[str, FileRecord]
    journal: Journal
    output_dir: Path


def run_and_record(
    executor: Executor,
    function: Callable[[Any, Any], Any],
    context: Any,
    items: Iterable[Any],
    lost: Callable[[Any, str], Any],
    book: RunBook,
    *,
    total: int,
    progress: Callable[[int, int], None] | None = None,
) -> ProtectRun:
    """Run ``function(context, item)`` for every item on ``executor`` (``lost(item, message)`` for
    an item whose worker died), journal each result's records as it arrives, then fold every
    record into the manifest and write it: the part the folder runner and the record runner
    (:mod:`unlearnable.io.formats.run`) share. Each result has ``records``, ``lossy`` and
    ``resumed``; ``progress(done, total)`` follows the records. Raises
    :class:`RunStorageError` when the journal or the manifest cannot be written (what was
    journalled stays resumable); a ``KeyboardInterrupt`` stops the executor's workers."""
    manifest, records, journal = book.manifest, book.records, book.journal
    output_dir = book.output_dir
    started = time.perf_counter()
    done = resumed = 0
    lossy = False
    storage_problem: OSError | None = None
    texts: dict[str, str] = {}  # path -> its record's text, made once (journal and manifest)
    use_huge_pages()
    runs = executor.run(function, context, items, lost)
    try:
        for result in runs:
            lossy |= result.lossy
            resumed += result.resumed
            for record in result.records:
                records[record.path] = record
            try:
                made = journal.append(result.records)
            except OSError as exc:
                storage_problem = exc
                break
            texts.update(zip((r.path for r in result.records), made, strict=True))
            done += len(result.records)
            if progress is not None:
                progress(done, total)
    finally:
        close = getattr(runs, "close", None)
        if close is not None:
            close()  # stops the executor's workers when the loop ended early
        journal.close()
    seconds = time.perf_counter() - started
    manifest.files = _ordered(records)
    manifest.summary = _summary(manifest.files, seconds, resumed, lossy)
    run = ProtectRun(manifest, output_dir, output_dir / MANIFEST_NAME, lossy)
    if storage_problem is not None:
        raise RunStorageError(
            _storage_message("the run's journal", output_dir, storage_problem, run), run
        )
    try:
        manifest.write(output_dir, texts)
    except OSError as exc:
        raise RunStorageError(_storage_message(MANIFEST_NAME, output_dir, exc, run), run) from None
    journal.remove()
    return run


def _check_class_names(classes: list[str]) -> None:
    """Refuse class names that are not UTF-8 text (folder names in another encoding): a class's
    protection is derived from its name's text."""
    bad = [name for name in classes if not is_utf8(name)]
    if bad:
        raise ProtectUsageError(
            f"label {display_name(bad[0])!r} (bytes {os.fsencode(bad[0]).hex()}) is not valid "
            "UTF-8 text, e.g. a folder name in another encoding; a label's protection is derived "
            "from its text: rename it in UTF-8 (e.g. convmv -f latin1 -t utf8 -r --notest DIR)"
        )


def _start_journal(output_dir: Path, manifest: Manifest, previous) -> Journal:
    """Create the output folder, remove stale temporary files, and start the journal with the
    earlier run's records (:class:`RunStorageError` when the folder takes no writes)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)
        return Journal.start(output_dir, manifest, previous)
    except OSError as exc:
        raise RunStorageError(
            f"cannot write to the output folder {output_dir}: {exc.strerror or exc}; "
            "nothing was protected. Choose a writable folder with free space."
        ) from None


def _storage_message(what: str, output_dir: Path, exc: OSError, run: ProtectRun) -> str:
    done = len(run.succeeded)
    return (
        f"cannot write {what} in {output_dir}: {exc.strerror or exc}. The run stopped; the "
        f"{done} files protected so far are kept. Free space (or make the folder writable) and "
        "rerun the same command with --resume to continue."
    )


def check_folders(input_dir: Path, output_dir: Path) -> None:
    """Refuse an input that is not a folder, and an output equal to or inside the input."""
    if not input_dir.is_dir():
        raise ProtectUsageError(f"input folder not found: {input_dir}")
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or source in target.parents:
        raise ProtectUsageError(
            f"output folder {output_dir} is the input folder or inside it; choose a separate folder"
        )


def discover_and_check(
    input_dir: Path, output_dir: Path, include_hidden: bool = False
) -> Discovery:
    """Check the folders, then discover images (the output folder is never entered; hidden
    files are reported as skipped unless ``include_hidden``)."""
    check_folders(input_dir, output_dir)
    return discover_images(
        input_dir,
        exclude=output_dir if output_dir.exists() else None,
        include_hidden=include_hidden,
    )


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


def chunk_tasks(input_dir: Path, tasks: list[Task], lanes: int = 1) -> list[list[Task]]:
    """Consecutive tasks grouped into chunks of at most CHUNK_FILES files and CHUNK_BYTES,
    and (guided scheduling) at most the bytes still to come over ``CHUNK_SPREAD * lanes``,
    ``lanes`` being the processes that share the chunks: the work spreads over every lane and
    the last chunks are small, so no lane ends long after the others. A file larger than the
    limit makes a chunk of its own.

    Why 1 MB: a JPEG photo of that size is about 0.1 s of work, and a chunk's own costs (its
    hand-over, the journal's fsync) are a few milliseconds. (Chunks of 16 MB sent 40 photos
    of 1.2 MB out as 13 + 13 + 13 + 1 files: on 2 workers one did 26 files while the other
    waited.) Why 256 files: small files are protected and measured a chunk at a time, and
    each batch has a fixed cost (about 60 torch operations for the quality metrics alone);
    10,000 CIFAR-10 files in one process took 336-349 us of CPU per file in chunks of 256
    against 368-380 in chunks of 64 (512: 334-351, 1024: 346-382)."""
    root = os.fspath(input_dir)
    sizes = []
    for task in tasks:
        try:  # a string path: a Path per file cost more than the stat itself
            sizes.append(os.stat(os.path.join(root, task.path)).st_size)
        except OSError:
            sizes.append(0)
    remaining = sum(sizes)
    chunks: list[list[Task]] = []
    current: list[Task] = []
    current_bytes = limit = 0
    for task, size in zip(tasks, sizes, strict=True):
        if current and (len(current) >= CHUNK_FILES or current_bytes + size > limit):
            chunks.append(current)
            current, current_bytes = [], 0
        if not current:  # a new chunk: its limit from what is still to come
            limit = min(CHUNK_BYTES, remaining // (CHUNK_SPREAD * max(1, lanes)))
        current.append(task)
        current_bytes += size
        remaining -= size
    if current:
        chunks.append(current)
    return chunks


def _ordered(records: dict[str, FileRecord]) -> list[FileRecord]:
    return [records[path] for path in sorted(records)]


def _summary(
    records: list[FileRecord], seconds: float, resumed: int, lossy: bool
) -> dict[str, Any]:
    ok = [r for r in records if r.status == "ok"]
    skipped = sum(r.status == "skipped" for r in records)
    finite_psnr = [r.psnr for r in ok if r.psnr is not None and np.isfinite(r.psnr)]
    ssims = [r.ssim for r in ok if r.ssim is not None]
    costs = [r.visual_cost for r in ok if r.visual_cost is not None]
    processed = len(ok) - resumed
    return {
        "files": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok) - skipped,
        "skipped": skipped,
        "resumed": resumed,
        "mean_psnr": round(float(np.mean(finite_psnr)), 3) if finite_psnr else None,
        "mean_ssim": round(float(np.mean(ssims)), 5) if ssims else None,
        "mean_visual_cost": round(float(np.mean(costs)), 5) if costs else None,
        "max_visual_cost": round(float(np.max(costs)), 5) if costs else None,
        "weakened": sum(bool(r.weakened) for r in ok),
        "over_budget": sum(bool(r.over_budget) for r in ok),
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
    "RunStorageError",
    "check_folders",
    "check_output_folder",
    "default_executor",
    "discover_and_check",
    "run_folder",
]
