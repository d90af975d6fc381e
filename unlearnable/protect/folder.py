"""Protect a folder of images into a separate output folder, safely and in parallel.

Files flow ``input -> decode -> protector (batched tensors) -> encode -> atomic write``; a
manifest records every file. The input is never modified, a bad file is reported and skipped,
a killed run can be resumed, and decoding/encoding run in ``workers`` processes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import UsageError
from ..imageops import to_uint8
from ..io.atomic import atomic_write_bytes
from ..io.discover import discover_images
from ..io.images import (
    DEFAULT_MAX_PIXELS,
    EXTENSION_FOR_FORMAT,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    decode_pixels,
    encode_image,
    is_lossy,
    output_format,
)
from ..io.manifest import MANIFEST_NAME, FileRecord, Manifest, ManifestError, read_manifest
from ..metrics import psnr, ssim

CHUNK_FILES = 64
CHUNK_BYTES = 16 * 1024 * 1024
# Images are protected in batches of at most this many pixels, which bounds a worker's memory
# (float copies, FFT buffers) to a few hundred MB whatever the image size.
BATCH_PIXELS = 4_000_000
CHECKPOINT_SECONDS = 5.0


class ProtectUsageError(UsageError):
    """The request cannot be carried out as given (paths, options); nothing was written."""


class Protector(Protocol):
    """A protection applied to batches of equally sized images (picklable: sent to workers)."""

    method: str

    def parameters(self) -> dict[str, Any]:
        """Method parameters for the manifest; two runs with equal parameters and key agree."""
        ...

    def plan(self, height: int, width: int) -> Hashable:
        """Per-image parameters (images with equal plans and sizes are batched together)."""
        ...

    def describe_plan(self, plan: Hashable) -> dict[str, Any]:
        """The plan as JSON for the file's manifest record."""
        ...

    def apply(self, images: torch.Tensor, label_ids: torch.Tensor, plan: Hashable) -> torch.Tensor:
        """``images (B, C, H, W)`` float in [0, 1], ``label_ids (B,)`` -> protected, same shape."""
        ...


@dataclass(frozen=True)
class OutputOptions:
    """How protected files are written."""

    format: str = "keep"
    quality: int | None = None
    strip_gps: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS


DEFAULT_OUTPUT = OutputOptions()


@dataclass
class ProtectRun:
    """The outcome of :func:`protect_folder`: the manifest plus where it is."""

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


@dataclass
class _Task:
    path: str
    label_id: int
    label: str
    previous: FileRecord | None = None
    cluster: int | None = None


@dataclass
class _WorkerSettings:
    input_dir: Path
    output_dir: Path
    protector: Protector
    options: OutputOptions
    output_names: dict[str, str] = field(default_factory=dict)


def check_folders(input_dir: Path, output_dir: Path) -> None:
    """Refuse an input that is not a folder, and an output equal to or inside the input."""
    if not input_dir.is_dir():
        raise ProtectUsageError(f"input folder not found: {input_dir}")
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or source in target.parents:
        raise ProtectUsageError(
            f"output folder {output_dir} is the input folder or inside it; choose a separate folder"
        )


