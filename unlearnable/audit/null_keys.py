"""The audit's null keys: many "other keys", derived from a public seed, never from the owner's.

Derivation (version 1), reproducible from this text alone: null key ``i`` (i = 0, 1, ...) for
the integer seed ``s`` is the 32-byte ``HMAC-SHA256(b"unlearnable/audit/null-key/v1",
utf8(f"seed={s}/index={i}"))``. Anyone can recompute them, so publishing the seed and the null
statistics reveals nothing about the owner's key, and a third party can re-run the audit.
Because HMAC outputs look uniformly random, the owner's key is, for a model that never saw
data protected with it, just one more random key: that exchangeability is what makes the
empirical p-value valid.
"""

from __future__ import annotations

import hashlib
import hmac

from ..keys import SecretKey

NULL_KEY_VERSION = 1
_NULL_KEY_LABEL = b"unlearnable/audit/null-key/v1"


def null_key(seed: int, index: int) -> SecretKey:
    """Null key number ``index`` for ``seed`` (see the module docstring)."""
    message = f"seed={int(seed)}/index={int(index)}".encode()
    return SecretKey(hmac.new(_NULL_KEY_LABEL, message, hashlib.sha256).digest())


def null_keys(seed: int, count: int, exclude: SecretKey | None = None) -> list[SecretKey]:
    """``count`` distinct null keys for ``seed``; a key equal to ``exclude`` (the owner's, which
    would need a 2**-256 coincidence) is skipped."""
    if count < 0:
        raise ValueError("count must be >= 0")
    keys: list[SecretKey] = []
    index = 0
    while len(keys) < count:
        key = null_key(seed, index)
        index += 1
        if exclude is not None and hmac.compare_digest(key.material, exclude.material):
            continue
        keys.append(key)
    return keys


__all__ = ["NULL_KEY_VERSION", "null_key", "null_keys"]
