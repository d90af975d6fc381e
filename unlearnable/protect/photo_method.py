"""The ``photo`` method: its config and registry entry (no torch here).

Stacked class-wise shortcuts for photographs (:mod:`unlearnable.protect.photo`): the CUDA
filter designed at a scraper's resolution plus a key-derived class-wise colour transform. The
classes come from labels (folders, one label, a CSV), as for ``cuda``. ``--stack-version``
picks the stack's version (default: 3, or the one a resumed run started with).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
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
from .methods import MethodContext, MethodOption, register_method

STACK_VERSION = 3
"""The ``photo`` stack version new runs use (see :mod:`unlearnable.protect.photo`)."""
STACK_VERSIONS = (1, 2, 3)
"""Every stack version this tool reproduces."""

if TYPE_CHECKING:
    from ..io.runner import FolderJob
    from .photo import PhotoParams


@dataclass(frozen=True)
class PhotoConfig:
    """Stacked shortcuts for photographs.

    ``labels``: ``auto``, ``folders``, ``single`` or a CSV file (see :mod:`unlearnable.datasets`).
    ``strength``: ``low``, ``mid`` or ``high`` (scales the blur and the colour transform by
    0.5, 1 or 1.5). ``reference``: the scraper short side (px) the CUDA filter is designed at.
    ``kernel_size`` (odd, 1-63) and ``blur`` (in (0, 1], at strength ``mid``) override the
    CUDA filter's defaults (3 and 0.3). ``stack_version``: 1, 2 or 3 (see
    :mod:`unlearnable.protect.photo`); None: ``STACK_VERSION`` (3) for a new run, the earlier
    run's on ``resume`` (so a resumed run gives the files it would have given).
    """

    labels: str | Path = "auto"
    strength: str = "mid"
    reference: int = 112
    kernel_size: int | None = None
    blur: float | None = None
    stack_version: int | None = None

    def __post_init__(self) -> None:
        validate_filter_settings(self.strength, self.kernel_size, self.blur)
        if self.stack_version is not None and self.stack_version not in STACK_VERSIONS:
            versions = ", ".join(map(str, STACK_VERSIONS))
            raise UsageError(f"stack version must be one of {versions}, got {self.stack_version}")
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
        stack_version=values.get("stack_version"),
    )


@register_method(
    "photo",
    PhotoConfig,
    summary="for photographs: CUDA designed at the scraper's resolution plus a key-derived "
    "colour transform per class",
    from_options=photo_from_options,
    cli_options=(
        MethodOption(
            "--stack-version",
            int,
            "the stack's version, 1, 2 or 3 (default: 3; on --resume, the earlier run's)",
            "N",
        ),
    ),
)
def prepare_photo(config: PhotoConfig, context: MethodContext) -> FolderJob:
    from ..io.runner import FolderJob
    from .photo import PhotoParams, PhotoProtector

    labels = context.assign_labels(config.labels)
    earlier = _resumed_parameters(context)
    defaults = _resumed_defaults(PhotoParams(), earlier)
    params = PhotoParams(
        reference=config.reference,
        kernel_size=defaults.kernel_size if config.kernel_size is None else config.kernel_size,
        blur=defaults.blur if config.blur is None else config.blur,
        colour=defaults.colour,
        plaid_eps=defaults.plaid_eps,
        plaid_cycles=defaults.plaid_cycles,
    )
    version = config.stack_version
    if version is None:
        recorded = earlier.get("stack_version")
        version = recorded if recorded in STACK_VERSIONS else STACK_VERSION
    protector = PhotoProtector(context.key, labels.classes, config.strength, params, version)
    return FolderJob(
        protector=protector,
        labels=labels.labels,
        classes=labels.classes,
        label_mode=labels.mode,
        problems=labels.problems,
    )


def _resumed_parameters(context: MethodContext) -> dict[str, Any]:
    """The recorded parameters of the ``photo`` run being resumed in the output folder
    (``{}`` when this is not a resume of a ``photo`` run)."""
    if not context.run.resume:
        return {}
    from ..io.resume import earlier_run

    earlier = earlier_run(context.output_dir)
    if earlier is None or earlier.method != "photo":
        return {}
    return dict(earlier.parameters or {})


def _resumed_defaults(defaults: PhotoParams, earlier: Mapping[str, Any]) -> PhotoParams:
    """``defaults`` with the settings a resumed run recorded and no option sets (colour
    strength, plaid, and the filter's blur and size when not given): a run started with an
    earlier release's defaults resumes with them, so it gives the files it would have given
    (the colour strength default went from 0.2 to 0.3)."""
    values: dict[str, Any] = {}
    for name in ("kernel_size", "blur", "colour", "plaid_eps"):
        if isinstance(earlier.get(name), (int, float)):
            values[name] = earlier[name]
    cycles = earlier.get("plaid_cycles")
    if isinstance(cycles, (list, tuple)) and len(cycles) == 2:
        values["plaid_cycles"] = (float(cycles[0]), float(cycles[1]))
    return replace(defaults, **values) if values else defaults