def protect_folder(
    input_dir: Path,
    output_dir: Path,
    protector: Protector,
    labels: dict[str, str],
    classes: list[str],
    key_fingerprint: str,
    label_mode: str,
    label_problems: dict[str, str] | None = None,
    options: OutputOptions = DEFAULT_OUTPUT,
    resume: bool = False,
    workers: int = 1,
    clusters: dict[str, int] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    run_files: Collection[str] = (),
) -> ProtectRun:
    """Protect every labelled image of ``input_dir`` into ``output_dir``.

    ``labels`` maps relative paths (from :func:`unlearnable.io.discover_images`) to label names;
    ``classes`` lists the label names (index = class id given to the protector). Files in
    ``label_problems`` are recorded as errors. ``run_files`` names top-level files of
    ``output_dir`` that this run wrote before the images (e.g. the UC feature cache); they do not
    make the folder count as "not empty". Returns a :class:`ProtectRun`; raises
    :class:`ProtectUsageError` before writing anything when the request is not valid.
    """
    check_folders(input_dir, output_dir)
    manifest = Manifest(
        method=protector.method,
        parameters={**protector.parameters(), "output": _options_json(options)},
        key_fingerprint=key_fingerprint,
        label_mode=label_mode,
        classes=list(classes),
        extra=dict(extra_manifest or {}),
    )
    previous = _previous_records(output_dir, manifest, resume, run_files)
    class_index = {name: index for index, name in enumerate(classes)}
    tasks = [
        _Task(path, class_index[label], label, previous.get(path), (clusters or {}).get(path))
        for path, label in sorted(labels.items())
    ]
    records: dict[str, FileRecord] = {
        path: FileRecord(path=path, status="error", error=message)
        for path, message in (label_problems or {}).items()
    }
    output_names, collisions = _output_names([t.path for t in tasks], options.format)
    for path, message in collisions.items():
        records[path] = FileRecord(path=path, status="error", label=labels[path], error=message)
    tasks = [t for t in tasks if t.path not in collisions]
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = _WorkerSettings(input_dir, output_dir, protector, options, output_names)

    started = time.perf_counter()
    total = len(tasks)
    done = 0
    last_checkpoint = started
    checkpoint_every = CHECKPOINT_SECONDS
    lossy = False
    resumed = 0
    for result in _run_chunks(settings, _chunks(input_dir, tasks), workers):
        lossy |= result.lossy
        resumed += result.resumed
        for record in result.records:
            records[record.path] = record
        done += len(result.records)
        if progress is not None:
            progress(done, total)
        if time.perf_counter() - last_checkpoint > checkpoint_every:
            # A checkpoint lets --resume skip finished files after a crash; its cost grows with
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


def _options_json(options: OutputOptions) -> dict[str, Any]:
    return {"format": options.format, "quality": options.quality, "strip_gps": options.strip_gps}


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


def _chunks(input_dir: Path, tasks: list[_Task]) -> list[list[_Task]]:
    chunks: list[list[_Task]] = []
    current: list[_Task] = []
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


def _run_chunks(settings: _WorkerSettings, chunks: list[list[_Task]], workers: int):
    """Yield ``(records, any_lossy)`` per chunk, in-process or in a process pool."""
    workers = max(1, min(workers, len(chunks)))
    if workers == 1:
        for chunk in chunks:
            yield _process_chunk(settings, chunk)
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(settings,)
    ) as pool:
        futures = {pool.submit(_process_chunk_in_worker, chunk): chunk for chunk in chunks}
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                # A worker died (most often: out of memory). Its files, and those it could not
                # start, are reported as failed; a --resume with fewer --workers redoes them.
                message = "a worker process died (out of memory?); rerun with --resume and fewer --workers"
                yield _ChunkResult([_error(task, message) for task in futures[future]], False, 0)


_WORKER_SETTINGS: _WorkerSettings | None = None


def _init_worker(settings: _WorkerSettings) -> None:
    global _WORKER_SETTINGS
    torch.set_num_threads(1)
    _WORKER_SETTINGS = settings


def _process_chunk_in_worker(chunk: list[_Task]) -> _ChunkResult:
    assert _WORKER_SETTINGS is not None
    return _process_chunk(_WORKER_SETTINGS, chunk)


@dataclass
class _Decoded:
    task: _Task
    image: DecodedImage
    input_sha256: str
    input_bytes: int


@dataclass
class _ChunkResult:
    records: list[FileRecord]
    lossy: bool
    resumed: int


def _process_chunk(settings: _WorkerSettings, chunk: list[_Task]) -> _ChunkResult:
    """Protect one chunk of files: their records, whether a lossy format was written, and how
    many were already done by an earlier run (``--resume``)."""
    records: list[FileRecord] = []
    resumed = 0
    decoded: list[_Decoded] = []
    for task in chunk:
        source = settings.input_dir / task.path
        try:
            data = source.read_bytes()
        except OSError as exc:
            records.append(_error(task, f"cannot read file: {exc.strerror or exc}"))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if task.previous is not None and _still_valid(settings, task.previous, digest):
            records.append(task.previous)
            resumed += 1
            continue
        try:
            image = decode_image(data, settings.options.max_pixels)
        except ImageDecodeError as exc:
            records.append(_error(task, str(exc), digest))
            continue
        decoded.append(_Decoded(task, image, digest, len(data)))

    groups: dict[tuple, list[_Decoded]] = defaultdict(list)
    for item in decoded:
        plan = settings.protector.plan(item.image.height, item.image.width)
        groups[(item.image.pixels.shape, plan)].append(item)
    lossy = False
    for (shape, plan), items in groups.items():
        per_batch = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
        for start in range(0, len(items), per_batch):
            group_records, group_lossy = _protect_group(
                settings, plan, items[start : start + per_batch]
            )
            records.extend(group_records)
            lossy |= group_lossy
    return _ChunkResult(records, lossy, resumed)


