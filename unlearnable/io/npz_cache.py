"""Versioned ``.npz`` cache files: reused only when their version and identity fields match.

A cache file holds ``version`` (int64), identity fields (strings or ints that say what the
cache was computed from: a surrogate id, a digest of the input files, a key fingerprint, ...)
and data arrays. :func:`load_npz_cache` reads it with ``allow_pickle=False`` and returns the
data arrays only when the version and every identity field match; a missing, unreadable,
truncated or non-matching file gives ``None`` (never an exception), so the caller recomputes.
:func:`save_npz_cache` writes through :func:`~unlearnable.io.atomic.atomic_write_bytes`: a
reader never sees half a file.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from .atomic import atomic_write_bytes

Identity = Mapping[str, "str | int"]


def save_npz_cache(
    path: str | os.PathLike[str],
    version: int,
    identity: Identity,
    arrays: Mapping[str, np.ndarray],
) -> None:
    """Write ``arrays`` with ``version`` and the ``identity`` fields to ``path`` atomically."""
    names = ["version", *identity, *arrays]
    if len(set(names)) != len(names):
        raise ValueError(f"cache field names must be distinct, got {names}")
    fields: dict[str, np.ndarray] = {"version": np.array(version, dtype=np.int64)}
    for name, value in identity.items():
        is_int = isinstance(value, int)
        fields[name] = np.array(value, dtype=np.int64) if is_int else np.array(value)
    fields.update(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **fields)
    atomic_write_bytes(path, buffer.getvalue())


def load_npz_cache(
    path: str | os.PathLike[str], version: int, identity: Identity
) -> dict[str, np.ndarray] | None:
    """The data arrays of the cache at ``path`` (name -> array), or ``None`` when the file is
    missing or unreadable, or its version or any identity field differs."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != version:
                return None
            for name, wanted in identity.items():
                stored = int(data[name]) if isinstance(wanted, int) else str(data[name])
                if stored != wanted:
                    return None
            skip = {"version", *identity}
            return {name: np.asarray(data[name]) for name in data.files if name not in skip}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
