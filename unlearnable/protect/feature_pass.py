"""Reading a folder for the surrogate: hash every file, embed every image, keep what UC needs.

Used by :func:`~unlearnable.protect.uc_pipeline.cluster_folder`. Images are decoded
(:func:`unlearnable.io.decode_image`), grey repeated to RGB, alpha dropped, centre-cropped and
resized (:func:`unlearnable.imageops.square_rgb`) to the surrogate's input size for the features
and to the perturbation resolution for the UC optimisation (kept as uint8, so a run that reads
the images again prepares exactly the same pixels). Decoding runs in :data:`DECODE_THREADS`
threads; the surrogate sees batches of ``batch_size`` images.

The images come from a folder (``source`` a :class:`~pathlib.Path`, ``files`` relative paths)
or from any :class:`ImageSource` (e.g. the records of WebDataset shards or Parquet files,
:class:`unlearnable.io.formats.source.RecordSource`, ``files`` their manifest paths).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..imageops import square_rgb, to_uint8
from ..io.hashing import sha256_bytes, sha256_file
from ..io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..io.runner import ProtectUsageError
from ..io.work import OUT_OF_MEMORY, read_image_file
from .surrogate import Surrogate

StageProgress = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)`` with stage ``reading``, ``features`` or ``perturbations``."""

KEEP_IMAGES_BYTES = 1 << 31
"""Prepared images are kept from the feature pass for the optimisation up to this many bytes;
above it, the images the optimisation needs are decoded again."""
DECODE_THREADS = 4


@runtime_checkable
class ImageSource(Protocol):
    """Where images come from when not from a folder: ``read(path) -> bytes`` (``OSError``
    when unreadable); thread-safe and picklable (Ray actors get a copy)."""

    def read(self, path: str) -> bytes: ...


Source = Path | ImageSource


def as_source(source: str | os.PathLike[str] | ImageSource) -> Source:
    """A folder as a :class:`~pathlib.Path`; an :class:`ImageSource` as it is."""
    return source if isinstance(source, ImageSource) else Path(source)


def read_image_bytes(source: Source, path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes of image ``path`` of ``source`` (``OSError`` when unreadable, or when a file
    is too large to hold an image of at most ``max_pixels``: :func:`~unlearnable.io.work.
    read_image_file`)."""
    if isinstance(source, Path):
        return read_image_file(source / path, max_pixels)
    return source.read(path)


def hash_files(
    source: Source, files: list[str], report: StageProgress
) -> tuple[list[str], list[str], dict[str, str]]:
    """SHA-256 of every readable file: (readable paths, digests, problems of the others)."""

    def digest(path: str) -> str | OSError:
        try:
            if isinstance(source, Path):
                return sha256_file(source / path)
            return sha256_bytes(source.read(path))
        except OSError as exc:
            return exc

    readable: list[str] = []
    digests: list[str] = []
    problems: dict[str, str] = {}
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for done, (path, result) in enumerate(
            zip(files, pool.map(digest, files), strict=True), start=1
        ):
            if isinstance(result, OSError):
                problems[path] = f"cannot read file: {result.strerror or result}"
            else:
                readable.append(path)
                digests.append(result)
            if done % 256 == 0 or done == len(files):
                report("reading", done, len(files))
    return readable, digests, problems


@dataclass
class _Prepared:
    path: str
    surrogate_input: Tensor | None = None  # (3, S_in, S_in) float
    training: Tensor | None = None  # (3, R, R) uint8
    error: str | None = None


def _prepare_file(
    source: Source, path: str, input_size: int, resolution: int | None, max_pixels: int
) -> _Prepared:
    try:
        decoded = decode_image(read_image_bytes(source, path, max_pixels), max_pixels)
    except OSError as exc:
        return _Prepared(path, error=f"cannot read file: {exc.strerror or exc}")
    except ImageDecodeError as exc:
        return _Prepared(path, error=str(exc))
    except MemoryError:
        return _Prepared(path, error=f"cannot decode the image: {OUT_OF_MEMORY}")
    item = _Prepared(path)
    if input_size:
        item.surrogate_input = square_rgb(decoded.pixels, input_size)
    if resolution:
        if resolution == input_size and item.surrogate_input is not None:
            item.training = to_uint8(item.surrogate_input)
        else:
            item.training = to_uint8(square_rgb(decoded.pixels, resolution))
    return item


def extract_folder_features(
    source: Source,
    files: list[str],
    model: Surrogate,
    resolution: int,
    max_pixels: int,
    batch_size: int,
    report: StageProgress,
) -> tuple[np.ndarray, Tensor | None, dict[str, str]]:
    """Features ``(N, D)`` float32 (NaN rows for undecodable files), the prepared uint8 images
    ``(N, 3, R, R)`` at ``resolution`` when they fit in :data:`KEEP_IMAGES_BYTES` (else None),
    and the decode problems (path -> message)."""
    count = len(files)
    keep = count * 3 * resolution * resolution <= KEEP_IMAGES_BYTES
    features = np.full((count, model.embed_dim), np.nan, dtype=np.float32)
    kept = torch.zeros(count, 3, resolution, resolution, dtype=torch.uint8) if keep else None
    problems: dict[str, str] = {}
    done = 0
    report("features", 0, count)
    with ThreadPoolExecutor(DECODE_THREADS) as pool, torch.no_grad():
        for start in range(0, count, batch_size):
            chunk = files[start : start + batch_size]
            items = list(
                pool.map(
                    lambda path: _prepare_file(
                        source, path, model.input_size, resolution if keep else None, max_pixels
                    ),
                    chunk,
                )
            )
            good = [i for i, item in enumerate(items) if item.error is None]
            for item in items:
                if item.error is not None:
                    problems[item.path] = item.error
            if good:
                batch = torch.stack([items[i].surrogate_input for i in good])  # type: ignore[misc]
                embedded = model.embed(batch.to(model.device)).cpu().numpy()
                rows = np.asarray(good, dtype=np.int64) + start
                features[rows] = embedded
                if kept is not None:
                    for i in good:
                        kept[start + i] = items[i].training  # type: ignore[assignment]
            done += len(chunk)
            report("features", done, count)
    return features, kept, problems


def decode_errors(source: Source, files: list[str], max_pixels: int) -> dict[str, str]:
    """The decode error of each file (files the feature cache marks as undecodable)."""
    problems: dict[str, str] = {}
    for path in files:
        item = _prepare_file(source, path, 0, None, max_pixels)
        problems[path] = item.error or "could not be decoded in an earlier run"
    return problems


def load_prepared(source: Source, files: list[str], resolution: int, max_pixels: int) -> Tensor:
    """uint8 ``(M, 3, R, R)``: the images again, prepared exactly as in the feature pass."""
    out = torch.zeros(len(files), 3, resolution, resolution, dtype=torch.uint8)
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        items = pool.map(lambda path: _prepare_file(source, path, 0, resolution, max_pixels), files)
        for index, item in enumerate(items):
            if item.training is None:
                raise ProtectUsageError(
                    f"{item.path} changed while protecting: {item.error or 'unreadable'}"
                )
            out[index] = item.training
    return out
