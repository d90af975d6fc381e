"""How much memory protecting an image needs, and a gate that keeps the workers within it.

Protecting one image costs about :data:`BYTES_PER_PIXEL` bytes per pixel at its peak (measured
for CUDA with the upscaled k=9 filter on 6 and 24 MP photos: the float copies of the image, the
FFT buffers of the convolution, the encoded file, the quality metrics), on top of about 300 MB
per worker process for Python and torch. So a 24 MP photo needs about 2.4 GB and an image at the
default pixel limit (:data:`unlearnable.io.images.DEFAULT_MAX_PIXELS`, 100 MP) about 10 GB.

Small images never come near that (a batch holds at most ``BATCH_PIXELS`` = 4 MP, 400 MB). For
large ones, :class:`MemoryGate` is shared by the worker processes: a batch waits until its
estimate fits into the budget (by default 3/4 of the memory available when the run starts)
next to the batches already running, so with 2 workers and 8 GB free two 24 MP photos run side
by side but two 60 MP photos take turns. A batch larger than the whole budget runs alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import get_context

BYTES_PER_PIXEL = 100
"""Peak bytes per pixel of one image being protected (see the module docstring)."""
WORKER_OVERHEAD_BYTES = 300 * 1024 * 1024
BUDGET_SHARE = 0.75


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable`` on Linux; else physical memory), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def batch_bytes(pixels: int) -> int:
    """Estimated peak bytes to protect a batch of ``pixels`` pixels in all."""
    return pixels * BYTES_PER_PIXEL


class MemoryGate:
    """A budget of bytes shared by processes (see the module docstring); picklable to processes
    started with the ``spawn`` context (pass it in their start arguments)."""

    def __init__(self, budget: int) -> None:
        context = get_context("spawn")
        self.budget = max(1, int(budget))
        self._condition = context.Condition()
        self._used = context.Value("q", 0, lock=False)

    @classmethod
    def for_workers(cls, workers: int, budget: int | None = None) -> MemoryGate | None:
        """A gate for ``workers`` processes: ``budget`` bytes, or 3/4 of the available memory
        less each worker's overhead; None when the memory cannot be read."""
        if budget is None:
            free = available_memory()
            if free is None:
                return None
            budget = int(free * BUDGET_SHARE) - workers * WORKER_OVERHEAD_BYTES
        return cls(max(budget, BYTES_PER_PIXEL))

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        """Wait until ``amount`` bytes fit next to those held (or nothing is held), hold them
        in the block."""
        with self._condition:
            while self._used.value > 0 and self._used.value + amount > self.budget:
                self._condition.wait()
            self._used.value += amount
        try:
            yield
        finally:
            with self._condition:
                self._used.value -= amount
                self._condition.notify_all()

    @property
    def used(self) -> int:
        return int(self._used.value)
