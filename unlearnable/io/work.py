"""One chunk of files through the pipeline: read, hash, decode, batch, protect, encode, write.

:func:`process_chunk` is what an :mod:`executor <unlearnable.io.executors>` runs for each chunk
of :class:`Task` s; the :class:`WorkContext` (folders, protector, output options) is the same for
every chunk. Images of one chunk with equal sizes and equal plans (see :class:`Protector`) are
protected together as one ``(B, C, H, W)`` float tensor in [0, 1], at most
:data:`BATCH_PIXELS` pixels per batch. Every file gets a :class:`~.manifest.FileRecord`: ``ok``
with hashes, sizes, the plan, PSNR and SSIM (of the file as written, so a lossy format counts),
or ``error`` with the reason.

Memory: a batch needs about :data:`~unlearnable.io.memory.BYTES_PER_PIXEL` (100) bytes per
pixel at its peak, so batches are capped at :data:`BATCH_PIXELS`; a batch of a large image
(from :data:`GATED_PIXELS` on) waits for room in the run's shared
:class:`~unlearnable.io.memory.MemoryGate` when there is one (see :mod:`unlearnable.io.memory`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..imageops import to_uint8
from ..metrics import psnr, ssim
from .atomic import atomic_write_bytes
from .hashing import sha256_bytes
from .images import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    decode_pixels,
    encode_image,
    is_lossy,
    output_format,
)
from .manifest import FileRecord
from .memory import MemoryGate, batch_bytes

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


@dataclass(frozen=True)
class OutputOptions:
    """How protected files are written: ``format`` ``keep`` (each file's own), ``png``,
    ``jpeg`` or ``webp``; ``quality`` for JPEG/WebP (None: JPEG keeps the source's tables,
    WebP 90); ``strip_gps`` removes GPS from the EXIF; images above ``max_pixels`` are refused."""

    format: str = "keep"
    quality: int | None = None
    strip_gps: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    def to_json(self) -> dict[str, Any]:
        """What the manifest records (``max_pixels`` is a guard, not a protection parameter)."""
        return {"format": self.format, "quality": self.quality, "strip_gps": self.strip_gps}


DEFAULT_OUTPUT = OutputOptions()


@dataclass
class Task:
    """One input file: its relative path, label (id and name), an earlier ``ok`` record when
    resuming, and its cluster id (recorded in the manifest) when the method has clusters."""

    path: str
    label_id: int
    label: str
    previous: FileRecord | None = None
    cluster: int | None = None


@dataclass
class WorkContext:
    """What every chunk needs; sent once to each worker process."""

    input_dir: Path
    output_dir: Path
    protector: Protector
    options: OutputOptions
    output_names: dict[str, str] = field(default_factory=dict)
    memory: MemoryGate | None = None


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
        source = context.input_dir / task.path
        try:
            data = source.read_bytes()
        except OSError as exc:
            records.append(error_record(task, f"cannot read file: {exc.strerror or exc}"))
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
            with room:
                group_records, group_lossy = _protect_group(context, plan, batch)
            records.extend(group_records)
            lossy |= group_lossy
    return ChunkResult(records, lossy, resumed)


def lost_chunk(chunk: list[Task], message: str) -> ChunkResult:
    """The result of a chunk whose worker died: every file failed with ``message``."""
    return ChunkResult([error_record(task, message) for task in chunk], False, 0)


def _protect_group(
    context: WorkContext, plan: Hashable, items: list[_Decoded]
) -> tuple[list[FileRecord], bool]:
    pixels = np.stack([item.image.pixels for item in items])  # (B, H, W, C) uint8
    originals = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    label_ids = torch.tensor([item.task.label_id for item in items], dtype=torch.int64)
    protected = context.protector.apply(originals, label_ids, plan)
    protected_u8_hwc = to_uint8(protected).permute(0, 2, 3, 1).contiguous().numpy()
    del protected, pixels  # the float result is not needed any more (memory)
    plan_json = context.protector.describe_plan(plan)
    options = context.options

    records: list[FileRecord | None] = [None] * len(items)
    written: list[int] = []
    stored = protected_u8_hwc.copy()
    lossy = False
    for index, item in enumerate(items):
        task, image = item.task, item.image
        fmt = output_format(image.format, options.format)
        try:
            data = encode_image(
                protected_u8_hwc[index], image, fmt, options.quality, options.strip_gps
            )
        except (ImageDecodeError, OSError, ValueError) as exc:
            records[index] = error_record(task, f"cannot encode output: {exc}", item.input_sha256)
            continue
        if is_lossy(fmt, image):
            lossy = True
            # the metrics describe the file as written
            stored[index] = decode_pixels(data, stored.shape[3], (image.width, image.height))
        relative = context.output_names.get(task.path, task.path)
        try:
            atomic_write_bytes(context.output_dir / relative, data)
        except OSError as exc:
            records[index] = error_record(
                task, f"cannot write output: {exc.strerror or exc}", item.input_sha256
            )
            continue
        records[index] = FileRecord(
            path=task.path,
            status="ok",
            label=task.label,
            output_path=relative,
            input_sha256=item.input_sha256,
            output_sha256=sha256_bytes(data),
            width=image.width,
            height=image.height,
            input_bytes=item.input_bytes,
            output_bytes=len(data),
            params=plan_json,
            cluster=task.cluster,
        )
        written.append(index)
    if written:
        _add_quality(records, written, originals, stored)
    return [r for r in records if r is not None], lossy


def _add_quality(
    records: list[FileRecord | None],
    written: list[int],
    originals: torch.Tensor,
    stored: np.ndarray,
) -> None:
    """PSNR and SSIM of each written file against its original (``stored``: (B, H, W, C) uint8)."""
    if len(written) == len(records):  # all of them: no copies
        kept, final_u8 = originals, torch.from_numpy(stored).permute(0, 3, 1, 2)
    else:
        index_tensor = torch.tensor(written)
        kept = originals[index_tensor]
        final_u8 = torch.from_numpy(stored).permute(0, 3, 1, 2)[index_tensor]
    final = final_u8.float().div_(255.0)
    psnr_values = psnr(kept, final).tolist()
    ssim_values = ssim(kept, final).tolist()
    for position, index in enumerate(written):
        record = records[index]
        assert record is not None
        value = psnr_values[position]
        record.psnr = round(value, 3) if np.isfinite(value) else float("inf")
        record.ssim = round(ssim_values[position], 5)


def _still_valid(context: WorkContext, previous: FileRecord, input_sha256: str) -> bool:
    """A resumed record counts when the input is unchanged and its output file is intact."""
    if previous.input_sha256 != input_sha256 or previous.output_path is None:
        return False
    try:
        data = (context.output_dir / previous.output_path).read_bytes()
    except OSError:
        return False
    return sha256_bytes(data) == previous.output_sha256


def error_record(task: Task, message: str, digest: str | None = None) -> FileRecord:
    """An ``error`` record for ``task`` (``digest``: the input's SHA-256 when it was read)."""
    return FileRecord(
        path=task.path, status="error", label=task.label, input_sha256=digest, error=message
    )