def _protect_group(
    settings: _WorkerSettings, plan: Hashable, items: list[_Decoded]
) -> tuple[list[FileRecord], bool]:
    pixels = np.stack([item.image.pixels for item in items])  # (B, H, W, C) uint8
    originals = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    label_ids = torch.tensor([item.task.label_id for item in items], dtype=torch.int64)
    protected = settings.protector.apply(originals, label_ids, plan)
    protected_u8 = to_uint8(protected)
    protected_u8_hwc = protected_u8.permute(0, 2, 3, 1).contiguous().numpy()
    plan_json = settings.protector.describe_plan(plan)

    records: list[FileRecord | None] = [None] * len(items)
    written: list[int] = []
    stored = protected_u8_hwc.copy()
    lossy = False
    for index, item in enumerate(items):
        task, image = item.task, item.image
        fmt = output_format(image.format, settings.options.format)
        try:
            data = encode_image(
                protected_u8_hwc[index],
                image,
                fmt,
                settings.options.quality,
                settings.options.strip_gps,
            )
        except (ImageDecodeError, OSError, ValueError) as exc:
            records[index] = _error(task, f"cannot encode output: {exc}", item.input_sha256)
            continue
        if is_lossy(fmt, image):
            lossy = True
            stored[index] = decode_pixels(
                data, stored.shape[3]
            )  # metrics describe the file as written
        relative = settings.output_names.get(task.path, task.path)
        try:
            atomic_write_bytes(settings.output_dir / relative, data)
        except OSError as exc:
            records[index] = _error(
                task, f"cannot write output: {exc.strerror or exc}", item.input_sha256
            )
            continue
        records[index] = FileRecord(
            path=task.path,
            status="ok",
            label=task.label,
            output_path=relative,
            input_sha256=item.input_sha256,
            output_sha256=hashlib.sha256(data).hexdigest(),
            width=image.width,
            height=image.height,
            input_bytes=item.input_bytes,
            output_bytes=len(data),
            params=plan_json,
            cluster=task.cluster,
        )
        written.append(index)
    if written:
        index_tensor = torch.tensor(written)
        final = torch.from_numpy(stored).permute(0, 3, 1, 2)[index_tensor].float().div_(255.0)
        psnr_values = psnr(originals[index_tensor], final).tolist()
        ssim_values = ssim(originals[index_tensor], final).tolist()
        for position, index in enumerate(written):
            record = records[index]
            assert record is not None
            record.psnr = (
                round(psnr_values[position], 3)
                if np.isfinite(psnr_values[position])
                else float("inf")
            )
            record.ssim = round(ssim_values[position], 5)
    return [r for r in records if r is not None], lossy


def _still_valid(settings: _WorkerSettings, previous: FileRecord, input_sha256: str) -> bool:
    """A resumed record counts when the input is unchanged and its output file is intact."""
    if previous.input_sha256 != input_sha256 or previous.output_path is None:
        return False
    try:
        data = (settings.output_dir / previous.output_path).read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == previous.output_sha256


def _error(task: _Task, message: str, digest: str | None = None) -> FileRecord:
    return FileRecord(
        path=task.path, status="error", label=task.label, input_sha256=digest, error=message
    )


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


def discover_and_check(input_dir: Path, output_dir: Path):
    """Check the folders, then discover images (the output folder is never entered)."""
    check_folders(input_dir, output_dir)
    return discover_images(input_dir, exclude=output_dir if output_dir.exists() else None)


def default_workers() -> int:
    return max(
        1,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )
