"""The ``photo`` method: its config and registry entry (no torch here).

Stacked class-wise shortcuts for photographs (:mod:`unlearnable.protect.photo`): the CUDA
filter designed at a scraper's resolution plus a key-derived class-wise colour transform. The
classes come from labels (folders, one label, a CSV), as for ``cuda``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .cuda_method import (
    CLUSTER_LABELS,
    ClusterCudaConfig,
    cluster_cuda_from_options,
    refuse_uc_options,
    validate_filter_settings,
)
from .methods import MethodContext, register_method

if TYPE_CHECKING:
    from ..io.runner import FolderJob


@dataclass(frozen=True)
class PhotoConfig:
    """Stacked shortcuts for photographs.

    ``labels``: ``auto``, ``folders``, ``single`` or a CSV file (see :mod:`unlearnable.datasets`).
    ``strength``: ``low``, ``mid`` or ``high`` (scales the blur and the colour transform by
    0.5, 1 or 1.5). ``reference``: the scraper short side (px) the CUDA filter is designed at.
    ``kernel_size`` (odd, 1-63) and ``blur`` (in (0, 1], at strength ``mid``) override the
    CUDA filter's defaults (3 and 0.3).
    """

    labels: str | Path = "auto"
    strength: str = "mid"
    reference: int = 112
    kernel_size: int | None = None
    blur: float | None = None

    def __post_init__(self) -> None:
        validate_filter_settings(self.strength, self.kernel_size, self.blur)
        if self.reference < 8:
            raise UsageError(f"reference must be >= 8 px, got {self.reference}")
        if str(self.labels) == CLUSTER_LABELS:
            raise UsageError(
                "--method photo needs labels; for label-agnostic CUDA use --method cluster-cuda"
            )


def photo_from_options(values: Mapping[str, Any]) -> PhotoConfig | ClusterCudaConfig:
    """``--method photo``: labels, ``--strength``, and ``--kernel-size`` / ``--blur`` for its
    CUDA filter. ``--labels clusters`` (no labels) gives ``cluster-cuda``, as with ``--method
    cuda``."""
    refuse_uc_options(values)
    if values.get("labels") == CLUSTER_LABELS:  # label-agnostic: CUDA on the surrogate's clusters
        return cluster_cuda_from_options(values)
    kernel_size = values.get("kernel_size")
    if kernel_size is not None and kernel_size % 2 == 0:
        raise UsageError(f"--kernel-size must be odd, got {kernel_size}")
    if values.get("surrogate") is not None or values.get("clusters") is not None:
        raise UsageError("--surrogate and --clusters need --method uc or --labels clusters")
    return PhotoConfig(
        labels=values.get("labels") or "auto",
        strength=values.get("strength") or "mid",
        kernel_size=kernel_size,
        blur=values.get("blur"),
    )


@register_method(
    "photo",
    PhotoConfig,
    summary="for photographs: CUDA designed at the scraper's resolution plus a key-derived "
    "colour transform per class",
    from_options=photo_from_options,
)
def prepare_photo(config: PhotoConfig, context: MethodContext) -> FolderJob:
    from ..io.runner import FolderJob
    from .photo import PhotoParams, PhotoProtector

    labels = context.assign_labels(config.labels)
    defaults = PhotoParams()
    params = PhotoParams(
        reference=config.reference,
        kernel_size=defaults.kernel_size if config.kernel_size is None else config.kernel_size,
        blur=defaults.blur if config.blur is None else config.blur,
    )
    protector = PhotoProtector(context.key, labels.classes, config.strength, params)
    return FolderJob(
        protector=protector,
        labels=labels.labels,
        classes=labels.classes,
        label_mode=labels.mode,
        problems=labels.problems,
    )
