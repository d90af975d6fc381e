"""The ``uc`` method (Unlearnable Clusters): its config and registry entry (no torch here).

A surrogate's features are clustered into ``clusters`` groups (k-means from the key) and one
perturbation per cluster is learned (:mod:`unlearnable.protect.uc_optimise`, settings
:class:`~unlearnable.protect.uc_config.UCConfig`, L-inf budget ``eps``), then resized onto
every image of the cluster. Label-agnostic: no labels are needed or taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .cuda_method import CLUSTER_LABELS, validate_clusters
from .methods import MethodContext, register_method
from .uc_config import DEFAULT_CLUSTERS, DEFAULT_SURROGATE, UCConfig

if TYPE_CHECKING:
    from ..io.runner import FolderJob
    from .surrogate import Surrogate

DEFAULT_EPS_255 = 16.0
"""The CLI's default ``--eps`` (in 1/255 units), as in the paper."""


@dataclass(frozen=True)
class UCMethodConfig:
    """Unlearnable Clusters. ``surrogate``: a spec for
    :func:`~unlearnable.protect.surrogate.load_surrogate` (default ``ViT-B-32:openai``,
    downloaded on first use; ``random`` works offline but protects weakly) or a loaded
    :class:`~unlearnable.protect.surrogate.Surrogate`. ``clusters``: K. ``uc``: the optimisation
    settings (default :class:`UCConfig`: ``eps = 16/255``, 100 steps)."""

    surrogate: str | Surrogate = DEFAULT_SURROGATE
    clusters: int = DEFAULT_CLUSTERS
    uc: UCConfig = field(default_factory=UCConfig)

    def __post_init__(self) -> None:
        validate_clusters(self.clusters)
        if not isinstance(self.uc, UCConfig):
            raise UsageError(f"uc must be a UCConfig, got {type(self.uc).__name__}")


def uc_from_options(values: Mapping[str, Any]) -> UCMethodConfig:
    """``--method uc``: refuses labels and CUDA settings; ``--eps`` is in 1/255 units."""
    labels = values.get("labels") or "auto"
    if labels not in ("auto", CLUSTER_LABELS):
        raise UsageError(
            "--method uc is label-agnostic: its classes are the surrogate's clusters, so it takes "
            f"no labels (got labels={labels!r}); leave --labels out"
        )
    if values.get("kernel_size") is not None or values.get("blur") is not None:
        raise UsageError("kernel size and blur are CUDA settings; --method uc has none")
    eps = values.get("eps")
    steps = values.get("uc_steps")
    uc = UCConfig(
        eps=(eps if eps is not None else DEFAULT_EPS_255) / 255.0,
        steps=steps if steps is not None else UCConfig().steps,
    )
    return UCMethodConfig(
        surrogate=values.get("surrogate") or DEFAULT_SURROGATE,
        clusters=values.get("clusters") or DEFAULT_CLUSTERS,
        uc=uc,
    )


@register_method(
    "uc",
    UCMethodConfig,
    summary="Unlearnable Clusters, label-agnostic (one learned perturbation per cluster of "
    "surrogate features; no labels needed)",
    from_options=uc_from_options,
    uses_surrogate=True,
)
def prepare_uc(config: UCMethodConfig, context: MethodContext) -> FolderJob:
    from .uc_pipeline import cluster_for_method

    grouping = cluster_for_method(context, config.surrogate, config.clusters, uc_config=config.uc)
    return grouping.folder_job(grouping.protector())
