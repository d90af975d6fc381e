"""Where the runner's work items run: in this process, or in a pool of spawned processes.

An :class:`Executor` runs ``function(context, item)`` for every item and yields the results as
they finish, in any order. ``context`` is what every item needs (for the folder runner: the
folders, the protector, the output options); it is sent to each worker once, not per item.
``function`` must be a module-level function and ``context`` and the items picklable, so that
an executor can run them elsewhere. When an item's worker dies, the executor yields
``lost(item, message)`` for it instead of raising, so the other items still count.

:class:`SerialExecutor` runs everything in this process; :class:`ProcessExecutor` is a pool of
``spawn`` processes (each limited to one torch thread), with this process working as one of its
lanes by default. Both give the same results for the same items. A distributed executor (Ray,
...) implements the same one-method protocol.

Stopping: the workers ignore SIGINT (Ctrl-C reaches every process of the terminal's group); the
main process gets the ``KeyboardInterrupt``. When the caller stops iterating early (an error,
Ctrl-C, ``break``), the pool's queued items are cancelled and its workers terminated at once, so
nothing keeps running and no worker prints a traceback. A worker killed mid-item may leave a
temporary file (see :func:`unlearnable.io.atomic.remove_stale_temporaries`), never a partial
output. A Ctrl-C (or a SIGTERM turned into one) while the pool starts its workers is held until
the pool is complete and then raised (see :func:`_interrupts_held`), so it is never lost and
never leaves a worker the pool does not know about. The workers are born with SIGINT and SIGTERM
blocked and take them up only in their initializer, so no worker dies while the pool is still
adding workers (on Python 3.11 the pool's manager thread then fails with "dictionary changed size
during iteration" and prints a traceback). A worker killed while it sends a result does not keep
the pool's manager thread (and so this process, at exit) waiting for the rest of the message
(:func:`_release_manager`), and the workers end by themselves when this process is killed
outright (``kill -9``, the OOM killer), instead of waiting for work forever.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, as_completed, wait
from concurrent.futures import ProcessPoolExecutor as _Pool
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, Protocol, TypeVar

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

# Blocked while the pool starts workers, in this thread and (inherited) in the workers.
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}

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
    """Runs the items on ``workers`` lanes: spawned processes, and (``in_process``, the
    default) this process as one of them, so ``workers - 1`` processes are spawned. Each
    spawned worker gets the context once, at start; every lane uses one torch thread, so
    ``workers`` lanes use ``workers`` cores. With one lane (or one item) everything runs in
    this process, as :class:`SerialExecutor`.

    Why this process works too: a spawned worker first imports torch and the tool (about
    1.5 s of CPU on a laptop core) and ends by tearing them down, while this process has them
    already (``benchmarks/protect_throughput.py`` on 2 cores and 40 photos: 5.4 s before this,
    the end without waiting for the workers and the runner's smaller chunks, 3.1 s after). This
    process takes the next item whenever it is free and hands ready workers theirs ahead, so
    neither waits for the other, and a small folder is done before a worker is up. A worker that
    dies loses only its own items (see the module docstring); the items it never received
    then run here. What ``in_process`` costs: an item that kills its process outright (the
    out-of-memory killer) kills the run when it runs here (the journal keeps it resumable),
    where a worker's death only loses that item; ``in_process=False`` keeps every item in
    spawned workers.
    """

    def __init__(self, workers: int | None = None, in_process: bool = True) -> None:
        self.workers = default_workers() if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.in_process = in_process

    def run(
        self,
        function: Callable[[C, T], R],
        context: C,
        items: Sequence[T],
        lost: Callable[[T, str], R],
    ) -> Iterator[R]:
        lanes = max(1, min(self.workers, len(items)))
        if lanes == 1:
            yield from SerialExecutor().run(function, context, items, lost)
            return
        spawned = lanes - 1 if self.in_process else lanes
        pool = _Pool(
            spawned,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(function, context),
        )
        finished = False
        workers_started = True
        try:
            if self.in_process:
                workers_started = yield from _run_beside(
                    pool, spawned, function, context, items, lost
                )
            else:
                with _interrupts_held():  # spawned with SIGINT blocked: the workers inherit it
                    futures = {pool.submit(_run_in_worker, item): item for item in items}
                for future in as_completed(futures):
                    yield _result(future, futures[future], lost)
            finished = True
        finally:
            if finished and workers_started:  # every result is in: they end on their own
                pool.shutdown(wait=False)
            else:  # stopped early, or a worker still starting that never had work: no wait
                stop_pool(pool)


AHEAD_PER_WORKER = 2
"""Items handed to each ready worker ahead (running and queued) while this process works too:
one queued behind the running one, so a worker never waits for this process to finish its own
item before it gets the next."""


def _run_beside(
    pool: _Pool,
    spawned: int,
    function: Callable[[C, T], R],
    context: C,
    items: Sequence[T],
    lost: Callable[[T, str], R],
) -> Generator[R, None, bool]:
    """Run ``items`` on ``pool``'s ``spawned`` workers and in this process (one torch thread
    here meanwhile), in order of the items; returns whether every worker got started.

    Each worker is spawned with a warm-up call, whose result says it is ready; only ready
    workers are handed items, :data:`AHEAD_PER_WORKER` each, so no item waits for a worker
    that is still importing torch while this process is free (a small folder is done here
    before any worker is up). This process takes the next item whenever it is free, and
    finished results are yielded between its items. After a worker died (a broken pool), the
    items not yet handed out run here."""
    pending = deque(items)
    futures: dict[Future, T] = {}
    broken = False
    with _interrupts_held():  # every worker is spawned here (one per first submit)
        warm_ups = [pool.submit(_warm_up) for _ in range(spawned)]

    def hand_out() -> None:
        nonlocal broken
        ahead = AHEAD_PER_WORKER * sum(warm_up.done() for warm_up in warm_ups)
        while pending and not broken and len(futures) < ahead:
            item = pending.popleft()
            try:
                futures[pool.submit(_run_in_worker, item)] = item
            except BrokenProcessPool:
                pending.appendleft(item)
                broken = True

    with _one_torch_thread():
        while futures or pending:
            finished = [future for future in futures if future.done()]
            if not finished and not pending:
                finished = list(wait(futures, return_when=FIRST_COMPLETED).done)
            for future in finished:
                yield _result(future, futures.pop(future), lost)
            hand_out()
            if pending and not finished:
                yield function(context, pending.popleft())
    return all(warm_up.done() for warm_up in warm_ups)


def _warm_up() -> None:
    """A spawned worker's first call: it returns once the worker is ready for items."""


