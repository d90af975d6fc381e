"""Unlearnable Clusters (UC; Zhang et al., CVPR 2023): clustering and applying the perturbations.

UC never looks at labels. It (1) embeds every image with a frozen surrogate, (2) groups the
embeddings into K clusters with k-means, and (3) learns one perturbation ``delta_k`` per cluster,
``||delta_k||_inf <= eps``, that pushes the surrogate features of the cluster's images toward the
centre of *another* cluster, ``(k + target_offset) mod K``. Every image of cluster k then carries
the same small pattern, an easy shortcut that any labelling correlated with the clusters (semantic
labels usually are) can be fitted from instead of the content. Implemented from
``shared/research/methods-protect.md`` Parts B and C (no code of the original release).

Pipeline (in order; step 3 lives in :mod:`unlearnable.protect.uc_optimise`)::

    features = extract_features(surrogate, images)                  # (N, D), surrogate.py
    result = cluster_features(features, k, key)                     # assignments, centres
    deltas = optimise_cluster_perturbations(surrogate, images_S, result, UCConfig(), key)
    protected = apply_cluster_perturbations(images, result.assignments[idx], deltas)

This module holds steps 2 and 4 and the folder protector (:class:`ClusterProtector`).

Choices and deviations from the released code (documented, see the dossier's pitfall numbers)
----------------------------------------------------------------------------------------------
* **k-means**: scikit-learn ``KMeans`` (k-means++, ``n_init=10`` fixed so results do not depend
  on the sklearn version's default, ``max_iter=300``) on float64 copies of the raw features;
  ``random_state = key_seed(key, "uc/v1/kmeans") mod 2**32``. Above :data:`MINIBATCH_THRESHOLD`
  (20,000) images, ``MiniBatchKMeans`` (k-means++, ``n_init=3``, batch 4096) keeps time and
  memory in check; assignments are then ``predict`` on all features.
* **Resolution**: perturbations are learned at ``resolution`` (default: the surrogate's input
  size) on images centre-cropped and resized to it, then resized to every image's own size when
  applied (bilinear, antialiased when shrinking; the release uses nearest for its ``noise`` resize
  mode). Bilinear weights are a convex combination, so the budget still holds; the result is
  re-clamped to ``[-eps, eps]`` anyway.

Randomness: the k-means seed comes from the key (context ``uc/v1/kmeans``); the global RNGs are
never used, so a key gives the same clusters on the same machine and library versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..keys import SecretKey, key_seed

METHOD_VERSION = 1
KMEANS_N_INIT = 10
KMEANS_MAX_ITER = 300
MINIBATCH_THRESHOLD = 20_000
"""Above this many images, :func:`cluster_features` uses ``MiniBatchKMeans``."""
MINIBATCH_N_INIT = 3
MINIBATCH_BATCH_SIZE = 4096

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
    """Applies learned cluster perturbations to batches; fits :class:`unlearnable.io.runner.Protector`.

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
