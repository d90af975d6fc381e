"""``protect_directory``: the library function behind ``unlearnable protect``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..datasets import assign_labels
from ..keys import SecretKey
from .clusters import UCConfig
from .cuda import CudaProtector
from .folder import (
    DEFAULT_OUTPUT,
    OutputOptions,
    Protector,
    ProtectRun,
    ProtectUsageError,
    default_workers,
    discover_and_check,
    protect_folder,
)
from .surrogate import Surrogate
from .uc_pipeline import (
    DEFAULT_CLUSTERS,
    DEFAULT_SURROGATE,
    RUN_FILES,
    StageProgress,
    cluster_folder,
)

METHODS = ("cuda", "uc")
"""``cuda``: class-wise (or cluster-wise) convolution filters; ``uc``: Unlearnable Clusters."""
CLUSTER_LABELS = "clusters"


def protect_directory(
    input_dir: str | Path,
    output_dir: str | Path,
    key: SecretKey,
    *,
    method: str = "cuda",
    labels: str = "auto",
    strength: str = "mid",
    kernel_size: int | None = None,
    blur: float | None = None,
    surrogate: str | Surrogate | None = None,
    clusters: int = DEFAULT_CLUSTERS,
    uc_config: UCConfig | None = None,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
    options: OutputOptions = DEFAULT_OUTPUT,
    resume: bool = False,
    workers: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stage_progress: StageProgress | None = None,
) -> ProtectRun:
    """Protect the images below ``input_dir`` into ``output_dir`` (mirrored tree + manifest).

    Methods:

    * ``cuda`` (default): a key-derived blur filter per class. ``labels`` is ``auto``,
      ``folders``, ``single``, a CSV path (see :mod:`unlearnable.datasets`), or ``clusters``: the
      ``clusters`` k-means clusters of the surrogate's features become the classes
      (``cluster-0`` ... ``cluster-{K-1}``), so no labels are needed (label-agnostic CUDA).
      ``strength``, ``kernel_size`` and ``blur`` tune the filters.
    * ``uc``: Unlearnable Clusters, label-agnostic: the surrogate's features are clustered into
      ``clusters`` groups and one perturbation per cluster is learned (``uc_config``; default
      :class:`UCConfig`, L-inf budget ``eps = 16/255``), then resized onto every image of the
      cluster. ``labels`` must be ``auto`` or ``clusters``.

    ``surrogate`` (clusters and UC only): a spec for
    :func:`~unlearnable.protect.surrogate.load_surrogate` (default :data:`DEFAULT_SURROGATE`,
    ``ViT-B-32:openai``, downloaded on first use; ``random`` works offline but protects weakly)
    or a :class:`Surrogate`; ``device`` runs it (default CPU), ``allow_pickle`` permits
    pickle-based checkpoints, ``threads`` sets torch threads for the feature extraction and the
    optimisation (restored afterwards; see :func:`~unlearnable.protect.uc_pipeline.torch_threads`).
    Features, clusters and perturbations are cached in ``output_dir`` so ``resume`` does not
    recompute them; the manifest records the surrogate, K, the UC settings (``clustering``) and
    each file's cluster.

    ``progress(done, total)`` follows the files being written; ``stage_progress(stage, done,
    total)`` the clustering stages (``reading``, ``features``, ``perturbations``). Raises
    :class:`ProtectUsageError` (or ``ValueError`` for bad parameters, or
    :class:`~unlearnable.protect.surrogate.SurrogateError` when the surrogate cannot be loaded)
    before any image is written when the request is invalid; per-file problems are recorded in
    the manifest instead.
    """
    source, target = Path(input_dir), Path(output_dir)
    if method not in METHODS:
        raise ProtectUsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    use_clusters = method == "uc" or labels == CLUSTER_LABELS
    _check_method_options(method, labels, use_clusters, kernel_size, blur, surrogate, uc_config)
    discovery = discover_and_check(source, target)
    if not discovery.files and not discovery.problems:
        raise ProtectUsageError(
            f"no images found in {source} (looked for JPEG, PNG, WebP, BMP, TIFF)"
        )
    extra: dict[str, Any] = {}
    cluster_of: dict[str, int] | None = None
    protector: Protector
    if use_clusters:
        grouping = cluster_folder(
            source,
            target,
            discovery.files,
            key,
            surrogate if surrogate is not None else DEFAULT_SURROGATE,
            clusters,
            uc_config=(uc_config or UCConfig()) if method == "uc" else None,
            resume=resume,
            device=device,
            allow_pickle=allow_pickle,
            max_pixels=options.max_pixels,
            threads=threads,
            progress=stage_progress,
        )
        label_map, classes, label_mode = grouping.labels, grouping.class_names, CLUSTER_LABELS
        problems = {**discovery.problems, **grouping.problems}
        cluster_of = grouping.cluster_of
        extra["clustering"] = grouping.manifest_info()
        if method == "uc":
            protector = grouping.protector()
        else:
            protector = CudaProtector(key, classes, strength, kernel_size, blur)
    else:
        assignment = assign_labels(source, discovery.files, labels)
        label_map, classes, label_mode = assignment.labels, assignment.classes, assignment.mode
        problems = {**discovery.problems, **assignment.problems}
        protector = CudaProtector(key, classes, strength, kernel_size, blur)
    return protect_folder(
        source,
        target,
        protector,
        labels=label_map,
        classes=classes,
        key_fingerprint=key.fingerprint,
        label_mode=label_mode,
        label_problems=problems,
        options=options,
        resume=resume,
        workers=workers or default_workers(),
        clusters=cluster_of,
        extra_manifest=extra,
        progress=progress,
        run_files=RUN_FILES if use_clusters else (),
    )


def _check_method_options(
    method: str,
    labels: str,
    use_clusters: bool,
    kernel_size: int | None,
    blur: float | None,
    surrogate: str | Surrogate | None,
    uc_config: UCConfig | None,
) -> None:
    if method == "uc" and labels not in ("auto", CLUSTER_LABELS):
        raise ProtectUsageError(
            "--method uc is label-agnostic: its classes are the surrogate's clusters, so it takes "
            f"no labels (got labels={labels!r}); leave --labels out"
        )
    if method == "uc" and (kernel_size is not None or blur is not None):
        raise ProtectUsageError("kernel size and blur are CUDA settings; --method uc has none")
    if method != "uc" and uc_config is not None:
        raise ProtectUsageError("UC settings (eps, steps) need --method uc")
    if not use_clusters and surrogate is not None:
        raise ProtectUsageError("a surrogate is only used by --method uc or --labels clusters")
