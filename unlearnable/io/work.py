"""One chunk of files through the pipeline: read, hash, decode, batch, protect, encode, write.

:func:`process_chunk` is what an :mod:`executor <unlearnable.io.executors>` runs for each chunk
of :class:`Task` s; the :class:`WorkContext` (folders, protector, output options) is the same for
every chunk. Images of one chunk with equal sizes and equal plans (see :class:`Protector`) are
protected together, at most :data:`BATCH_PIXELS` pixels per batch: as uint8 ``(B, H, W, C)``
pixels when the protector has ``apply_uint8``, else as one ``(B, C, H, W)`` float tensor in
[0, 1] rounded back to uint8 (:func:`protect_pixels`). Every file gets a
:class:`~.manifest.FileRecord`: ``ok`` with hashes, sizes, the plan, PSNR, SSIM and visual cost
(:func:`unlearnable.metrics.quality`, at viewing size, of the file as written, so a lossy
format counts), or ``error`` with the reason.

Visual-cost budget (``OutputOptions.max_visual_cost``): after a group is protected and encoded,
the files over the budget are protected again with ``protector.weaken(plan)`` (the next weaker
plan), and again, until they fit or ``weaken`` returns None; such a file is then written at the
weakest plan and flagged ``over_budget`` (it is not refused: the user sees it in the record and
the summary and can choose a lower budget or another method). Only the final version of a file
is written; its record holds the final plan, its cost and how many times it was weakened.

Memory: a batch needs about :data:`~unlearnable.io.memory.BYTES_PER_PIXEL` (100) bytes per
pixel at its peak, so batches are capped at :data:`BATCH_PIXELS`; a batch of a large image
(from :data:`GATED_PIXELS` on) waits for room in the run's shared
:class:`~unlearnable.io.memory.MemoryGate` when there is one (see :mod:`unlearnable.io.memory`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Hashable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import UsageError
from ..imageops import to_pixels
from ..metrics import METRICS_VERSION
from .atomic import atomic_write_bytes
from .hashing import sha256_bytes
from .images import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    encode_image,
    is_lossy,
    output_format,
)
from .manifest import FileRecord
from .measure import written_quality
from .memory import MemoryGate, batch_bytes
from .reading import read_image_file

# Images are protected in batches of at most this many pixels, which bounds a worker's memory
# (float copies, FFT buffers) to a few hundred MB for small images.
BATCH_PIXELS = 4_000_000
GATED_PIXELS = 1_000_000
"""Batches of at least this many pixels go through the run's memory gate."""


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

    # Optional: ``weaken(plan) -> plan | None``, the next weaker plan (None when there is none),
    # used when a file exceeds ``OutputOptions.max_visual_cost``. A protector without it is
    # never weakened: its files over the budget are flagged.
    # Optional: ``apply_uint8(pixels, label_ids, plan) -> np.ndarray``, uint8 ``(B, H, W, C)``
    # in and out (the layout of image files), which saves the float copies of large images;
    # without it, ``apply`` is used on ``pixels / 255`` (see :func:`protect_pixels`).


@dataclass(frozen=True)
class OutputOptions:
    """How protected files are written: ``format`` ``keep`` (each file's own), ``png``,
    ``jpeg`` or ``webp``; ``quality`` for JPEG/WebP (None: JPEG keeps the source's tables,
    WebP 90); ``strip_gps`` removes GPS from the EXIF; images above ``max_pixels`` are refused.

    ``max_visual_cost``: a budget for each file's visual cost (:mod:`unlearnable.visual_cost`,
    measured on the file as written; e.g. 0.05). A file over it is protected again with the
    protector's next weaker plan (its ``weaken``) until it fits; a file that does not fit at
    the weakest plan is written at that plan and flagged ``over_budget`` in its record and the
    summary. None (default): no budget."""

    format: str = "keep"
    quality: int | None = None
    strip_gps: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_visual_cost: float | None = None

    def __post_init__(self) -> None:
        budget = self.max_visual_cost
        if budget is not None and not 0 < budget <= 1:
            raise UsageError(f"max_visual_cost must be in (0, 1], got {budget}")

    def to_json(self) -> dict[str, Any]:
        """What the manifest records (``max_pixels`` is a guard, not a protection parameter;
        the budget is recorded when there is one, so a resume with another budget is refused)."""
        data: dict[str, Any] = {
            "format": self.format,
            "quality": self.quality,
            "strip_gps": self.strip_gps,
        }
        if self.max_visual_cost is not None:
            data["max_visual_cost"] = self.max_visual_cost
        return data


