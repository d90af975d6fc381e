"""Cluster a folder with a surrogate and build its protector: the clustering half of ``protect``.

Used by :func:`unlearnable.protect.protect_directory` for ``method="uc"`` (Unlearnable Clusters)
and for ``labels="clusters"`` (CUDA with the surrogate's clusters as classes, label-agnostic).
:func:`cluster_folder` does, in order:

1. read every file and hash it (SHA-256); the file ids ``"relative/path:<sha256>"`` key the caches;
2. embed every image with the surrogate (decoded, grey repeated to RGB, alpha dropped,
   centre-cropped and resized to the surrogate's input size by its own resize, in batches), or
   take the embeddings from the feature cache :data:`FEATURE_CACHE_NAME` in the output folder;
3. k-means into ``k`` clusters from the key (:func:`~unlearnable.protect.clusters.cluster_features`);
4. for UC, learn one perturbation per cluster (:func:`~unlearnable.protect.clusters.optimise_cluster_perturbations`)
   on the images it needs (:func:`~unlearnable.protect.clusters.training_indices`), prepared at
   the perturbation resolution and stored as uint8 (the same pixels whether or not the features
   came from the cache, so a resumed run learns exactly what a fresh one learns).

Clusters (and, for UC, the perturbations) are saved in :data:`CLUSTER_STATE_NAME` (``.npz``,
no pickle) next to the feature cache. Both files are only reused when they match: the cache
checks the ordered file ids and the surrogate's ``cache_id``; the state also checks the key's
fingerprint, ``k`` and the UC settings. Same key, same surrogate, same files: same clusters and
perturbations, hence (through :class:`~unlearnable.protect.clusters.ClusterProtector`, which
resizes each cluster's perturbation to every image's own size) identical output files.

A file that cannot be decoded gets a row of NaN in the feature cache (so the cache still covers
every readable file) and is reported in :attr:`FolderClusters.problems`; it is not clustered.

Threads: the work runs with ``threads`` torch threads (default: the current setting, capped at
the CPUs this process may use); the caller's setting is restored afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..imageops import square_rgb, to_uint8
from ..io.atomic import atomic_write_bytes
from ..io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..io.manifest import MANIFEST_NAME, ManifestError, read_manifest
from ..keys import SecretKey
from .clusters import (
    ClusterProtector,
    ClusterResult,
    UCConfig,
    cluster_features,
    optimise_cluster_perturbations,
    training_indices,
)
from .feature_cache import file_ids_digest, load_feature_cache, save_feature_cache
from .folder import ProtectUsageError, check_output_folder
from .surrogate import Surrogate, load_surrogate

FEATURE_CACHE_NAME = "unlearnable-features.npz"
"""Surrogate features of the input files, in the output folder (see :mod:`.feature_cache`)."""
CLUSTER_STATE_NAME = "unlearnable-clusters.npz"
"""Cluster assignment, centres and (UC) perturbations, in the output folder."""
RUN_FILES = (FEATURE_CACHE_NAME, CLUSTER_STATE_NAME)
"""The sidecar files a clustering run writes into the output folder before the images."""

DEFAULT_SURROGATE = "ViT-B-32:openai"
"""The paper-like surrogate (OpenAI CLIP ViT-B/32); its weights are downloaded on first use."""
DEFAULT_CLUSTERS = 10
CLUSTER_PREFIX = "cluster-"
STATE_VERSION = 1
KEEP_IMAGES_BYTES = 1 << 31
"""Prepared images are kept from the feature pass for the optimisation up to this many bytes;
above it, the images the optimisation needs are decoded again."""
DECODE_THREADS = 4

StageProgress = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)`` with stage ``reading``, ``features`` or ``perturbations``."""


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
        return _assignments_digest(self.files, self.assignments)

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
                "uc_config": _config_json(self.uc_config),
                "perturbations_sha256": hashlib.sha256(self.deltas.tobytes()).hexdigest(),
            },
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
                "config": _config_json(self.uc_config),
                "resolution": int(self.deltas.shape[-1]),
                "optimise_seconds": round(self.optimise_seconds, 3),
            }
        return info


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def cluster_folder(
    input_dir: str | Path,
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
) -> FolderClusters:
    """Cluster the images ``files`` (relative paths below ``input_dir``) with ``surrogate``.

    ``surrogate`` is a spec for :func:`~unlearnable.protect.surrogate.load_surrogate` (loaded on
    ``device``, default CPU) or a :class:`Surrogate` (used where it is). With ``uc_config``, also
    learns the UC perturbations. Caches go to ``output_dir`` (see the module docstring), which
    must be empty (apart from earlier caches) unless ``resume``. Raises
    :class:`ProtectUsageError` for an invalid request (``k < 2``, fewer images than clusters, a
    folder that is not empty, a resume with another key or surrogate) and
    :class:`~unlearnable.protect.surrogate.SurrogateError` when the surrogate cannot be loaded.
    """
    source, target = Path(input_dir), Path(output_dir)
    files = sorted(files)
    if k < 2:
        raise ProtectUsageError(f"need at least 2 clusters, got {k}")
    if len(files) < k:
        raise ProtectUsageError(
            f"cannot make {k} clusters from {len(files)} images; use fewer clusters (--clusters)"
        )
    check_output_folder(target, resume, RUN_FILES)
    earlier = _earlier_clustering(target, key) if resume else None
    if isinstance(surrogate, Surrogate):
        model = surrogate
    else:
        model = load_surrogate(surrogate, device or "cpu", allow_pickle=allow_pickle)
    if earlier is not None:
        _check_same_request(earlier, model, k, uc_config)
    report = progress or _no_progress
    resolution = (uc_config.resolution if uc_config else None) or model.input_size

    with torch_threads(threads):
        started = time.perf_counter()
        readable, digests, problems = _hash_files(source, files, report)
        ids = [f"{path}:{digest}" for path, digest in zip(readable, digests, strict=True)]
        cache_path = target / FEATURE_CACHE_NAME
        features = load_feature_cache(cache_path, ids, model.cache_id)
        kept: Tensor | None = None
        from_cache = features is not None
        feature_start = time.perf_counter()
        if features is None:
            features, kept, decode_problems = _extract(
                source, readable, model, resolution, max_pixels, batch_size, report
            )
            target.mkdir(parents=True, exist_ok=True)
            save_feature_cache(cache_path, features, ids, model.cache_id)
        else:
            failed = [readable[i] for i in np.flatnonzero(np.isnan(features).any(axis=1))]
            decode_problems = _decode_errors(source, failed, max_pixels)
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
        state = _load_state(state_path, ok_ids, model.cache_id, key, k, uc_config)
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
                images_u8 = _load_prepared(source, chosen, resolution, max_pixels)
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
            _save_state(state_path, ok_ids, model.cache_id, key, result, uc_config, deltas)
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


