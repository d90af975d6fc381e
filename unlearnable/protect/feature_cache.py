"""A small on-disk cache of surrogate features, so a resumed or repeated UC run skips extraction.

The cache is one ``.npz`` file (read with ``allow_pickle=False``) holding:

* ``features``: ``(N, D)`` float32;
* ``surrogate``: the surrogate identity string (use :attr:`Surrogate.cache_id`, which covers the
  spec, the input size and the weights);
* ``ids_sha256``: SHA-256 over the ordered file ids, each encoded as UTF-8 and prefixed with its
  byte length as a big-endian uint64 (so no separator can be ambiguous);
* ``version``: the cache format version (1).

A file id is whatever identifies one input for the caller, e.g. ``"relative/path.jpg:<sha256 of
the input bytes>"``, so that an edited file invalidates the cache. :func:`load_feature_cache`
returns ``None`` for a missing, unreadable or non-matching cache; it never raises for those.
Writes are atomic: a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CACHE_VERSION = 1


def file_ids_digest(file_ids: Sequence[str]) -> str:
    """SHA-256 (hex) over the ordered ids, each length-prefixed (uint64 big-endian) UTF-8."""
    digest = hashlib.sha256()
    for file_id in file_ids:
        raw = file_id.encode("utf-8")
        digest.update(struct.pack(">Q", len(raw)))
        digest.update(raw)
    return digest.hexdigest()


def save_feature_cache(
    path: str | os.PathLike[str],
    features: np.ndarray,
    file_ids: Sequence[str],
    surrogate_spec: str,
) -> None:
    """Write ``features`` ``(N, D)`` for the ``N`` ordered ``file_ids`` atomically to ``path``."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(file_ids):
        raise ValueError(
            f"features must be (N, D) with N = len(file_ids) = {len(file_ids)}, "
            f"got {features.shape}"
        )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle,
                features=features,
                surrogate=np.array(surrogate_spec),
                ids_sha256=np.array(file_ids_digest(file_ids)),
                version=np.array(CACHE_VERSION, dtype=np.int64),
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def load_feature_cache(
    path: str | os.PathLike[str], file_ids: Sequence[str], surrogate_spec: str
) -> np.ndarray | None:
    """The cached ``(N, D)`` float32 features, or ``None`` when the cache is missing, unreadable,
    of another version, from another surrogate, or for other (or differently ordered) files."""
    source = Path(path)
    if not source.is_file():
        return None
    try:
        with np.load(source, allow_pickle=False) as data:
            if int(data["version"]) != CACHE_VERSION:
                return None
            if str(data["surrogate"]) != surrogate_spec:
                return None
            if str(data["ids_sha256"]) != file_ids_digest(file_ids):
                return None
            features = np.asarray(data["features"], dtype=np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if features.ndim != 2 or features.shape[0] != len(file_ids):
        return None
    return features
