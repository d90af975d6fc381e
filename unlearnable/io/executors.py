"""Where the runner's work items run: in this process, or in a pool of spawned processes.

An :class:`Executor` runs ``function(context, item)`` for every item and yields the results as
they finish, in any order. ``context`` is what every item needs (for the folder runner: the
folders, the protector, the output options); it is sent to each worker once, not per item.
``function`` must be a module-level function and ``context`` and the items picklable, so that
an executor can run them elsewhere. When an item's worker dies, the executor yields
``lost(item, message)`` for it instead of raising, so the other items still count.

:class:`SerialExecutor` runs everything in this process; :class:`ProcessExecutor` is a pool of
``spawn`` processes (each limited to one torch thread). Both give the same results for the same
items. A distributed executor (Ray, ...) implements the same one-method protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor as _Pool
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Protocol, TypeVar

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

WORKER_DIED = "a worker process died (out of memory?); rerun with --resume and fewer --workers"


class Executor(Protocol):
    """Runs work items; see the module docstring."""

    def run(
        self,
        function: Callable[[C, T], R],
        context: C,
        items: Sequence[T],
        lost: Callable[[T, str], R],
    ) -> Iterator[R]:
        """Yield ``function(context, item)`` for every item (any order), or ``lost(item,
        message)`` for an item whose worker died."""
        ...


class SerialExecutor:
    """Runs every item in this process, in order (no pickling; errors propagate)."""

    def run(
        self,
        function: Callable[[C, T], R],
        context: C,
        items: Sequence[T],
        lost: Callable[[T, str], R],
    ) -> Iterator[R]:
        for item in items:
            yield function(context, item)


class ProcessExecutor:
    """A pool of ``workers`` spawned processes (at most one per item; with one, the items run
    in this process, as :class:`SerialExecutor`). Each worker gets the context once, at start,
    and uses one torch thread, so ``workers`` processes use ``workers`` cores."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def run(
        self,
        function: Callable[[C, T], R],
        context: C,
        items: Sequence[T],
        lost: Callable[[T, str], R],
    ) -> Iterator[R]:
        workers = max(1, min(self.workers, len(items)))
        if workers == 1:
            yield from SerialExecutor().run(function, context, items, lost)
            return
        with _Pool(
            workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(function, context),
        ) as pool:
            futures = {pool.submit(_run_in_worker, item): item for item in items}
            for future in as_completed(futures):
                try:
                    yield future.result()
                except BrokenProcessPool:
                    # A worker died (most often: out of memory). Its items, and those it could
                    # not start, are reported as lost; the caller decides what that means.
                    yield lost(futures[future], WORKER_DIED)


def default_workers() -> int:
    """The CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


_WORKER: tuple[Callable[[Any, Any], Any], Any] | None = None


def _init_worker(function: Callable[[Any, Any], Any], context: Any) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(1)
    _WORKER = (function, context)


def _run_in_worker(item: Any) -> Any:
    assert _WORKER is not None, "worker not initialised"
    function, context = _WORKER
    return function(context, item)