def _no_progress(stage: str, done: int, total: int | None) -> None:
    return None


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


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


# --------------------------------------------------------------------------------------------
# Reading and preparing images
# --------------------------------------------------------------------------------------------


def _hash_files(
    source: Path, files: list[str], report: StageProgress
) -> tuple[list[str], list[str], dict[str, str]]:
    """SHA-256 of every readable file: (readable paths, digests, problems of the others)."""

    def digest(path: str) -> str | OSError:
        hasher = hashlib.sha256()
        try:
            with (source / path).open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
        except OSError as exc:
            return exc
        return hasher.hexdigest()

    readable: list[str] = []
    digests: list[str] = []
    problems: dict[str, str] = {}
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for done, (path, result) in enumerate(
            zip(files, pool.map(digest, files), strict=True), start=1
        ):
            if isinstance(result, OSError):
                problems[path] = f"cannot read file: {result.strerror or result}"
            else:
                readable.append(path)
                digests.append(result)
            if done % 256 == 0 or done == len(files):
                report("reading", done, len(files))
    return readable, digests, problems


@dataclass
class _Prepared:
    path: str
    surrogate_input: Tensor | None = None  # (3, S_in, S_in) float
    training: Tensor | None = None  # (3, R, R) uint8
    error: str | None = None


def _prepare_file(
    source: Path, path: str, input_size: int, resolution: int | None, max_pixels: int
) -> _Prepared:
    try:
        decoded = decode_image((source / path).read_bytes(), max_pixels)
    except OSError as exc:
        return _Prepared(path, error=f"cannot read file: {exc.strerror or exc}")
    except ImageDecodeError as exc:
        return _Prepared(path, error=str(exc))
    item = _Prepared(path)
    if input_size:
        item.surrogate_input = square_rgb(decoded.pixels, input_size)
    if resolution:
        if resolution == input_size and item.surrogate_input is not None:
            item.training = to_uint8(item.surrogate_input)
        else:
            item.training = to_uint8(square_rgb(decoded.pixels, resolution))
    return item


