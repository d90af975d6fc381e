"""Settings of Unlearnable Clusters, importable without torch (the CLI reads its defaults).

:class:`UCConfig` holds the perturbation optimisation's settings (see
:mod:`unlearnable.protect.uc_optimise` for what each choice means); :data:`DEFAULT_SURROGATE`
and :data:`DEFAULT_CLUSTERS` are the defaults of the methods that cluster with a surrogate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..errors import UsageError

DEFAULT_SURROGATE = "ViT-B-32:openai"
"""The paper-like surrogate (OpenAI CLIP ViT-B/32); its weights are downloaded on first use."""
DEFAULT_CLUSTERS = 10

Parameterisation = Literal["tensor", "generator"]


@dataclass(frozen=True)
class UCConfig:
    """Settings of the perturbation optimisation (see :mod:`.uc_optimise` for the choices).

    eps: L-inf budget in [0, 1] units (paper: 16/255). steps: Adam steps (each updates every
    cluster's delta once). lr: Adam learning rate (None: 0.05 for ``"tensor"``, 1e-3 for
    ``"generator"``). batch_size: images *per cluster* per step. temperature: softmax
    temperature (None: automatic, see :func:`~.uc_optimise.resolve_temperature`; 1.0: the
    release). augment: crop + flip while optimising. members_only: train delta_k on cluster k's
    members only (paper) or on all images (release). resolution: side of the learned deltas
    (None: the surrogate input size). max_per_cluster: cap on the images used per cluster
    (key-drawn subset), to bound cost on large sets. chunk_size: most images per forward pass
    (memory bound). init_scale: initial deltas are ``eps * init_scale * U(-1, 1)``
    ("tensor"). generator_ngf / generator_blocks: width and residual blocks of the ResNet
    generator (paper: 64 / 6).
    """

    eps: float = 16 / 255
    steps: int = 100
    lr: float | None = None
    batch_size: int = 32
    target_offset: int = 1
    temperature: float | None = None
    augment: bool = True
    parameterisation: Parameterisation = "tensor"
    members_only: bool = True
    resolution: int | None = None
    max_per_cluster: int | None = None
    chunk_size: int = 256
    weight_decay: float = 0.0
    init_scale: float = 0.5
    generator_ngf: int = 16
    generator_blocks: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.eps <= 1.0:
            raise UsageError(f"eps must be in (0, 1], got {self.eps}")
        if self.steps < 0:
            raise UsageError("steps must be >= 0")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise UsageError("batch_size and chunk_size must be >= 1")
        if self.parameterisation not in ("tensor", "generator"):
            raise UsageError(
                f"parameterisation must be 'tensor' or 'generator', got {self.parameterisation!r}"
            )
        if self.temperature is not None and self.temperature <= 0:
            raise UsageError("temperature must be > 0")
        if self.lr is not None and self.lr <= 0:
            raise UsageError("lr must be > 0")
        if self.resolution is not None and self.resolution < 8:
            raise UsageError("resolution must be >= 8")
        if self.max_per_cluster is not None and self.max_per_cluster < 1:
            raise UsageError("max_per_cluster must be >= 1")
        if not 0.0 <= self.init_scale < 1.0:
            raise UsageError("init_scale must be in [0, 1)")
        if self.generator_ngf < 1 or self.generator_blocks < 0:
            raise UsageError("generator_ngf must be >= 1 and generator_blocks >= 0")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.05 if self.parameterisation == "tensor" else 1e-3

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings for a manifest (``lr`` resolved)."""
        values = asdict(self)
        values["lr"] = self.learning_rate
        return values