DEFAULT_OUTPUT = OutputOptions()


@dataclass
class Task:
    """One input file: its relative path, label (id and name), an earlier ``ok`` record when
    resuming, its cluster id (recorded in the manifest) when the method has clusters, and its
    output's relative path when that differs from ``path`` (another format's extension, a
    record of a container). Per-file data travels in the tasks, not in the workers' context:
    a worker's context is sent before the worker starts, and a large one made each worker's
    start wait for the one before."""

    path: str
    label_id: int
    label: str
    previous: FileRecord | None = None
    cluster: int | None = None
    output: str | None = None


@dataclass
class WorkContext:
    """What every chunk needs; sent once to each worker process."""

    input_dir: Path
    output_dir: Path
    protector: Protector
    options: OutputOptions
    memory: MemoryGate | None = None
    payloads: dict[str, bytes] | None = None
    """In-memory inputs by task path (the records of a shard or a Parquet file, or
    :func:`unlearnable.protect.batch.protect_batch`'s images); None: read the files."""
    outputs: dict[str, bytes] | None = None
    """When set, outputs are collected here by output name instead of written as files."""
    metrics_version: int = METRICS_VERSION
    """How the files' quality is measured (:mod:`unlearnable.metrics`; a resumed run keeps
    the version it started with)."""

    def read_input(self, path: str) -> bytes:
        """The input bytes of ``path`` (``OSError`` when unreadable, and with ``EFBIG`` when the
        file is larger than :func:`~.reading.input_byte_limit` allows: it is not read)."""
        if self.payloads is not None:
            return self.payloads[path]
        return read_image_file(os.path.join(self.input_dir, path), self.options.max_pixels)

    def write_output(self, relative: str, data: bytes) -> None:
        """Write (atomically) or collect an output (``OSError`` when it cannot be written)."""
        if self.outputs is not None:
            self.outputs[relative] = data
        else:
            atomic_write_bytes(os.path.join(self.output_dir, relative), data)


@dataclass
class ChunkResult:
    """The records of one chunk, whether a lossy format was written, and how many files an
    earlier run had already done (``resume``)."""

    records: list[FileRecord]
    lossy: bool
    resumed: int


@dataclass
class _Decoded:
    task: Task
    image: DecodedImage
    input_sha256: str
    input_bytes: int


def process_chunk(context: WorkContext, chunk: list[Task]) -> ChunkResult:
    """Protect one chunk of files (see the module docstring)."""
    records: list[FileRecord] = []
    resumed = 0
    decoded: list[_Decoded] = []
    for task in chunk:
        try:
            data = context.read_input(task.path)
        except OSError as exc:
            records.append(error_record(task, f"cannot read file: {exc.strerror or exc}"))
            continue
        except MemoryError:
            records.append(error_record(task, f"cannot read file: {OUT_OF_MEMORY}"))
            continue
        digest = sha256_bytes(data)
        if task.previous is not None and _still_valid(context, task.previous, digest):
            records.append(task.previous)
            resumed += 1
            continue
        try:
            image = decode_image(data, context.options.max_pixels)
        except ImageDecodeError as exc:
            records.append(error_record(task, str(exc), digest))
            continue
        except MemoryError:
            records.append(error_record(task, f"cannot decode the image: {OUT_OF_MEMORY}", digest))
            continue
        decoded.append(_Decoded(task, image, digest, len(data)))

    groups: dict[tuple, list[_Decoded]] = defaultdict(list)
    for item in decoded:
        plan = context.protector.plan(item.image.height, item.image.width)
        groups[(item.image.pixels.shape, plan)].append(item)
    lossy = False
    for (shape, plan), items in groups.items():
        per_batch = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
        for start in range(0, len(items), per_batch):
            batch = items[start : start + per_batch]
            pixels = len(batch) * shape[0] * shape[1]
            gate = context.memory
            room = (
                gate.hold(batch_bytes(pixels))
                if gate is not None and pixels >= GATED_PIXELS
                else nullcontext()
            )
            try:
                with room:
                    group_records, group_lossy = _protect_group(context, plan, batch)
            except MemoryError:
                message = f"cannot protect the image: {OUT_OF_MEMORY}"
                group_records = [error_record(i.task, message, i.input_sha256) for i in batch]
                group_lossy = False
            records.extend(group_records)
            lossy |= group_lossy
    return ChunkResult(records, lossy, resumed)


