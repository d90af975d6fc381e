"""A small on-disk cache of surrogate features, so a resumed or repeated UC run skips extraction.

The cache is one versioned ``.npz`` file (:mod:`unlearnable.io.npz_cache`, no pickle) holding:

* ``features``: ``(N, D)`` float32;
* ``surrogate``: the surrogate identity string (use :attr:`Surrogate.cache_id`, which covers the
  spec, the input size and the weights);
* ``ids_sha256``: SHA-256 over the ordered file ids, each encoded as UTF-8 and prefixed with its
  byte length as a big-endian uint64 (so no separator can be ambiguous);
* ``version``: the cache format version (1).

A file id is whatever identifies one input for the caller, e.g. ``"relative/path.jpg:<sha256 of
the input bytes>"``, so that an edited file invalidates the cache. :func:`load_feature_cache`
returns ``None`` for a missing, unreadable or non-matching cache; it never raises for those.
Writes are atomic (:func:`unlearnable.io.atomic.atomic_write_bytes`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..io.hashing import sha256_strings
from ..io.npz_cache import load_npz_cache, save_npz_cache

CACHE_VERSION = 1


def file_ids_digest(file_ids: Sequence[str]) -> str:
    """SHA-256 (hex) over the ordered ids, each length-prefixed (uint64 big-endian) UTF-8."""
    return sha256_strings(file_ids)


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
    identity = {"surrogate": surrogate_spec, "ids_sha256": file_ids_digest(file_ids)}
    save_npz_cache(path, CACHE_VERSION, identity, {"features": features})


def load_feature_cache(
    path: str | os.PathLike[str], file_ids: Sequence[str], surrogate_spec: str
) -> np.ndarray | None:
    """The cached ``(N, D)`` float32 features, or ``None`` when the cache is missing, unreadable,
    of another version, from another surrogate, or for other (or differently ordered) files."""
    identity = {"surrogate": surrogate_spec, "ids_sha256": file_ids_digest(file_ids)}
    arrays = load_npz_cache(path, CACHE_VERSION, identity)
    if arrays is None or "features" not in arrays:
        return None
    features = np.asarray(arrays["features"], dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(file_ids):
        return None
    return features