def _extract(
    source: Path,
    files: list[str],
    model: Surrogate,
    resolution: int,
    max_pixels: int,
    batch_size: int,
    report: StageProgress,
) -> tuple[np.ndarray, Tensor | None, dict[str, str]]:
    """Features ``(N, D)`` (NaN rows for undecodable files), the prepared uint8 images at
    ``resolution`` when they fit in :data:`KEEP_IMAGES_BYTES` (else None), and decode problems."""
    count = len(files)
    keep = count * 3 * resolution * resolution <= KEEP_IMAGES_BYTES
    features = np.full((count, model.embed_dim), np.nan, dtype=np.float32)
    kept = torch.zeros(count, 3, resolution, resolution, dtype=torch.uint8) if keep else None
    problems: dict[str, str] = {}
    done = 0
    report("features", 0, count)
    with ThreadPoolExecutor(DECODE_THREADS) as pool, torch.no_grad():
        for start in range(0, count, batch_size):
            chunk = files[start : start + batch_size]
            items = list(
                pool.map(
                    lambda path: _prepare_file(
                        source, path, model.input_size, resolution if keep else None, max_pixels
                    ),
                    chunk,
                )
            )
            good = [i for i, item in enumerate(items) if item.error is None]
            for item in items:
                if item.error is not None:
                    problems[item.path] = item.error
            if good:
                batch = torch.stack([items[i].surrogate_input for i in good])  # type: ignore[misc]
                embedded = model.embed(batch.to(model.device)).cpu().numpy()
                rows = np.asarray(good, dtype=np.int64) + start
                features[rows] = embedded
                if kept is not None:
                    for i in good:
                        kept[start + i] = items[i].training  # type: ignore[assignment]
            done += len(chunk)
            report("features", done, count)
    return features, kept, problems


def _decode_errors(source: Path, files: list[str], max_pixels: int) -> dict[str, str]:
    """The decode error of each file (files the feature cache marks as undecodable)."""
    problems: dict[str, str] = {}
    for path in files:
        item = _prepare_file(source, path, 0, None, max_pixels)
        problems[path] = item.error or "could not be decoded in an earlier run"
    return problems


def _load_prepared(source: Path, files: list[str], resolution: int, max_pixels: int) -> Tensor:
    """uint8 ``(M, 3, R, R)``: the images again, prepared exactly as in the feature pass."""
    out = torch.zeros(len(files), 3, resolution, resolution, dtype=torch.uint8)
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        items = pool.map(lambda path: _prepare_file(source, path, 0, resolution, max_pixels), files)
        for index, item in enumerate(items):
            if item.training is None:
                raise ProtectUsageError(
                    f"{item.path} changed while protecting: {item.error or 'unreadable'}"
                )
            out[index] = item.training
    return out


# --------------------------------------------------------------------------------------------
# The saved state (clusters and perturbations) and resume checks
# --------------------------------------------------------------------------------------------


@dataclass
class _State:
    assignments: np.ndarray
    centers: np.ndarray
    deltas: np.ndarray | None


def _config_json(config: UCConfig) -> dict[str, Any]:
    return asdict(config)


