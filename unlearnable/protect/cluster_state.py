"""The saved clusters (and UC perturbations) of a folder, and the checks a resumed run makes.

:data:`CLUSTER_STATE_NAME` in the output folder is a versioned ``.npz`` cache
(:mod:`unlearnable.io.npz_cache`, no pickle) with identity fields ``ids_sha256`` (the ordered
file ids of the clustered images), ``surrogate`` (its ``cache_id``), ``key_fingerprint`` and
``k``, and arrays ``assignments (M,)`` int64, ``centers (K, D)`` float32, ``uc_config`` (the UC
settings as sorted JSON, empty for CUDA on clusters) and ``deltas (K, 3, S, S)`` float32 (empty
for CUDA on clusters). The clusters are reused when the identity matches; the perturbations only
when the UC settings match too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.hashing import sha256_strings
from ..io.journal import JOURNAL_NAME, read_journal
from ..io.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest
from ..io.npz_cache import load_npz_cache, save_npz_cache
from ..io.runner import ProtectUsageError
from ..keys import SecretKey
from .clusters import ClusterResult
from .surrogate import Surrogate
from .uc_config import UCConfig

FEATURE_CACHE_NAME = "unlearnable-features.npz"
"""Surrogate features of the input files, in the output folder (see :mod:`.feature_cache`)."""
CLUSTER_STATE_NAME = "unlearnable-clusters.npz"
"""Cluster assignment, centres and (UC) perturbations, in the output folder."""
RUN_FILES = (FEATURE_CACHE_NAME, CLUSTER_STATE_NAME)
"""The sidecar files a clustering run writes into the output folder before the images."""
STATE_VERSION = 1


@dataclass
class SavedState:
    """Clusters read back from the state file; ``deltas`` is None unless the UC settings match."""

    assignments: np.ndarray
    centers: np.ndarray
    deltas: np.ndarray | None


def config_json(config: UCConfig) -> dict[str, Any]:
    """The UC settings as recorded in the manifest and the state file."""
    return asdict(config)


def _config_text(config: UCConfig | None) -> str:
    return "" if config is None else json.dumps(config_json(config), sort_keys=True)


def assignments_digest(files: Sequence[str], assignments: np.ndarray) -> str:
    """SHA-256 over ``path NUL cluster LF`` for every clustered file, in order."""
    digest = hashlib.sha256()
    for path, cluster in zip(files, assignments.tolist(), strict=True):
        digest.update(f"{path}\x00{int(cluster)}\n".encode())
    return digest.hexdigest()


def _identity(file_ids: list[str], surrogate_id: str, key: SecretKey, k: int) -> dict[str, Any]:
    return {
        "ids_sha256": sha256_strings(file_ids),
        "surrogate": surrogate_id,
        "key_fingerprint": key.fingerprint,
        "k": k,
    }


def save_state(
    path: Path,
    file_ids: list[str],
    surrogate_id: str,
    key: SecretKey,
    result: ClusterResult,
    config: UCConfig | None,
    deltas: np.ndarray | None,
) -> None:
    """Write the clusters (and perturbations, for UC) of the files ``file_ids`` atomically."""
    arrays = {
        "assignments": result.assignments.astype(np.int64),
        "centers": result.centers.astype(np.float32),
        "uc_config": np.array(_config_text(config)),
        "deltas": np.zeros((0,), dtype=np.float32) if deltas is None else deltas.astype(np.float32),
    }
    identity = _identity(file_ids, surrogate_id, key, result.k)
    save_npz_cache(path, STATE_VERSION, identity, arrays)


def load_state(
    path: Path,
    file_ids: list[str],
    surrogate_id: str,
    key: SecretKey,
    k: int,
    config: UCConfig | None,
) -> SavedState | None:
    """The saved clusters (and perturbations when the UC settings match), or None."""
    arrays = load_npz_cache(path, STATE_VERSION, _identity(file_ids, surrogate_id, key, k))
    if arrays is None:
        return None
    try:
        assignments = np.asarray(arrays["assignments"], dtype=np.int64)
        centers = np.asarray(arrays["centers"], dtype=np.float32)
        deltas = np.asarray(arrays["deltas"], dtype=np.float32)
        same_config = str(arrays["uc_config"]) == _config_text(config)
    except (KeyError, ValueError, TypeError):
        return None
    if (
        assignments.shape != (len(file_ids),)
        or centers.ndim != 2
        or centers.shape[0] != k
        or (assignments.size and (assignments.min() < 0 or assignments.max() >= k))
    ):
        return None
    usable = config is not None and same_config and deltas.ndim == 4 and deltas.shape[0] == k
    return SavedState(assignments, centers, deltas if usable else None)


def earlier_clustering(output_dir: Path, key: SecretKey) -> dict[str, Any] | None:
    """The ``clustering`` entry of the run a resume continues (after a key check), or None when
    ``output_dir`` holds no run yet. Read from the run's journal when there is one (a run
    stopped before its manifest was written, or a resume stopped again: the journal is the
    newer record), else from its manifest."""
    earlier = _earlier_run(output_dir)
    if earlier is None:
        return None
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


def _earlier_run(output_dir: Path) -> Manifest | None:
    """The identity of the run recorded in ``output_dir``: its journal's header, else its
    manifest; None when there is neither."""
    journal_path, manifest_path = output_dir / JOURNAL_NAME, output_dir / MANIFEST_NAME
    try:
        if journal_path.is_file():
            return read_journal(journal_path)[0]
        if manifest_path.is_file():
            return read_manifest(manifest_path)
    except ManifestError as exc:
        raise ProtectUsageError(f"--resume: {exc}") from None
    return None


def check_same_request(
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
    wanted = None if config is None else config_json(config)
    if earlier_config != wanted:
        raise ProtectUsageError(
            "--resume: the output folder was made with other settings (method, eps or UC "
            "steps); use the same ones, or another output folder"
        )
