"""Unlearnable Clusters, step 3: learn one perturbation per cluster (see :mod:`.clusters`).

For each cluster k, :func:`optimise_cluster_perturbations` minimises the KL divergence between
the softmax of the anchor centre ``(k + target_offset) mod K`` and that of the surrogate features
of the cluster's images plus ``delta_k``, with ``||delta_k||_inf <= eps``.

Choices and deviations from the released code (documented, see the dossier's pitfall numbers)
----------------------------------------------------------------------------------------------
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

Randomness: every key-dependent draw comes from a dedicated generator derived from the key with a
context string: ``uc/v1/subset`` (``max_per_cluster`` subsampling), ``uc/v1/init`` (initial ``w``
or generator weights and ``z``), ``uc/v1/batch-order`` and ``uc/v1/augment``. The global RNGs are
never used, so a key gives, on the same machine and library versions, the same perturbations.

Threads: the result does not depend on the number of torch threads. Each step gathers the
perturbation of every sample's cluster (many samples share one); the backward of a plain
``leaf[clusters]`` adds the samples' gradients with atomic adds in parallel on CPU, in an order
that changes with the threads (and from run to run), so the deltas, hence the output files,
differed in the last bits. :func:`_gather_rows` adds them one sample after another instead: the
same sums, in the same order, as one thread always gave (the perturbations of earlier one-thread
runs are unchanged). The surrogate's own forward and backward passes (matrix products,
convolutions) gave bit-identical results with 1 and 2 threads in our tests; BLAS and oneDNN do
not promise that for every shape and thread count, so a run that must be reproduced bit for bit
elsewhere is safest with the same number of threads (``RunOptions.threads``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..keys import SecretKey, numpy_generator, torch_generator
from .clusters import ClusterResult
from .surrogate import Surrogate, resize_center_crop
from .uc_config import UCConfig

ProgressCallback = Callable[[int, int | None], None]


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


class _GatherRows(torch.autograd.Function):
    """``source[index]`` along dim 0 whose backward adds the gradients of rows that share a
    source row one after another, in index order: deterministic whatever the threads (see the
    module docstring). source ``(K, ...)``, index ``(B,)`` int64 -> ``(B, ...)``."""

    @staticmethod
    def forward(ctx, source: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.rows = source.shape[0]
        return source[index]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        total = grad.new_zeros((ctx.rows, *grad.shape[1:]))
        for row, target in enumerate(index.tolist()):
            total[target] += grad[row]
        return total, None


def _gather_rows(source: Tensor, index: Tensor) -> Tensor:
    return _GatherRows.apply(source, index)


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
            perturbed = (batch + _gather_rows(leaf, clusters)).clamp(0.0, 1.0)
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
