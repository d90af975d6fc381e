"""Unlearnable Clusters (UC; Zhang et al., CVPR 2023): a label-agnostic protection.

UC never looks at labels. It (1) embeds every image with a frozen surrogate, (2) groups the
embeddings into K clusters with k-means, and (3) learns one perturbation ``delta_k`` per cluster,
``||delta_k||_inf <= eps``, that pushes the surrogate features of the cluster's images toward the
centre of *another* cluster, ``(k + target_offset) mod K``. Every image of cluster k then carries
the same small pattern, an easy shortcut that any labelling correlated with the clusters (semantic
labels usually are) can be fitted from instead of the content. Implemented from
``shared/research/methods-protect.md`` Parts B and C (no code of the original release).

Pipeline (the functions of this module, in order)::

    features = extract_features(surrogate, images)                  # (N, D), surrogate.py
    result = cluster_features(features, k, key)                     # assignments, centres
    deltas = optimise_cluster_perturbations(surrogate, images_S, result, UCConfig(), key)
    protected = apply_cluster_perturbations(images, result.assignments[idx], deltas)

Choices and deviations from the released code (documented, see the dossier's pitfall numbers)
----------------------------------------------------------------------------------------------
* **k-means**: scikit-learn ``KMeans`` (k-means++, ``n_init=10`` fixed so results do not depend
  on the sklearn version's default, ``max_iter=300``) on float64 copies of the raw features;
  ``random_state = key_seed(key, "uc/v1/kmeans") mod 2**32``. Above :data:`MINIBATCH_THRESHOLD`
  (20,000) images, ``MiniBatchKMeans`` (k-means++, ``n_init=3``, batch 4096) keeps time and
  memory in check; assignments are then ``predict`` on all features.
* **Parameterisation** (Part C.1): ``"tensor"`` (default) optimises ``delta_k = eps * tanh(w_k)``
  directly with Adam: a generator fed a fixed input is only a re-parameterisation of one tensor.
  ``"generator"`` is the paper's ResNet generator (:class:`ResNetGenerator`; ``ngf`` and the number
  of residual blocks are configurable, small by default for CPU), one per cluster, with a fixed
  input ``z_k ~ U(0, 1)`` drawn from the key and BatchNorm in train mode on a batch of one, as in
  the release (pitfall B.6-6: the returned delta is what must be stored, not the generator). Both
  bound the output with ``eps * tanh`` instead of the release's clamp after tanh, which has zero
  gradient wherever it saturates (pitfall B.6-5).
* **Loss**: ``KL(softmax(a / T) || softmax(f(x') / T))`` over the D feature dimensions, batch
  mean, with ``a`` the anchor centre and ``x' = aug(clamp(x + delta_k, 0, 1))``. The release uses
  ``T = 1`` on raw features, which is scale-sensitive: on low-magnitude or L2-normalised features
  the softmax is almost uniform and the loss is flat (pitfall B.6-8). ``temperature=None`` (the
  default) therefore sets ``T`` to the mean, over the centres, of each centre's standard deviation
  across dimensions, so the anchor logits ``a / T`` have unit spread whatever the feature scale;
  ``temperature=1.0`` reproduces the release.
* **Which images train delta_k** (pitfall B.6-1): ``members_only=True`` (default, paper-like) uses
  only the members of cluster k; the release trains every delta on the whole set
  (``members_only=False``). A cluster with no member among the given images falls back to all.
* **Augmentation**: random translation (reflect-pad ``max(1, S // 8)`` then crop back to S) and
  horizontal flip, applied to the *perturbed* image ``clamp(x + delta)``, i.e. what a scraper's
  crop+flip pipeline sees, so the pattern has to survive being shifted and mirrored with its image.
* **Scheduling**: all K perturbations are stepped together. Each step draws ``batch_size``
  members per cluster (or all of them if fewer; key-shuffled, cycling through epochs), so each
  delta_k gets exactly the update it would get if the clusters were optimised one after another
  (the losses do not interact), at K times fewer Python steps. Adam, cosine decay of the learning
  rate to 1 % over ``steps``. Forward passes are split into chunks of ``chunk_size`` images with
  gradient accumulation to bound memory.
* **Resolution**: perturbations are learned at ``resolution`` (default: the surrogate's input
  size) on images centre-cropped and resized to it, then resized to every image's own size when
  applied (bilinear, antialiased when shrinking; the release uses nearest for its ``noise`` resize
  mode). Bilinear weights are a convex combination, so the budget still holds; the result is
  re-clamped to ``[-eps, eps]`` anyway.

Randomness: every key-dependent draw comes from a dedicated generator derived from the key with a
context string: ``uc/v1/kmeans`` (k-means seed), ``uc/v1/subset`` (``max_per_cluster``
subsampling), ``uc/v1/init`` (initial ``w`` or generator weights and ``z``), ``uc/v1/batch-order``
and ``uc/v1/augment``. The global RNGs are never used, so a key gives the same clusters and, on
the same machine and library versions, the same perturbations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..keys import SecretKey, key_seed, numpy_generator, torch_generator
from .surrogate import Surrogate, resize_center_crop

ProgressCallback = Callable[[int, int | None], None]

METHOD_VERSION = 1
KMEANS_N_INIT = 10
KMEANS_MAX_ITER = 300
MINIBATCH_THRESHOLD = 20_000
"""Above this many images, :func:`cluster_features` uses ``MiniBatchKMeans``."""
MINIBATCH_N_INIT = 3
MINIBATCH_BATCH_SIZE = 4096

Parameterisation = Literal["tensor", "generator"]


# --------------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterResult:
    """k-means output: ``assignments (N,)`` int64 in ``[0, K)``, ``centers (K, D)`` float32."""

    assignments: np.ndarray
    centers: np.ndarray

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    def sizes(self) -> np.ndarray:
        """Members per cluster, ``(K,)`` int64."""
        return np.bincount(self.assignments, minlength=self.k).astype(np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ClusterResult:
        """The same clusters restricted to the images at ``indices`` (centres unchanged)."""
        return ClusterResult(self.assignments[np.asarray(indices, dtype=np.int64)], self.centers)


def _kmeans_seed(key: SecretKey) -> int:
    # scikit-learn accepts seeds in [0, 2**32).
    return key_seed(key, "uc/v1/kmeans") % (2**32)


def cluster_features(features: np.ndarray, k: int, key: SecretKey) -> ClusterResult:
    """Cluster ``features (N, D)`` into ``k`` groups with k-means++; deterministic per key.

    Uses ``KMeans(n_init=10, max_iter=300)`` up to :data:`MINIBATCH_THRESHOLD` images and
    ``MiniBatchKMeans`` above. Raises ``ValueError`` if ``N < k``, ``k < 1`` or features are not
    finite.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    data = np.asarray(features, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {data.shape}")
    if k < 1:
        raise ValueError(f"the number of clusters must be >= 1, got {k}")
    if data.shape[0] < k:
        raise ValueError(
            f"cannot make {k} clusters from {data.shape[0]} images: "
            "use fewer clusters or more images"
        )
    if not np.isfinite(data).all():
        raise ValueError("features contain NaN or infinite values")
    seed = _kmeans_seed(key)
    if data.shape[0] > MINIBATCH_THRESHOLD:
        model = MiniBatchKMeans(
            n_clusters=k,
            init="k-means++",
            n_init=MINIBATCH_N_INIT,
            batch_size=MINIBATCH_BATCH_SIZE,
            random_state=seed,
        )
    else:
        model = KMeans(
            n_clusters=k,
            init="k-means++",
            n_init=KMEANS_N_INIT,
            max_iter=KMEANS_MAX_ITER,
            random_state=seed,
        )
    model.fit(data)
    centers = model.cluster_centers_.astype(np.float32)
    assignments = model.predict(data).astype(np.int64)
    return ClusterResult(assignments=assignments, centers=centers)


def assign_clusters(features: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest centre (Euclidean) for each row of ``features (N, D)``: ``(N,)`` int64.

    For images added after clustering (they get the perturbation of their nearest cluster).
    """
    data = np.asarray(features, dtype=np.float64)
    ctr = np.asarray(centers, dtype=np.float64)
    if data.ndim != 2 or ctr.ndim != 2 or data.shape[1] != ctr.shape[1]:
        raise ValueError(f"features {data.shape} and centers {ctr.shape} do not match")
    distances = (data**2).sum(1, keepdims=True) - 2.0 * data @ ctr.T + (ctr**2).sum(1)[None, :]
    return distances.argmin(axis=1).astype(np.int64)


def normalized_mutual_info(
    assignments: Sequence[int] | np.ndarray, labels: Sequence[Any] | np.ndarray
) -> float:
    """Normalised mutual information in [0, 1] between cluster assignments and some labels.

    1 means the clusters are the labels up to renaming; 0 means independent. UC's effect on a
    scraper's labelling is expected to grow with this number (dossier Part C.5).
    """
    from sklearn.metrics import normalized_mutual_info_score

    a = np.asarray(assignments)
    b = np.asarray(labels)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"assignments {a.shape} and labels {b.shape} must be equal-length 1-D")
    return float(normalized_mutual_info_score(b, a))


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class UCConfig:
    """Settings of the perturbation optimisation (see the module docstring for the choices).

    eps: L-inf budget in [0, 1] units (paper: 16/255). steps: Adam steps (each updates every
    cluster's delta once). lr: Adam learning rate (None: 0.05 for ``"tensor"``, 1e-3 for
    ``"generator"``). batch_size: images *per cluster* per step. temperature: softmax temperature
    (None: automatic, see :func:`resolve_temperature`; 1.0: the release). augment: crop + flip
    while optimising. members_only: train delta_k on cluster k's members only (paper) or on all
    images (release). resolution: side of the learned deltas (None: the surrogate input size).
    max_per_cluster: cap on the images used per cluster (key-drawn subset), to bound cost on large
    sets. chunk_size: most images per forward pass (memory bound). init_scale: initial deltas are
    ``eps * init_scale * U(-1, 1)`` ("tensor"). generator_ngf / generator_blocks: width and residual
    blocks of the ResNet generator (paper: 64 / 6).
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
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if self.steps < 0:
            raise ValueError("steps must be >= 0")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError("batch_size and chunk_size must be >= 1")
        if self.parameterisation not in ("tensor", "generator"):
            raise ValueError(
                f"parameterisation must be 'tensor' or 'generator', got {self.parameterisation!r}"
            )
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.lr is not None and self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError("resolution must be >= 8")
        if self.max_per_cluster is not None and self.max_per_cluster < 1:
            raise ValueError("max_per_cluster must be >= 1")
        if not 0.0 <= self.init_scale < 1.0:
            raise ValueError("init_scale must be in [0, 1)")
        if self.generator_ngf < 1 or self.generator_blocks < 0:
            raise ValueError("generator_ngf must be >= 1 and generator_blocks >= 0")

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


def resolve_temperature(centers: np.ndarray, config: UCConfig) -> float:
    """The softmax temperature: ``config.temperature``, or the mean per-centre standard deviation
    across feature dimensions (so anchor logits have unit spread), or 1.0 if that is zero."""
    if config.temperature is not None:
        return float(config.temperature)
    spread = float(np.asarray(centers, dtype=np.float64).std(axis=1).mean())
    return spread if spread > 1e-12 and math.isfinite(spread) else 1.0


def anchor_indices(k: int, target_offset: int) -> np.ndarray:
    """Anchor cluster of each cluster: ``(arange(k) + target_offset) mod k``, ``(K,)`` int64."""
    return (np.arange(k, dtype=np.int64) + target_offset) % k


# --------------------------------------------------------------------------------------------
# Perturbation parameterisations
# --------------------------------------------------------------------------------------------


def _reset_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default conv init, but drawn from ``generator`` (never the global RNG)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                fan_in = layer.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """The ResNet image generator of the UC release (dossier B.2, table), width ``ngf``.

    stem (reflect-pad 3, 7x7 conv, BN, ReLU) -> two stride-2 3x3 convs (x2 channels each) ->
    ``blocks`` residual blocks -> two stride-2 transposed convs -> reflect-pad 3, 7x7 conv to 3
    channels (with bias). Maps ``(B, 3, H, W)`` to ``(B, 3, H, W)`` raw values (no output
    squashing; :class:`_GeneratorDeltas` applies ``eps * tanh``); H and W must be multiples of 4.
    Paper: ``ngf=64, blocks=6`` (about 7.8 M parameters).
    """

    def __init__(self, ngf: int = 64, blocks: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(inplace=True),
        ]
        channels = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels * 2),
                nn.ReLU(inplace=True),
            ]
            channels *= 2
        layers += [_ResidualBlock(channels) for _ in range(blocks)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(
                    channels, channels // 2, 3, stride=2, padding=1, output_padding=1, bias=False
                ),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, 3, 7, bias=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class _TensorDeltas(nn.Module):
    """``delta = eps * tanh(w)``, ``w (K, 3, S, S)``; initial deltas ``eps * init_scale * U(-1, 1)``."""

    def __init__(
        self, k: int, size: int, eps: float, init_scale: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.eps = eps
        u = torch.rand(k, 3, size, size, generator=generator, dtype=torch.float32) * 2.0 - 1.0
        self.w = nn.Parameter(torch.atanh(u * init_scale))

    def forward(self) -> Tensor:
        return self.eps * torch.tanh(self.w)


class _GeneratorDeltas(nn.Module):
    """One :class:`ResNetGenerator` per cluster on a fixed key-drawn input ``z_k ~ U(0, 1)``;
    ``delta_k = eps * tanh(G_k(z_k))`` (computed at a multiple of 4, cropped to S)."""

    def __init__(
        self, k: int, size: int, eps: float, ngf: int, blocks: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.eps = eps
        self.size = size
        padded = 4 * math.ceil(size / 4)
        with torch.random.fork_rng(devices=[]):  # module construction touches the global RNG
            self.generators = nn.ModuleList(ResNetGenerator(ngf, blocks) for _ in range(k))
        for net in self.generators:
            _reset_parameters(net, generator)
        z = torch.rand(k, 1, 3, padded, padded, generator=generator, dtype=torch.float32)
        self.register_buffer("z", z)

    def forward(self) -> Tensor:
        raw = torch.cat([net(self.z[i]) for i, net in enumerate(self.generators)])
        return self.eps * torch.tanh(raw[..., : self.size, : self.size])


def _build_deltas(k: int, size: int, config: UCConfig, key: SecretKey) -> nn.Module:
    generator = torch_generator(key, "uc/v1/init")
    if config.parameterisation == "tensor":
        return _TensorDeltas(k, size, config.eps, config.init_scale, generator)
    return _GeneratorDeltas(
        k, size, config.eps, config.generator_ngf, config.generator_blocks, generator
    )


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


def augment_batch(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random translation + horizontal flip, per image, drawn from ``generator``.

    images: ``(B, C, S, S)``; reflect-pad ``p = max(1, S // 8)`` and crop a random ``S x S``
    window (offsets in ``[0, 2p]``), then flip with probability 1/2. Differentiable; returns a
    new tensor.
    """
    batch, _, height, width = images.shape
    pad = max(1, min(height, width) // 8)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(images.device)
    flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
    rows = dy[:, None] + torch.arange(height, device=images.device)[None, :]  # (B, H)
    cols = torch.arange(width, device=images.device)[None, :].expand(batch, -1)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]  # (B, W)
    out = padded[
        torch.arange(batch, device=images.device)[:, None, None],
        :,
        rows[:, :, None],
        cols[:, None, :],
    ]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _kl_to_anchor(features: Tensor, log_p: Tensor, temperature: float) -> Tensor:
    """Per-sample ``KL(p || softmax(features / T))``: features ``(B, D)``, log_p ``(B, D)`` -> ``(B,)``."""
    log_q = F.log_softmax(features / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _prepare_images(images: Tensor, size: int) -> Tensor:
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise TypeError("images must be a float tensor with values in [0, 1]")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {tuple(images.shape)}")
    images = images.detach()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-2:] != (size, size):
        images = resize_center_crop(images, size)
    return images.to(torch.float32)


def _member_pools(
    assignments: np.ndarray, k: int, config: UCConfig, key: SecretKey
) -> list[np.ndarray]:
    """Indices of the images that train each delta (members, or all), capped by max_per_cluster."""
    everyone = np.arange(assignments.shape[0], dtype=np.int64)
    rng = numpy_generator(key, "uc/v1/subset")
    pools = []
    empty = []
    for cluster in range(k):
        pool = np.flatnonzero(assignments == cluster) if config.members_only else everyone
        if pool.size == 0:
            empty.append(cluster)
            pool = everyone
        if config.max_per_cluster is not None and pool.size > config.max_per_cluster:
            pool = np.sort(rng.choice(pool, size=config.max_per_cluster, replace=False))
        pools.append(pool.astype(np.int64))
    if empty:
        warnings.warn(
            f"clusters {empty} have no member among the given images; their perturbations are "
            "trained on all images",
            stacklevel=3,
        )
    return pools


def training_indices(result: ClusterResult, config: UCConfig, key: SecretKey) -> np.ndarray:
    """Sorted indices ``(M,)`` int64 of the images :func:`optimise_cluster_perturbations` will use.

    With ``max_per_cluster`` set this is a key-drawn subset, so a caller with a large set can
    load just these images and pass ``images[idx]`` with ``result.subset(idx)``: the
    optimisation then uses exactly the same images (each pool is already within the cap).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pools = _member_pools(result.assignments, result.k, config, key)
    return np.unique(np.concatenate(pools)).astype(np.int64)


class _Cycler:
    """Endless key-shuffled epochs over one pool of indices."""

    def __init__(self, pool: np.ndarray, generator: torch.Generator) -> None:
        self.pool = torch.from_numpy(pool)
        self.generator = generator
        self.order = self.pool[:0]

    def take(self, count: int) -> Tensor:
        while self.order.numel() < count:
            perm = torch.randperm(self.pool.numel(), generator=self.generator)
            self.order = torch.cat([self.order, self.pool[perm]])
        chosen, self.order = self.order[:count], self.order[count:]
        return chosen


def _check_inputs(surrogate: Surrogate, images: Tensor, result: ClusterResult) -> None:
    if result.assignments.shape != (images.shape[0],):
        raise ValueError(
            f"{images.shape[0]} images but {result.assignments.shape[0]} cluster assignments"
        )
    if result.centers.ndim != 2 or result.centers.shape[1] != surrogate.embed_dim:
        raise ValueError(
            f"cluster centres {result.centers.shape} are not in the surrogate's "
            f"{surrogate.embed_dim}-d feature space"
        )
    if result.assignments.size and (
        result.assignments.min() < 0 or result.assignments.max() >= result.k
    ):
        raise ValueError("cluster assignments must lie in [0, K)")
    if result.k < 2:
        raise ValueError("Unlearnable Clusters needs at least 2 clusters")


def optimise_cluster_perturbations(
    surrogate: Surrogate,
    images: Tensor,
    result: ClusterResult,
    config: UCConfig,
    key: SecretKey,
    progress: ProgressCallback | None = None,
) -> Tensor:
    """Learn one perturbation per cluster; returns ``(K, 3, S, S)`` float32 in ``[-eps, eps]``.

    images: ``(N, 1|3, H, W)`` float in [0, 1] (not modified; centre-cropped and resized to
    ``S = config.resolution or surrogate.input_size`` if needed); ``result.assignments`` gives
    each image's cluster and ``result.centers`` the anchors (in the surrogate's feature space, as
    given by :func:`~unlearnable.protect.surrogate.extract_features`). For each cluster k,
    minimises ``KL(softmax(c_t / T) || softmax(f(aug(clamp(x + delta_k, 0, 1))) / T))`` with
    ``t = (k + target_offset) mod K``. ``progress(step, steps)`` is called after every step. The
    result is on the images' device. ``steps=0`` returns the key-drawn initial perturbations.
    """
    size = config.resolution or surrogate.input_size
    _check_inputs(surrogate, images, result)
    if config.target_offset % result.k == 0:
        raise ValueError(
            f"target_offset {config.target_offset} maps every cluster onto itself for K={result.k}"
        )
    device = surrogate.device
    data = _prepare_images(images, size)  # stays where the caller keeps it; batches move
    k = result.k
    temperature = resolve_temperature(result.centers, config)
    anchors = torch.from_numpy(result.centers[anchor_indices(k, config.target_offset)]).to(device)
    log_p_anchor = F.log_softmax(anchors / temperature, dim=1)  # (K, D)

    deltas_module = _build_deltas(k, size, config, key).to(device)
    deltas_module.train()  # generator BN runs on its single input, as in the release
    if config.steps == 0:
        with torch.no_grad():
            return deltas_module().detach().to(images.device).clamp(-config.eps, config.eps)

    pools = _member_pools(result.assignments, k, config, key)
    order_gen = torch_generator(key, "uc/v1/batch-order")
    aug_gen = torch_generator(key, "uc/v1/augment")
    cyclers = [_Cycler(pool, order_gen) for pool in pools]
    per_cluster = [min(config.batch_size, pool.size) for pool in pools]
    cluster_of_sample = torch.repeat_interleave(torch.arange(k), torch.tensor(per_cluster)).to(
        device
    )  # (B,) fixed layout of each step's batch
    # Each cluster's mean loss counts equally: sample weight 1 / (K * m_k).
    weights = (1.0 / (k * torch.tensor(per_cluster, dtype=torch.float32)))[
        cluster_of_sample.cpu()
    ].to(device)

    optimiser = torch.optim.Adam(
        deltas_module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=config.steps, eta_min=config.learning_rate * 0.01
    )
    for step in range(config.steps):
        index = torch.cat([cycler.take(m) for cycler, m in zip(cyclers, per_cluster, strict=True)])
        optimiser.zero_grad(set_to_none=True)
        deltas = deltas_module()  # (K, 3, S, S)
        leaf = deltas.detach().requires_grad_(True)
        for start in range(0, index.numel(), config.chunk_size):
            stop = start + config.chunk_size
            clusters = cluster_of_sample[start:stop]
            batch = data[index[start:stop]].to(device)
            perturbed = (batch + leaf[clusters]).clamp(0.0, 1.0)
            if config.augment:
                perturbed = augment_batch(perturbed, aug_gen)
            kl = _kl_to_anchor(surrogate.features(perturbed), log_p_anchor[clusters], temperature)
            (kl * weights[start:stop]).sum().backward()
        deltas.backward(leaf.grad)
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, config.steps)

    with torch.no_grad():
        final = deltas_module().detach().clamp(-config.eps, config.eps)
    return final.to(images.device)


def cluster_kl_loss(
    surrogate: Surrogate,
    images: Tensor,
    result: ClusterResult,
    deltas: Tensor,
    config: UCConfig,
    batch_size: int = 256,
) -> np.ndarray:
    """Mean UC loss per cluster, ``(K,)`` float64, without augmentation or gradients.

    Evaluates ``KL(softmax(c_t / T) || softmax(f(clamp(x + delta_k, 0, 1)) / T))`` over the
    images that train ``delta_k`` under ``config`` (members or all; ``max_per_cluster`` ignored),
    with the same temperature rule as :func:`optimise_cluster_perturbations`. Lower is better.
    """
    size = deltas.shape[-1]
    _check_inputs(surrogate, images, result)
    device = surrogate.device
    data = _prepare_images(images, size)
    k = result.k
    temperature = resolve_temperature(result.centers, config)
    anchors = torch.from_numpy(result.centers[anchor_indices(k, config.target_offset)]).to(device)
    log_p_anchor = F.log_softmax(anchors / temperature, dim=1)
    deltas = deltas.to(device=device, dtype=torch.float32)
    losses = np.zeros(k, dtype=np.float64)
    everyone = np.arange(images.shape[0])
    with torch.no_grad():
        for cluster in range(k):
            pool = (
                np.flatnonzero(result.assignments == cluster) if config.members_only else everyone
            )
            if pool.size == 0:
                pool = everyone
            total = 0.0
            for start in range(0, pool.size, batch_size):
                batch = data[torch.from_numpy(pool[start : start + batch_size])].to(device)
                perturbed = (batch + deltas[cluster]).clamp(0.0, 1.0)
                kl = _kl_to_anchor(
                    surrogate.features(perturbed),
                    log_p_anchor[cluster].expand(batch.shape[0], -1),
                    temperature,
                )
                total += float(kl.sum())
            losses[cluster] = total / pool.size
    return losses


def random_cluster_perturbations(k: int, size: int, eps: float, key: SecretKey) -> Tensor:
    """Control baseline (dossier Part C.6): one uniform ``U(-eps, eps)`` pattern per cluster,
    ``(K, 3, size, size)`` float32, drawn from the key (context ``uc/v1/random-baseline``)."""
    generator = torch_generator(key, "uc/v1/random-baseline")
    return (torch.rand(k, 3, size, size, generator=generator) * 2.0 - 1.0) * eps


# --------------------------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------------------------


def apply_cluster_perturbations(
    images: Tensor,
    clusters: Tensor | np.ndarray | Sequence[int],
    deltas: Tensor,
    eps: float | None = None,
) -> Tensor:
    """Add each image's cluster perturbation: ``clamp(x + resize(delta_c), 0, 1)``.

    images: ``(B, C, H, W)`` float in [0, 1], C = 3 (RGB) or 1 (grey: the mean of the delta's
    channels is added); drop alpha before calling. clusters: ``(B,)`` int in ``[0, K)``. deltas:
    ``(K, 3, S, S)`` in ``[-eps, eps]``. Each delta is resized to ``H x W`` (bilinear,
    antialiased when shrinking; only the clusters present in the batch are resized) and clamped to
    ``[-eps, eps]`` (``eps`` defaults to ``max |deltas|``), so ``|out - x| <= eps`` on every pixel.
    Returns a new tensor with the images' dtype and device; the inputs are not modified.
    """
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise TypeError("images must be a float tensor with values in [0, 1]")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)} (drop alpha first)"
        )
    if deltas.ndim != 4 or deltas.shape[1] != 3:
        raise ValueError(f"expected deltas (K, 3, S, S), got {tuple(deltas.shape)}")
    if torch.is_tensor(clusters):
        ids = clusters.detach().to("cpu", torch.int64).reshape(-1)
    else:
        ids = torch.as_tensor(np.asarray(clusters), dtype=torch.int64).reshape(-1)
    if ids.numel() != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {ids.numel()} cluster ids")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= deltas.shape[0]):
        raise ValueError(f"cluster ids must lie in [0, {deltas.shape[0]})")
    bound = float(deltas.abs().max()) if eps is None else float(eps)
    height, width = images.shape[-2:]
    present, inverse = torch.unique(ids, return_inverse=True)
    patterns = deltas[present].to(device=images.device, dtype=torch.float32)
    if patterns.shape[-2:] != (height, width):
        shrinking = height < patterns.shape[-2] or width < patterns.shape[-1]
        patterns = F.interpolate(
            patterns,
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=shrinking,
        )
    patterns = patterns.clamp(-bound, bound)
    if images.shape[1] == 1:
        patterns = patterns.mean(dim=1, keepdim=True)
    out = images.to(torch.float32) + patterns[inverse.to(images.device)]
    return out.clamp(0.0, 1.0).to(images.dtype)


@dataclass
class ClusterProtector:
    """Applies learned cluster perturbations to batches; fits ``protect.folder.Protector``.

    ``deltas``: ``(K, 3, S, S)`` float32 numpy (picklable for worker processes); ``apply`` takes
    the *cluster ids* as ``label_ids``. ``settings``: extra manifest entries (surrogate, k,
    config, ...).
    """

    deltas: np.ndarray
    eps: float
    settings: dict[str, Any] = field(default_factory=dict)
    method: str = "uc"

    def parameters(self) -> dict[str, Any]:
        return {
            "method_version": METHOD_VERSION,
            "eps": self.eps,
            "clusters": int(self.deltas.shape[0]),
            "resolution": int(self.deltas.shape[-1]),
            **self.settings,
        }

    def plan(self, height: int, width: int) -> str:
        return "uc"

    def describe_plan(self, plan: str) -> dict[str, Any]:
        return {}

    def apply(self, images: Tensor, label_ids: Tensor, plan: str) -> Tensor:
        return apply_cluster_perturbations(
            images, label_ids, torch.from_numpy(self.deltas), self.eps
        )
