"""Key files and the derivation of every key-dependent random value.

A key file holds exactly 32 random bytes (``unlearnable keygen``), created with mode 0600 and
never overwritten. The key itself is never printed, logged or written anywhere else; people and
manifests see its *fingerprint*.

Derivation (version 1), documented so that another implementation can reproduce it bit for bit:

* ``fingerprint(key)`` = the first 8 bytes of ``SHA-256(b"unlearnable/fingerprint/v1\\x00" || key)``,
  as 16 lowercase hex digits in groups of four joined by ``-`` (e.g. ``3f2a-91bc-07de-55a1``).
* ``key_stream(key, context)``: block ``i`` (i = 0, 1, ...) is
  ``HMAC-SHA256(key, b"unlearnable/v1\\x00" || utf8(context) || b"\\x00" || uint32_be(i))``;
  the stream is the concatenation of the blocks.
* ``key_uniforms(key, context, n)``: the stream cut into ``n`` 8-byte big-endian unsigned integers
  ``u``; each value is ``(u >> 11) * 2**-53``, a float64 in [0, 1).
* ``key_seed(key, context)``: the first 8 bytes of the stream, big-endian, with the top bit
  cleared (a non-negative int64), used to seed a dedicated ``numpy.random.Generator(PCG64(seed))``
  or ``torch.Generator`` where bit-exactness across library versions matters less (optimisation
  noise). Values that define a protection (CUDA filters) come from ``key_uniforms`` directly, so
  they do not depend on numpy's or torch's generators at all.

Context strings name the method, its version and the item, e.g. ``cuda/v1/filter/k=3/label=cat``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

KEY_BYTES = 32
_STREAM_PREFIX = b"unlearnable/v1\x00"
_FINGERPRINT_PREFIX = b"unlearnable/fingerprint/v1\x00"


class KeyFileError(InputError):
    """A key file is missing, unreadable, malformed, or would be overwritten."""


@dataclass(frozen=True)
class SecretKey:
    """32 secret bytes. ``repr`` and ``str`` show only the fingerprint, never the key."""

    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != KEY_BYTES:
            raise KeyFileError(f"a key is exactly {KEY_BYTES} bytes, got {len(self.material)}")

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(_FINGERPRINT_PREFIX + self.material).hexdigest()[:16]
        return "-".join(digest[i : i + 4] for i in range(0, 16, 4))

    def __repr__(self) -> str:
        return f"SecretKey(fingerprint={self.fingerprint})"

    __str__ = __repr__

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(secrets.token_bytes(KEY_BYTES))


def write_key_file(path: str | os.PathLike[str], key: SecretKey | None = None) -> SecretKey:
    """Create ``path`` holding a (new, unless given) key, mode 0600; refuse to overwrite.

    The key is written atomically: into a temporary file beside ``path`` (mode 0600), fsynced,
    then linked to ``path`` (which fails if ``path`` exists) and the folder fsynced. A full
    disk or any other write error leaves no file behind, never a partial key.
    """
    key = key or SecretKey.generate()
    target = Path(path)
    if os.path.lexists(target):
        raise KeyFileError(_exists_message(target))
    from .io.atomic import fsync_folder, temporary_name

    temp = target.with_name(temporary_name(target))
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {target}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(key.material)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _link_new(temp, target)
    except FileExistsError:
        raise KeyFileError(_exists_message(target)) from None
    except OSError as exc:
        raise KeyFileError(
            f"cannot write key file {target}: {exc.strerror or exc}; no key file was written"
        ) from None
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
    fsync_folder(target.parent)
    return key


def _link_new(temp: Path, target: Path) -> None:
    """Give ``temp``'s content the name ``target`` atomically, never replacing an existing file
    (a hard link; where the file system has none, a rename after a last existence check)."""
    try:
        os.link(temp, target)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(target):
            raise FileExistsError(str(target)) from None
        os.rename(temp, target)


def _exists_message(target: Path) -> str:
    return f"{target} already exists; refusing to overwrite a key file"


def load_key_file(path: str | os.PathLike[str]) -> SecretKey:
    """Read a key file written by :func:`write_key_file`; clear errors for anything else."""
    source = Path(path)
    try:
        info = source.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"key file not found: {source} (create one with `unlearnable keygen {source}`)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {source}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {source} is not a regular file")
    if info.st_size != KEY_BYTES:
        raise KeyFileError(
            f"key file {source} is malformed: a key file holds exactly {KEY_BYTES} bytes, "
            f"this one has {info.st_size}{_text_key_hint(source, info.st_size)}"
        )
    try:
        material = source.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {source}: {exc.strerror}") from None
    return SecretKey(material)


def _text_key_hint(source: Path, size: int) -> str:
    """A hint when the file holds the key as text (64 hex digits, e.g. ``openssl rand -hex 32``)
    instead of the 32 bytes; the content itself is never shown."""
    if not 2 * KEY_BYTES <= size <= 2 * KEY_BYTES + 2:
        return ""
    try:
        text = source.read_bytes().strip()
    except OSError:
        return ""
    if len(text) == 2 * KEY_BYTES and all(c in b"0123456789abcdefABCDEF" for c in text):
        return (
            " (64 hex digits: the key written as text; a key file holds the 32 bytes themselves,"
            " as `unlearnable keygen` writes them)"
        )
    return ""


def key_is_private(path: str | os.PathLike[str]) -> bool:
    """True when group and others have no access to the key file."""
    return Path(path).stat().st_mode & 0o077 == 0


def key_stream(key: SecretKey, context: str, n_bytes: int) -> bytes:
    """``n_bytes`` pseudo-random bytes bound to ``key`` and ``context`` (HMAC-SHA256 counter mode)."""
    if n_bytes < 0:
        raise ValueError("n_bytes must be >= 0")
    label = _STREAM_PREFIX + context.encode("utf-8") + b"\x00"
    blocks = []
    for counter in range((n_bytes + 31) // 32):
        message = label + struct.pack(">I", counter)
        blocks.append(hmac.new(key.material, message, hashlib.sha256).digest())
    return b"".join(blocks)[:n_bytes]


def key_uniforms(key: SecretKey, context: str, n: int) -> np.ndarray:
    """``n`` float64 values in [0, 1), shape ``(n,)``, from the key stream (53 bits each)."""
    raw = np.frombuffer(key_stream(key, context, 8 * n), dtype=">u8").astype(np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def key_seed(key: SecretKey, context: str) -> int:
    """A non-negative 63-bit integer seed bound to ``key`` and ``context``."""
    return int.from_bytes(key_stream(key, context, 8), "big") & (2**63 - 1)


def numpy_generator(key: SecretKey, context: str) -> np.random.Generator:
    """A dedicated numpy generator (PCG64) seeded from the key; never the global RNG."""
    return np.random.Generator(np.random.PCG64(key_seed(key, context)))


def torch_generator(key: SecretKey, context: str):  # -> torch.Generator
    """A dedicated CPU ``torch.Generator`` seeded from the key; never the global RNG."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(key_seed(key, context))
    return generator
