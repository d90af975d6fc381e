"""The ``cuda`` and ``cluster-cuda`` methods: their configs and registry entries (no torch here).

``cuda`` gives every class a key-derived blur filter (:mod:`unlearnable.protect.cuda`); the
classes come from labels (folders, one label, a CSV). ``cluster-cuda`` uses the same filters
with the k-means clusters of a surrogate's features as the classes, so it needs no labels
(``unlearnable protect --labels clusters``). Both record ``method: cuda`` in the manifest;
``cluster-cuda`` also records the ``clustering``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .methods import MethodContext, register_method
from .uc_config import DEFAULT_CLUSTERS, DEFAULT_SURROGATE

if TYPE_CHECKING:
    from ..io.runner import FolderJob
    from .surrogate import Surrogate

STRENGTHS = ("low", "mid", "high")
CLUSTER_LABELS = "clusters"
"""``--labels clusters``: the surrogate's clusters are the classes (the ``cluster-cuda`` method)."""


def validate_kernel_size(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0 or kernel_size > 63:
        raise UsageError(f"kernel size must be an odd number from 1 to 63, got {kernel_size}")


def validate_blur(blur: float) -> None:
    if not 0.0 < blur <= 1.0:
        raise UsageError(f"blur parameter must be in (0, 1], got {blur}")


def validate_filter_settings(strength: str, kernel_size: int | None, blur: float | None) -> None:
    """Refuse a strength that is not a preset, an even or out-of-range kernel size, or a blur
    outside (0, 1] (``UsageError``)."""
    if strength not in STRENGTHS:
        raise UsageError(f"strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
    if kernel_size is not None:
        validate_kernel_size(kernel_size)
    if blur is not None:
        validate_blur(blur)


def validate_clusters(clusters: int) -> None:
    if clusters < 2:
        raise UsageError(f"need at least 2 clusters, got {clusters}")


@dataclass(frozen=True)
class CudaConfig:
    """CUDA with labelled classes.

    ``labels``: ``auto`` (folders when images sit in subfolders, else one label), ``folders``,
    ``single`` or a CSV file of ``relative/path,label`` rows (see :mod:`unlearnable.datasets`).
    ``strength``: ``low``, ``mid`` or ``high`` preset (kernel size and blur scale with each
    image's size, see :mod:`unlearnable.protect.cuda`); ``kernel_size`` (odd, 1-63) and ``blur``
    (in (0, 1]) override the preset.
    """

    labels: str | Path = "auto"
    strength: str = "mid"
    kernel_size: int | None = None
    blur: float | None = None

    def __post_init__(self) -> None:
        validate_filter_settings(self.strength, self.kernel_size, self.blur)
        if str(self.labels) == CLUSTER_LABELS:
            raise UsageError(
                "labels='clusters' is the cluster-cuda method: use ClusterCudaConfig "
                "(method='cluster-cuda')"
            )


@dataclass(frozen=True)
class ClusterCudaConfig:
    """CUDA on the ``clusters`` k-means clusters of ``surrogate``'s features (label-agnostic;
    classes ``cluster-0`` ... ``cluster-{K-1}``). ``surrogate``: a spec for
    :func:`~unlearnable.protect.surrogate.load_surrogate` (``random`` works offline but protects
    weakly) or a loaded :class:`~unlearnable.protect.surrogate.Surrogate`. ``strength``,
    ``kernel_size`` and ``blur`` as for :class:`CudaConfig`."""

    surrogate: str | Surrogate = DEFAULT_SURROGATE
    clusters: int = DEFAULT_CLUSTERS
    strength: str = "mid"
    kernel_size: int | None = None
    blur: float | None = None

    def __post_init__(self) -> None:
        validate_filter_settings(self.strength, self.kernel_size, self.blur)
        validate_clusters(self.clusters)


def refuse_uc_options(values: Mapping[str, Any]) -> None:
    if values.get("eps") is not None or values.get("uc_steps") is not None:
        raise UsageError("--eps and --uc-steps are settings of --method uc")


def _check_kernel_option(values: Mapping[str, Any]) -> None:
    kernel_size = values.get("kernel_size")
    if kernel_size is not None and kernel_size % 2 == 0:
        raise UsageError(f"--kernel-size must be odd, got {kernel_size}")


def _filter_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "strength": values.get("strength") or "mid",
        "kernel_size": values.get("kernel_size"),
        "blur": values.get("blur"),
    }


def cuda_from_options(values: Mapping[str, Any]) -> CudaConfig | ClusterCudaConfig:
    """``--method cuda``: :class:`CudaConfig`, or :class:`ClusterCudaConfig` with
    ``--labels clusters``."""
    _check_kernel_option(values)
    refuse_uc_options(values)
    labels = values.get("labels") or "auto"
    if labels == CLUSTER_LABELS:
        return cluster_cuda_from_options(values)
    if values.get("surrogate") is not None or values.get("clusters") is not None:
        raise UsageError("--surrogate and --clusters need --method uc or --labels clusters")
    return CudaConfig(labels=labels, **_filter_values(values))


def cluster_cuda_from_options(values: Mapping[str, Any]) -> ClusterCudaConfig:
    """``--method cluster-cuda`` (or ``--method cuda --labels clusters``)."""
    _check_kernel_option(values)
    refuse_uc_options(values)
    labels = values.get("labels") or "auto"
    if labels not in ("auto", CLUSTER_LABELS):
        raise UsageError(
            "--method cluster-cuda is label-agnostic: its classes are the surrogate's clusters, "
            f"so it takes no labels (got labels={labels!r}); leave --labels out"
        )
    return ClusterCudaConfig(
        surrogate=values.get("surrogate") or DEFAULT_SURROGATE,
        clusters=values.get("clusters") or DEFAULT_CLUSTERS,
        **_filter_values(values),
    )


@register_method(
    "cuda",
    CudaConfig,
    summary="a key-derived blur filter per class",
    from_options=cuda_from_options,
)
def prepare_cuda(config: CudaConfig, context: MethodContext) -> FolderJob:
    from ..io.runner import FolderJob
    from .cuda import CudaProtector

    labels = context.assign_labels(config.labels)
    protector = CudaProtector(
        context.key, labels.classes, config.strength, config.kernel_size, config.blur
    )
    return FolderJob(
        protector=protector,
        labels=labels.labels,
        classes=labels.classes,
        label_mode=labels.mode,
        problems=labels.problems,
    )


@register_method(
    "cluster-cuda",
    ClusterCudaConfig,
    summary="CUDA's filters with the surrogate's clusters as the classes, label-agnostic "
    "(the same as --labels clusters)",
    from_options=cluster_cuda_from_options,
    uses_surrogate=True,
)
def prepare_cluster_cuda(config: ClusterCudaConfig, context: MethodContext) -> FolderJob:
    from .cuda import CudaProtector
    from .uc_pipeline import cluster_for_method

    grouping = cluster_for_method(context, config.surrogate, config.clusters, uc_config=None)
    protector = CudaProtector(
        context.key, grouping.class_names, config.strength, config.kernel_size, config.blur
    )
    return grouping.folder_job(protector)
