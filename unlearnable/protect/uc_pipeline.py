"""Cluster a folder with a surrogate and build its protector: the clustering half of ``protect``.

Used by the ``uc`` (Unlearnable Clusters) and ``cluster-cuda`` (CUDA with the surrogate's
clusters as classes, label-agnostic) methods of :func:`unlearnable.protect.protect_directory`.
:func:`cluster_folder` does, in order:

1. read every file and hash it (SHA-256); the file ids ``"relative/path:<sha256>"`` key the caches;
2. embed every image with the surrogate (decoded, grey repeated to RGB, alpha dropped,
   centre-cropped and resized to the surrogate's input size by its own resize, in batches), or
   take the embeddings from the feature cache :data:`FEATURE_CACHE_NAME` in the output folder;
3. k-means into ``k`` clusters from the key
   (:func:`~unlearnable.protect.clusters.cluster_features`);
4. for UC, learn one perturbation per cluster
   (:func:`~unlearnable.protect.uc_optimise.optimise_cluster_perturbations`) on the images it
   needs (:func:`~unlearnable.protect.uc_optimise.training_indices`), prepared at
   the perturbation resolution and stored as uint8 (the same pixels whether or not the features
   came from the cache, so a resumed run learns exactly what a fresh one learns).

Clusters (and, for UC, the perturbations) are saved in :data:`CLUSTER_STATE_NAME`
(:mod:`.cluster_state`) next to the feature cache. Both files are only reused when they match:
the cache checks the ordered file ids and the surrogate's ``cache_id``; the state also checks
the key's fingerprint, ``k`` and the UC settings. Same key, same surrogate, same files: same
clusters and perturbations, hence (through
:class:`~unlearnable.protect.clusters.ClusterProtector`, which resizes each cluster's
perturbation to every image's own size) identical output files.

A file that cannot be decoded gets a row of NaN in the feature cache (so the cache still covers
every readable file) and is reported in :attr:`FolderClusters.problems`; it is not clustered.

Threads: the work runs with ``threads`` torch threads (default: the current setting, capped at
the CPUs this process may use); the caller's setting is restored afterwards.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..io.executors import default_workers as available_cpus
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.runner import FolderJob, Protector, ProtectUsageError, check_output_folder
from ..keys import SecretKey
from .cluster_state import (
    CLUSTER_STATE_NAME,
    FEATURE_CACHE_NAME,
    RUN_FILES,
    assignments_digest,
    check_same_request,
    config_json,
    earlier_clustering,
    load_state,
    save_state,
)
from .clusters import ClusterProtector, ClusterResult, cluster_features
from .feature_cache import load_feature_cache, save_feature_cache
from .feature_pass import (
    ImageSource,
    StageProgress,
    as_source,
    decode_errors,
    extract_folder_features,
    hash_files,
    load_prepared,
)
from .surrogate import Surrogate, load_surrogate
from .uc_config import DEFAULT_CLUSTERS, DEFAULT_SURROGATE, UCConfig
from .uc_optimise import optimise_cluster_perturbations, training_indices

if TYPE_CHECKING:
    from .methods import MethodContext

FeatureExtractor = Callable[..., "tuple[np.ndarray, Tensor | None, dict[str, str]]"]
"""``extract(source, files, model, resolution, max_pixels, batch_size, report)`` as
:func:`~unlearnable.protect.feature_pass.extract_folder_features`."""

CLUSTER_PREFIX = "cluster-"
CLUSTER_LABEL_MODE = "clusters"
"""The manifest's label mode for methods whose classes are the surrogate's clusters."""

__all__ = [
    "CLUSTER_STATE_NAME",
    "DEFAULT_CLUSTERS",
    "DEFAULT_SURROGATE",
    "FEATURE_CACHE_NAME",
    "RUN_FILES",
    "FolderClusters",
    "StageProgress",
    "available_cpus",
    "cluster_folder",
    "cluster_for_method",
    "cluster_names",
    "torch_threads",
]


def cluster_names(k: int) -> list[str]:
    """The label names of ``k`` clusters: ``cluster-0`` ... ``cluster-{k-1}`` (index = cluster id)."""
    return [f"{CLUSTER_PREFIX}{index}" for index in range(k)]


@dataclass
class FolderClusters:
    """The clusters of a folder's images, and for UC their perturbations.

    ``files`` (clustered relative paths, sorted) align with ``assignments (M,)`` int64;
    ``centers (K, D)`` float32; ``deltas (K, 3, S, S)`` float32 in ``[-eps, eps]`` for UC, else
    None. ``problems`` maps files that could not be read or decoded to a message.
    """

    files: list[str]
    assignments: np.ndarray
    centers: np.ndarray
    problems: dict[str, str]
    surrogate_spec: str
    surrogate_name: str
    surrogate_id: str
    input_size: int
    embed_dim: int
    features_from_cache: bool
    feature_seconds: float
    deltas: np.ndarray | None = None
    uc_config: UCConfig | None = None
    state_from_cache: bool = False
    optimise_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    @property
    def class_names(self) -> list[str]:
        return cluster_names(self.k)

    @property
    def labels(self) -> dict[str, str]:
        """Relative path -> cluster name (the folder pipeline's labels)."""
        names = self.class_names
        return {
            path: names[c] for path, c in zip(self.files, self.assignments.tolist(), strict=True)
        }

    @property
    def cluster_of(self) -> dict[str, int]:
        """Relative path -> cluster id (recorded per file in the manifest)."""
        return dict(zip(self.files, (int(c) for c in self.assignments), strict=True))

    @property
    def sizes(self) -> list[int]:
        return np.bincount(self.assignments, minlength=self.k).astype(int).tolist()

    @property
    def assignments_sha256(self) -> str:
        return assignments_digest(self.files, self.assignments)

    @property
    def feature_images_per_second(self) -> float | None:
        if self.features_from_cache or self.feature_seconds <= 0:
            return None
        return len(self.files) / self.feature_seconds

    def protector(self) -> ClusterProtector:
        """The UC protector (label ids = cluster ids); needs the perturbations."""
        if self.deltas is None or self.uc_config is None:
            raise ValueError(
                "these clusters have no perturbations (cluster_folder(uc_config=None))"
            )
        return ClusterProtector(
            deltas=self.deltas,
            eps=self.uc_config.eps,
            settings={
                "surrogate": self.surrogate_spec,
                "surrogate_id": self.surrogate_id,
                "uc_config": config_json(self.uc_config),
                "perturbations_sha256": hashlib.sha256(self.deltas.tobytes()).hexdigest(),
            },
        )

    def folder_job(self, protector: Protector) -> FolderJob:
        """What the folder runner writes: every clustered file labelled with its cluster
        (label mode ``clusters``), the unreadable ones as problems, the ``clustering`` entry
        in the manifest, and the caches as this run's own files."""
        return FolderJob(
            protector=protector,
            labels=self.labels,
            classes=self.class_names,
            label_mode=CLUSTER_LABEL_MODE,
            problems=dict(self.problems),
            clusters=self.cluster_of,
            manifest_extra={"clustering": self.manifest_info()},
            run_files=RUN_FILES,
        )

    def manifest_info(self) -> dict[str, Any]:
        """The ``clustering`` entry of the manifest (JSON)."""
        rate = self.feature_images_per_second
        info: dict[str, Any] = {
            "surrogate": self.surrogate_spec,
            "surrogate_name": self.surrogate_name,
            "surrogate_id": self.surrogate_id,
            "input_size": self.input_size,
            "embed_dim": self.embed_dim,
            "k": self.k,
            "cluster_sizes": self.sizes,
            "assignments_sha256": self.assignments_sha256,
            "feature_cache": FEATURE_CACHE_NAME,
            "state_file": CLUSTER_STATE_NAME,
            "features_from_cache": self.features_from_cache,
            "feature_seconds": round(self.feature_seconds, 3),
            "feature_images_per_second": round(rate, 2) if rate else None,
            "state_from_cache": self.state_from_cache,
        }
        if self.uc_config is not None and self.deltas is not None:
            info["uc"] = {
                "eps": self.uc_config.eps,
                "eps_255": round(self.uc_config.eps * 255, 6),
                "config": config_json(self.uc_config),
                "resolution": int(self.deltas.shape[-1]),
                "optimise_seconds": round(self.optimise_seconds, 3),
            }
        return info


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def cluster_folder(
    input_dir: str | Path | ImageSource,
    output_dir: str | Path,
    files: Sequence[str],
    key: SecretKey,
    surrogate: str | Surrogate = DEFAULT_SURROGATE,
    k: int = DEFAULT_CLUSTERS,
    *,
    uc_config: UCConfig | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_size: int = 64,
    threads: int | None = None,
    progress: StageProgress | None = None,
    extract: FeatureExtractor | None = None,
) -> FolderClusters:
    """Cluster the images ``files`` (relative paths below ``input_dir``, or the paths an
    :class:`~unlearnable.protect.feature_pass.ImageSource` reads, such as shard records) with
    ``surrogate``.

    ``surrogate`` is a spec for :func:`~unlearnable.protect.surrogate.load_surrogate` (loaded on
    ``device``, default CPU) or a :class:`Surrogate` (used where it is). With ``uc_config``, also
    learns the UC perturbations. Caches go to ``output_dir`` (see the module docstring), which
    must be empty (apart from earlier caches) unless ``resume``. Raises
    :class:`ProtectUsageError` for an invalid request (``k < 2``, fewer images than clusters, a
    folder that is not empty, a resume with another key or surrogate) and
    :class:`~unlearnable.protect.surrogate.SurrogateError` when the surrogate cannot be loaded.
    ``extract``: computes the features in place of
    :func:`~unlearnable.protect.feature_pass.extract_folder_features` (same arguments and
    result), e.g. on Ray actors (:meth:`unlearnable.engines.ray_engine.RayExecutor.extract_features`).
    """
    source, target = as_source(input_dir), Path(output_dir)
    files = sorted(files)
    if k < 2:
        raise ProtectUsageError(f"need at least 2 clusters, got {k}")
    if len(files) < k:
        raise ProtectUsageError(
            f"cannot make {k} clusters from {len(files)} images; use fewer clusters (--clusters)"
        )
    check_output_folder(target, resume, RUN_FILES)
    earlier = earlier_clustering(target, key) if resume else None
    if isinstance(surrogate, Surrogate):
        model = surrogate
    else:
        model = load_surrogate(surrogate, device or "cpu", allow_pickle=allow_pickle)
    if earlier is not None:
        check_same_request(earlier, model, k, uc_config)
    report = progress or _no_progress
    resolution = (uc_config.resolution if uc_config else None) or model.input_size

    with torch_threads(threads):
        started = time.perf_counter()
        readable, digests, problems = hash_files(source, files, report)
        ids = [f"{path}:{digest}" for path, digest in zip(readable, digests, strict=True)]
        cache_path = target / FEATURE_CACHE_NAME
        features = load_feature_cache(cache_path, ids, model.cache_id)
        kept: Tensor | None = None
        from_cache = features is not None
        feature_start = time.perf_counter()
        if features is None:
            features, kept, decode_problems = (extract or extract_folder_features)(
                source, readable, model, resolution, max_pixels, batch_size, report
            )
            target.mkdir(parents=True, exist_ok=True)
            save_feature_cache(cache_path, features, ids, model.cache_id)
        else:
            failed = [readable[i] for i in np.flatnonzero(np.isnan(features).any(axis=1))]
            decode_problems = decode_errors(source, failed, max_pixels)
        feature_seconds = time.perf_counter() - feature_start
        problems.update(decode_problems)

        valid = ~np.isnan(features).any(axis=1)
        ok_files = [path for path, good in zip(readable, valid, strict=True) if good]
        ok_ids = [file_id for file_id, good in zip(ids, valid, strict=True) if good]
        if len(ok_files) < k:
            raise ProtectUsageError(
                f"cannot make {k} clusters from {len(ok_files)} decodable images; "
                "use fewer clusters (--clusters)"
            )
        state_path = target / CLUSTER_STATE_NAME
        state = load_state(state_path, ok_ids, model.cache_id, key, k, uc_config)
        if state is not None:
            result = ClusterResult(state.assignments, state.centers)
        else:
            result = cluster_features(features[valid], k, key)

        deltas = state.deltas if state is not None else None
        optimise_seconds = 0.0
        if uc_config is not None and deltas is None:
            optimise_start = time.perf_counter()
            indices = training_indices(result, uc_config, key)
            if kept is not None:
                images_u8 = kept[torch.from_numpy(np.flatnonzero(valid)[indices])]
            else:
                chosen = [ok_files[i] for i in indices.tolist()]
                images_u8 = load_prepared(source, chosen, resolution, max_pixels)
            del kept
            deltas_t = optimise_cluster_perturbations(
                model,
                images_u8.float().div_(255.0),
                result.subset(indices),
                uc_config,
                key,
                progress=lambda done, total: report("perturbations", done, total),
            )
            deltas = deltas_t.detach().cpu().numpy().astype(np.float32)
            optimise_seconds = time.perf_counter() - optimise_start
        if state is None or (uc_config is not None and state.deltas is None):
            target.mkdir(parents=True, exist_ok=True)
            save_state(state_path, ok_ids, model.cache_id, key, result, uc_config, deltas)
        total_seconds = time.perf_counter() - started

    clusters = FolderClusters(
        files=ok_files,
        assignments=result.assignments.astype(np.int64),
        centers=result.centers.astype(np.float32),
        problems=problems,
        surrogate_spec=model.spec,
        surrogate_name=model.name,
        surrogate_id=model.cache_id,
        input_size=model.input_size,
        embed_dim=model.embed_dim,
        features_from_cache=from_cache,
        feature_seconds=feature_seconds,
        deltas=deltas if uc_config is not None else None,
        uc_config=uc_config,
        state_from_cache=state is not None,
        optimise_seconds=optimise_seconds,
        timings={"total_seconds": total_seconds},
    )
    if earlier is not None and earlier.get("assignments_sha256") not in (
        None,
        clusters.assignments_sha256,
    ):
        raise ProtectUsageError(
            "--resume: the clusters differ from those of the earlier run in this folder (the "
            "files or the library versions changed); use a new output folder"
        )
    return clusters


def cluster_for_method(
    context: MethodContext,
    surrogate: str | Surrogate,
    k: int,
    uc_config: UCConfig | None,
) -> FolderClusters:
    """:func:`cluster_folder` for a method's ``prepare``: the context's folders, files, key and
    run options (resume, device, allow_pickle, max_pixels, threads, stage progress)."""
    run = context.run
    return cluster_folder(
        context.input_dir,
        context.output_dir,
        context.files,
        context.key,
        surrogate,
        k,
        uc_config=uc_config,
        resume=run.resume,
        device=run.device,
        allow_pickle=run.allow_pickle,
        max_pixels=run.output.max_pixels,
        threads=run.threads,
        progress=context.stage_progress,
        extract=getattr(run.executor, "extract_features", None),
    )


def _no_progress(stage: str, done: int, total: int | None) -> None:
    return None


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` torch intra-op threads (default: the current setting
    capped at :func:`available_cpus`, which avoids oversubscription in containers); the caller's
    setting is restored afterwards. Yields the number used."""
    previous = torch.get_num_threads()
    wanted = threads if threads is not None else min(previous, available_cpus())
    if wanted < 1:
        raise ValueError(f"threads must be >= 1, got {wanted}")
    if wanted != previous:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