def _config_text(config: UCConfig | None) -> str:
    return "" if config is None else json.dumps(_config_json(config), sort_keys=True)


def _assignments_digest(files: Sequence[str], assignments: np.ndarray) -> str:
    digest = hashlib.sha256()
    for path, cluster in zip(files, assignments.tolist(), strict=True):
        digest.update(f"{path}\x00{int(cluster)}\n".encode())
    return digest.hexdigest()


def _save_state(
    path: Path,
    file_ids: list[str],
    surrogate_id: str,
    key: SecretKey,
    result: ClusterResult,
    config: UCConfig | None,
    deltas: np.ndarray | None,
) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        version=np.array(STATE_VERSION, dtype=np.int64),
        ids_sha256=np.array(file_ids_digest(file_ids)),
        surrogate=np.array(surrogate_id),
        key_fingerprint=np.array(key.fingerprint),
        k=np.array(result.k, dtype=np.int64),
        assignments=result.assignments.astype(np.int64),
        centers=result.centers.astype(np.float32),
        uc_config=np.array(_config_text(config)),
        deltas=(np.zeros((0,), dtype=np.float32) if deltas is None else deltas.astype(np.float32)),
    )
    atomic_write_bytes(path, buffer.getvalue())


def _load_state(
    path: Path,
    file_ids: list[str],
    surrogate_id: str,
    key: SecretKey,
    k: int,
    config: UCConfig | None,
) -> _State | None:
    """The saved clusters (and perturbations when the UC settings match), or None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if (
                int(data["version"]) != STATE_VERSION
                or str(data["ids_sha256"]) != file_ids_digest(file_ids)
                or str(data["surrogate"]) != surrogate_id
                or str(data["key_fingerprint"]) != key.fingerprint
                or int(data["k"]) != k
            ):
                return None
            assignments = np.asarray(data["assignments"], dtype=np.int64)
            centers = np.asarray(data["centers"], dtype=np.float32)
            deltas = np.asarray(data["deltas"], dtype=np.float32)
            same_config = str(data["uc_config"]) == _config_text(config)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if (
        assignments.shape != (len(file_ids),)
        or centers.ndim != 2
        or centers.shape[0] != k
        or (assignments.size and (assignments.min() < 0 or assignments.max() >= k))
    ):
        return None
    usable = config is not None and same_config and deltas.ndim == 4 and deltas.shape[0] == k
    return _State(assignments, centers, deltas if usable else None)


def _earlier_clustering(output_dir: Path, key: SecretKey) -> dict[str, Any] | None:
    """The ``clustering`` entry of the manifest a resumed run continues (after a key check)."""
    manifest_path = output_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        earlier = read_manifest(manifest_path)
    except ManifestError as exc:
        raise ProtectUsageError(f"--resume: {exc}") from None
    if earlier.key_fingerprint != key.fingerprint:
        raise ProtectUsageError(
            "--resume: the output folder was made with a different key; use the same key, or "
            "another output folder"
        )
    info = earlier.extra.get("clustering")
    if not isinstance(info, dict):
        raise ProtectUsageError(
            "--resume: the output folder was not made with clusters (--method uc or "
            "--labels clusters); use the same options, or another output folder"
        )
    return info


def _check_same_request(
    earlier: dict[str, Any], model: Surrogate, k: int, config: UCConfig | None
) -> None:
    """Fail before any expensive work when a resume asks for other clusters or UC settings."""
    if earlier.get("surrogate_id") != model.cache_id or earlier.get("k") != k:
        raise ProtectUsageError(
            f"--resume: the output folder was made with surrogate {earlier.get('surrogate')!r} "
            f"and {earlier.get('k')} clusters; use the same ones, or another output folder"
        )
    earlier_uc = earlier.get("uc")
    earlier_config = earlier_uc.get("config") if isinstance(earlier_uc, dict) else None
    wanted = None if config is None else _config_json(config)
    if earlier_config != wanted:
        raise ProtectUsageError(
            "--resume: the output folder was made with other settings (method, eps or UC "
            "steps); use the same ones, or another output folder"
        )