def _result(future: Future, item: T, lost: Callable[[T, str], R]) -> R:
    try:
        return future.result()
    except BrokenProcessPool:
        # A worker died (most often: out of memory). Its items, and those it could not
        # start, are reported as lost; the caller decides what that means.
        return lost(item, WORKER_DIED)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """This process's torch uses one thread in the block (it is one lane of several)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def stop_pool(pool: _Pool) -> None:
    """Cancel a pool's queued items and stop its workers now (not waiting for them).

    SIGKILL, not SIGTERM: a worker still starting holds SIGTERM blocked (see
    :func:`_interrupts_held`), and SIGTERM's default action in a worker is the same sudden exit."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() forgets them
    results = getattr(pool, "_result_queue", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=5)
    _release_manager(manager, results)


def _release_manager(manager: threading.Thread | None, results: Any) -> None:
    """Let the pool's manager thread end after its workers were killed.

    A worker killed while it was sending a result leaves half a message in the result pipe;
    the manager thread then waits for the rest forever, and Python waits for that thread at
    exit: the process printed "interrupted" and never ended. With every worker gone, nobody
    but this process holds the pipe's write end: closing it turns the wait into an
    end-of-file, which the thread takes for a broken pool, and it ends."""
    if manager is None:
        return
    manager.join(timeout=1.0)
    if not manager.is_alive():
        return
    writer = getattr(results, "_writer", None)
    if writer is not None:
        try:
            writer.close()
        except OSError:
            pass
    manager.join(timeout=5.0)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Start worker processes in this block: they start with SIGINT and SIGTERM blocked
    (inherited through fork and exec), so a Ctrl-C before :func:`_init_worker` ignores it is no
    traceback in a worker, a SIGTERM to the process group kills no worker while the pool is
    still adding workers (it waits in the worker until its initializer), and this process loses
    no Ctrl-C or SIGTERM.

    The signal mask is per thread: SIGINT is blocked in this thread only, so the kernel may
    deliver a Ctrl-C to another thread (torch's, a progress bar's). Its disposition therefore
    stays a Python handler, never SIG_IGN (which dropped such a signal): in the main thread the
    Python handlers of SIGINT and SIGTERM are replaced by one that only notes the signal, so no
    ``KeyboardInterrupt`` lands half-way through starting the pool; after the block the noted
    signals are raised again, to the handlers that were there before.
    """
    noted: list[int] = []

    def note(signum: int, frame: object) -> None:
        noted.append(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            if callable(signal.getsignal(signum)):  # SIG_DFL / SIG_IGN stay as they are
                previous[signum] = signal.signal(signum, note)
    blocking = hasattr(signal, "pthread_sigmask")
    if blocking:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        if blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # pending signals arrive: noted
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)  # the earlier handler: KeyboardInterrupt, as a rule


def default_workers() -> int:
    """The CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


_WORKER: tuple[Callable[[Any, Any], Any], Any] | None = None


def _init_worker(function: Callable[[Any, Any], Any], context: Any) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    if hasattr(signal, "pthread_sigmask"):  # blocked since the start (_interrupts_held)
        # SIGINT is ignored from now on; a SIGTERM that came meanwhile stops the worker now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
    _exit_with_parent()
    import torch

    torch.set_num_threads(1)
    _WORKER = (function, context)
    # Everything imported so far (torch, the tool) lives until the worker ends: leave it out of
    # the garbage collector's passes. Its final passes over torch's objects took about 0.5 s
    # of each worker's exit (pool shutdown waited for it at the end of every run).
    gc.freeze()


def _exit_with_parent() -> None:
    """End this worker when the process that started it dies (``kill -9``, the OOM killer):
    otherwise it waits for work forever, holding a few hundred MB, since it holds the work
    queue's write end itself. A daemon thread waits on the parent's sentinel (ready when the
    parent is gone) and exits at once; an item in progress leaves at most a temporary file,
    which ``--resume`` removes."""
    from multiprocessing import parent_process
    from multiprocessing.connection import wait

    parent = parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return

    def watch() -> None:
        wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_in_worker(item: Any) -> Any:
    assert _WORKER is not None, "worker not initialised"
    function, context = _WORKER
    return function(context, item)
