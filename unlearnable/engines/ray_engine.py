"""The Ray engine: protect's work items as Ray tasks, and surrogate features on Ray actors.

:class:`RayExecutor` fits :class:`unlearnable.io.executors.Executor`, so every runner uses it
unchanged: the folder runner (chunks of files) and the record runner (one WebDataset shard or
Parquet file per task). It gives the same results as the local process pool, because the work
function is the same; only where it runs changes:

* the context (protector, options) is put in Ray's object store once and shared by every task;
* each task runs with one torch thread and asks Ray for one CPU;
* at most :data:`IN_FLIGHT_PER_CPU` tasks per cluster CPU are queued at a time (a million
  shards do not become a million queued tasks);
* a task whose worker or node dies is retried by Ray (``max_retries``); an item whose retries
  are spent is reported through ``lost(item, message)``, as the process pool does. An item's
  outputs are written atomically and its records are returned once, to the driver, which
  journals them: a retried item writes the same files again and never duplicates records.

With no ``address`` a local Ray instance is started (``num_cpus=workers``); ``address="auto"``
or ``ray://HOST:10001`` joins a cluster. The workers must be able to import ``unlearnable``
(install it on every node) and to reach the input and output paths (a shared file system, or
URLs such as ``s3://...`` for shards and Parquet files, read and written through fsspec).

Unlearnable Clusters at scale (:meth:`RayExecutor.extract_features`): actors each load the
surrogate once and embed blocks of files or of shard / Parquet records; k-means then runs on the gathered features
(:func:`unlearnable.protect.clusters.cluster_features`, ``MiniBatchKMeans`` above 20,000
images), the perturbations are optimised once, and the protection is applied by the executor's
tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ..errors import UsageError

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

IN_FLIGHT_PER_CPU = 4
DEFAULT_RETRIES = 3
RAY_MISSING = (
    'the Ray engine needs ray, which is not installed: pip install "unlearnable[ray]" '
    "(or pip install ray)"
)


class RayEngineError(UsageError):
    """Ray is missing or the cluster cannot be reached."""


def require_ray() -> Any:
    """The ``ray`` module, or :class:`RayEngineError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayEngineError(RAY_MISSING) from None
    return ray


def connect(address: str | None = None, workers: int | None = None) -> Any:
    """Ray, initialised: joins ``address`` or starts a local instance with ``workers`` CPUs
    (no dashboard); an already initialised Ray is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    try:
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayEngineError(
            f"cannot start or reach Ray at {address or 'a local instance'}: {exc}"
        ) from None
    return ray


class RayExecutor:
    """An :class:`~unlearnable.io.executors.Executor` on Ray (see the module docstring).

    ``address``: a Ray cluster (None: a local instance with ``workers`` CPUs). ``max_retries``:
    how often Ray retries a task whose worker died."""

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        max_retries: int = DEFAULT_RETRIES,
    ) -> None:
        require_ray()
        if workers is not None and workers < 1:
            raise UsageError(f"workers must be >= 1, got {workers}")
        self.address = address
        self.workers = workers
        self.max_retries = max_retries

    def run(
        self,
        function: Callable[[C, T], R],
        context: C,
        items: Sequence[T],
        lost: Callable[[T, str], R],
    ) -> Iterator[R]:
        ray = connect(self.address, self.workers)
        from ray import exceptions as ray_errors

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        limit = cpus * IN_FLIGHT_PER_CPU
        task = ray.remote(num_cpus=1, max_retries=self.max_retries)(_run_item)
        shared = ray.put(context)
        pending: dict[Any, T] = {}
        queue = iter(items)
        finished = False
        try:
            while True:
                for item in queue:
                    pending[task.remote(function, shared, item)] = item
                    if len(pending) >= limit:
                        break
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray_errors.RayTaskError as exc:
                    raise _cause(exc) from None
                except (ray_errors.RayError, OSError) as exc:
                    # the worker or its node died and Ray's retries are spent
                    result = lost(
                        item, f"a Ray worker was lost ({type(exc).__name__}); rerun with --resume"
                    )
                yield result
            finished = True
        finally:
            if not finished:
                for ref in pending:
                    ray.cancel(ref, force=True)

    def extract_features(self, *args: Any, **kwargs: Any) -> Any:
        """Surrogate features on Ray actors for Unlearnable Clusters (the arguments and result
        of :func:`~unlearnable.protect.feature_pass.extract_folder_features`; see
        :mod:`unlearnable.engines.ray_features`)."""
        from .ray_features import extract_features_on_ray

        return extract_features_on_ray(*args, address=self.address, workers=self.workers, **kwargs)


def _cause(error: Exception) -> BaseException:
    """The exception a task raised (Ray wraps it)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


_THREADS_SET = False


def _run_item(function: Callable[[Any, Any], Any], context: Any, item: Any) -> Any:
    global _THREADS_SET
    if not _THREADS_SET:
        import torch

        torch.set_num_threads(1)
        _THREADS_SET = True
    return function(context, item)