OUT_OF_MEMORY = (
    "out of memory; run again with --resume and fewer --workers (or a lower --max-pixels)"
)


def lost_chunk(chunk: list[Task], message: str) -> ChunkResult:
    """The result of a chunk whose worker died: every file failed with ``message``."""
    return ChunkResult([error_record(task, message) for task in chunk], False, 0)


@dataclass
class _Written:
    """One file's final protection: the encoded bytes (None after an encoding error, then
    ``error`` says why), its quality, the plan and how many times it was weakened."""

    data: bytes | None
    error: str | None = None
    psnr: float | None = None
    ssim: float | None = None
    visual_cost: float | None = None
    plan: Hashable = None
    weakened: int = 0
    over_budget: bool = False


def _protect_group(
    context: WorkContext, plan: Hashable, items: list[_Decoded]
) -> tuple[list[FileRecord], bool]:
    """Protect, encode and measure equally sized images with one plan, weakening the plan for
    the files over the budget (if any), then write every file and make its record."""
    if len(items) == 1:  # (B, H, W, C) uint8; a large image comes alone: no copy
        pixels = torch.from_numpy(items[0].image.pixels[None])
    else:
        pixels = torch.from_numpy(np.stack([item.image.pixels for item in items]))
    originals_u8 = pixels.permute(0, 3, 1, 2)  # a view: no copy
    label_ids = torch.tensor([item.task.label_id for item in items], dtype=torch.int64)
    budget = context.options.max_visual_cost
    weaken = getattr(context.protector, "weaken", None)
    final: dict[int, _Written] = {}
    pending = list(range(len(items)))
    steps = 0
    while pending:
        chosen = torch.tensor(pending) if len(pending) < len(items) else None
        batch = pixels if chosen is None else pixels[chosen]
        batch_u8 = originals_u8 if chosen is None else originals_u8[chosen]
        labels = label_ids if chosen is None else label_ids[chosen]
        attempt = _encode_and_measure(
            context, plan, [items[i] for i in pending], batch, batch_u8, labels
        )
        over = [
            index
            for index, result in zip(pending, attempt, strict=True)
            if budget is not None and result.data is not None and result.visual_cost > budget
        ]
        weaker = None
        if over and weaken is not None and steps < MAX_WEAKEN_STEPS:
            weaker = weaken(plan)
        for index, result in zip(pending, attempt, strict=True):
            if weaker is None or index not in over:
                result.plan, result.weakened = plan, steps
                result.over_budget = index in over
                final[index] = result
        if weaker is None:
            break
        pending, plan, steps = over, weaker, steps + 1
    del originals_u8, pixels
    return _write_group(context, items, final)


MAX_WEAKEN_STEPS = 32
"""A protector's ``weaken`` is asked at most this many times per file (a guard against a
``weaken`` that never returns None)."""


