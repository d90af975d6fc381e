"""Deterministic randomness for training runs: named seed streams and a seeded global RNG.

A run is seeded with one integer. Every consumer of randomness that can take a
``torch.Generator`` (shuffling, augmentation, PGD random starts, noise for a diffusion loss) gets
its own generator seeded from :func:`derive_seed` with a stream name, so adding a stream never
changes the others. Random ops that only use torch's global RNG (dropout) run inside
:func:`seeded_global_rng`, which forks the global RNG, seeds it from the ``"global"`` stream and
restores the caller's state on exit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random ``stream`` (``"shuffle"``, ``"augment"``, ...) of a run
    seeded with ``seed``: independent streams that do not change when streams are added.
    (``numpy.random.SeedSequence`` over ``seed`` and a SHA-256 digest of ``stream``.)"""
    digest = hashlib.sha256(stream.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    seq = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, *words])
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(seed, stream)``."""
    return torch.Generator().manual_seed(derive_seed(seed, stream))


@contextmanager
def seeded_global_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Fork torch's global RNG (CPU, and ``device`` when it is a CUDA device), seed it with
    ``derive_seed(seed, "global")`` and restore the caller's state on exit."""
    device = torch.device(device)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(derive_seed(seed, "global"))
        yield


__all__ = ["derive_seed", "seeded_global_rng", "stream_generator"]
