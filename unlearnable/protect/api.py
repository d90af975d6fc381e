"""``protect_directory``: the library function behind ``unlearnable protect``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..io.lock import output_lock
from ..io.runner import (
    ProtectRun,
    ProtectUsageError,
    RunStorageError,
    default_executor,
    discover_and_check,
    run_folder,
)
from ..keys import SecretKey
from .feature_pass import StageProgress
from .methods import DEFAULT_METHOD, MethodContext, RunOptions, resolve_method

DEFAULT_RUN = RunOptions()


def protect_directory(
    input_dir: str | Path,
    output_dir: str | Path,
    key: SecretKey,
    method: Any = DEFAULT_METHOD,
    run: RunOptions = DEFAULT_RUN,
    *,
    progress: Callable[[int, int], None] | None = None,
    stage_progress: StageProgress | None = None,
) -> ProtectRun:
    """Protect the images below ``input_dir`` into ``output_dir`` (mirrored tree + manifest).

    ``method`` is a method config or the name of a registered method (its default config; see
    :mod:`unlearnable.protect.methods`):

    * ``PhotoConfig(labels="auto", strength="mid", reference=112)`` (``"photo"``, the
      default): CUDA designed at a 112 px scraper's resolution plus a key-derived colour
      transform per class (:mod:`unlearnable.protect.photo`);
    * ``CudaConfig(labels="auto", strength="mid", kernel_size=None, blur=None)`` (``"cuda"``):
      a key-derived blur filter per class; ``labels`` is ``auto``, ``folders``,
      ``single`` or a CSV path (see :mod:`unlearnable.datasets`);
    * ``ClusterCudaConfig(surrogate="ViT-B-32:openai", clusters=10, strength="mid", ...)``
      (``"cluster-cuda"``): the same filters with the surrogate's k-means clusters as the
      classes (``cluster-0`` ... ``cluster-{K-1}``), so no labels are needed;
    * ``UCMethodConfig(surrogate="ViT-B-32:openai", clusters=10, uc=UCConfig())`` (``"uc"``):
      Unlearnable Clusters, one learned perturbation per cluster (L-inf ``uc.eps``, default
      16/255), resized onto every image of the cluster.

    A surrogate is a spec for :func:`~unlearnable.protect.surrogate.load_surrogate`
    (``ViT-B-32:openai`` is downloaded on first use; ``random`` works offline but protects
    weakly) or a :class:`~unlearnable.protect.surrogate.Surrogate`. Features, clusters and
    perturbations are cached in ``output_dir`` so a resume does not recompute them; the manifest
    records the surrogate, K, the UC settings (``clustering``) and each file's cluster.

    ``run`` (:class:`RunOptions`): output format, resume, worker processes or an executor, torch
    threads, the surrogate's device and ``allow_pickle``. ``progress(done, total)`` follows the
    files being written; ``stage_progress(stage, done, total)`` the clustering stages
    (``reading``, ``features``, ``perturbations``).

    Raises a :class:`~unlearnable.errors.UsageError` (:class:`ProtectUsageError`, or
    :class:`~unlearnable.protect.surrogate.SurrogateError` when the surrogate cannot be loaded)
    before any image is written when the request is invalid; per-file problems are recorded in
    the manifest instead.
    """
    entry, config = resolve_method(method)
    if not isinstance(run, RunOptions):
        raise ProtectUsageError(f"run must be a RunOptions, got {type(run).__name__}")
    source, target = Path(input_dir), Path(output_dir)
    discovery = discover_and_check(source, target, include_hidden=run.include_hidden)
    if not discovery.files and not discovery.problems:
        skipped = ""
        if discovery.skipped:
            path, reason = next(iter(sorted(discovery.skipped.items())))
            skipped = f"; {len(discovery.skipped)} skipped, e.g. {path}: {reason}"
        raise ProtectUsageError(
            f"no images found in {source} (looked for JPEG, PNG, WebP, BMP, TIFF){skipped}"
        )
    with locked_output(target):
        context = MethodContext(source, target, list(discovery.files), key, run, stage_progress)
        job = entry.prepare(config, context)
        job = dataclasses.replace(
            job, problems={**discovery.problems, **job.problems}, skipped=dict(discovery.skipped)
        )
        return run_folder(
            source,
            target,
            job,
            key_fingerprint=key.fingerprint,
            options=run.output,
            resume=run.resume,
            executor=run.executor or default_executor(run.workers),
            progress=progress,
        )


def locked_output(target: Path) -> ExitStack:
    """``target``'s lock (:func:`~unlearnable.io.lock.output_lock`: a second run into the
    same folder is refused), to hold for the whole run, caches of the method's ``prepare``
    included; a folder that cannot be created is a :class:`RunStorageError`."""
    stack = ExitStack()
    try:
        stack.enter_context(output_lock(target))
    except OSError as exc:
        raise RunStorageError(
            f"cannot write to the output folder {target}: {exc.strerror or exc}; "
            "nothing was protected. Choose a writable folder with free space."
        ) from None
    return stack