def protect_pixels(
    protector: Protector, pixels: torch.Tensor, label_ids: torch.Tensor, plan: Hashable
) -> np.ndarray:
    """``pixels`` uint8 ``(B, H, W, C)`` -> protected uint8 ``(B, H, W, C)``: the protector's
    ``apply_uint8`` when it has one (it works on 8-bit pixels directly), else its float
    ``apply`` on ``pixels / 255`` rounded back to uint8 (:func:`~unlearnable.imageops.to_pixels`)."""
    apply_uint8 = getattr(protector, "apply_uint8", None)
    if apply_uint8 is not None:
        return apply_uint8(pixels, label_ids, plan)
    originals = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    protected = protector.apply(originals, label_ids, plan)
    return to_pixels(protected, reuse=not _shares_memory(protected, originals))


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _encode_and_measure(
    context: WorkContext,
    plan: Hashable,
    items: list[_Decoded],
    pixels: torch.Tensor,
    originals_u8: torch.Tensor,
    label_ids: torch.Tensor,
) -> list[_Written]:
    """Protect ``pixels`` uint8 ``(B, H, W, C)`` with ``plan``, encode each image, and measure
    PSNR, SSIM and visual cost of the file as written (:func:`~.measure.written_quality`: a
    lossy output is read back, a lossless one is measured on the pixels themselves). The
    metrics compare uint8 images (``originals_u8``: the same images, ``(B, C, H, W)``), so no
    full-size float copy is made for them."""
    protected_u8 = protect_pixels(context.protector, pixels, label_ids, plan)  # (B, H, W, C)
    options = context.options
    results: list[_Written] = []
    lossy: list[bool] = []
    for index, item in enumerate(items):
        image = item.image
        fmt = output_format(image.format, options.format)
        try:
            data = encode_image(protected_u8[index], image, fmt, options.quality, options.strip_gps)
        except (ImageDecodeError, OSError, ValueError) as exc:
            results.append(_Written(None, f"cannot encode output: {exc}"))
        else:
            results.append(_Written(data))
        lossy.append(is_lossy(fmt, image))
    measured = [index for index, result in enumerate(results) if result.data is not None]
    if measured:
        kept = originals_u8
        if len(measured) < len(results):
            kept = kept[torch.tensor(measured)]
        scores = written_quality(
            kept,
            [protected_u8[index] for index in measured],
            [results[index].data for index in measured],  # type: ignore[misc]
            [lossy[index] for index in measured],
            context.metrics_version,
        )
        values = zip(
            scores.psnr.tolist(), scores.ssim.tolist(), scores.visual_cost.tolist(), strict=True
        )
        for index, (psnr_value, ssim_value, cost) in zip(measured, values, strict=True):
            result = results[index]
            result.psnr = round(psnr_value, 3) if np.isfinite(psnr_value) else float("inf")
            result.ssim = round(ssim_value, 5)
            result.visual_cost = round(cost, 5)
    return results


def _write_group(
    context: WorkContext, items: list[_Decoded], final: dict[int, _Written]
) -> tuple[list[FileRecord], bool]:
    """Write each file's final bytes atomically and make its record."""
    records: list[FileRecord] = []
    lossy = False
    for index, item in enumerate(items):
        task, image, result = item.task, item.image, final[index]
        if result.data is None:
            records.append(error_record(task, result.error or "", item.input_sha256))
            continue
        relative = task.output or task.path
        try:
            context.write_output(relative, result.data)
        except OSError as exc:
            records.append(
                error_record(task, f"cannot write output: {exc.strerror or exc}", item.input_sha256)
            )
            continue
        lossy |= is_lossy(output_format(image.format, context.options.format), image)
        records.append(
            FileRecord(
                path=task.path,
                status="ok",
                label=task.label,
                output_path=relative,
                input_sha256=item.input_sha256,
                output_sha256=sha256_bytes(result.data),
                width=image.width,
                height=image.height,
                input_bytes=item.input_bytes,
                output_bytes=len(result.data),
                params=context.protector.describe_plan(result.plan),
                psnr=result.psnr,
                ssim=result.ssim,
                visual_cost=result.visual_cost,
                weakened=result.weakened or None,
                over_budget=result.over_budget or None,
                cluster=task.cluster,
            )
        )
    return records, lossy


def _still_valid(context: WorkContext, previous: FileRecord, input_sha256: str) -> bool:
    """A resumed record counts when the input is unchanged and its output file is intact."""
    if previous.input_sha256 != input_sha256 or previous.output_path is None:
        return False
    try:
        data = (context.output_dir / previous.output_path).read_bytes()
    except OSError:
        return False
    return sha256_bytes(data) == previous.output_sha256


HUGE_PAGES_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def use_huge_pages() -> None:
    """Let torch back its large CPU tensors with transparent huge pages
    (``THP_MEM_ALLOC_ENABLE=1``) where the kernel hands them out on request (Linux, mode
    ``madvise``), unless the variable is already set. A fresh 72 MB float copy of a 6 MP photo
    then takes one page fault per 2 MB instead of one per 4 KB: the float path of a large
    photo is about 2x faster. Called before the workers are spawned (they inherit it); this
    process gets it too when torch has not yet made a large allocation. Outputs are
    unchanged."""
    if "THP_MEM_ALLOC_ENABLE" in os.environ:
        return
    try:
        with open(HUGE_PAGES_SETTING, encoding="ascii") as handle:
            mode = handle.read()
    except OSError:
        return
    if "[madvise]" in mode:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"


def error_record(task: Task, message: str, digest: str | None = None) -> FileRecord:
    """An ``error`` record for ``task`` (``digest``: the input's SHA-256 when it was read)."""
    return FileRecord(
        path=task.path, status="error", label=task.label, input_sha256=digest, error=message
    )
