"""SHA-256 digests: of bytes, of a file (streamed), and of an ordered list of strings."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable

BLOCK_BYTES = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (constant memory); ``OSError`` if unreadable."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_strings(items: Iterable[str]) -> str:
    """Hex SHA-256 over ordered strings, each UTF-8 encoded and prefixed with its byte length as
    a big-endian uint64, so no choice of separator can make two different lists collide."""
    digest = hashlib.sha256()
    for item in items:
        raw = item.encode("utf-8")
        digest.update(struct.pack(">Q", len(raw)))
        digest.update(raw)
    return digest.hexdigest()
