"""Unlearnable Clusters at scale: surrogate features on Ray actors that hold the surrogate once.

:func:`extract_features_on_ray` has the signature and the result of
:func:`unlearnable.protect.feature_pass.extract_folder_features` (features ``(N, D)`` float32
with NaN rows for undecodable files, the prepared uint8 images ``(N, 3, R, R)`` when they fit in
memory, the decode problems), so :func:`~unlearnable.protect.uc_pipeline.cluster_folder` uses
either. ``source`` is a folder or an :class:`~unlearnable.protect.feature_pass.ImageSource`:
the records of WebDataset shards or Parquet files
(:class:`unlearnable.io.formats.source.RecordSource`), each actor keeping its own parsed
containers. The surrogate is put in Ray's object store once; ``actors`` actors (one CPU and one
torch thread each) load it once and embed blocks of :data:`BLOCK_BATCHES` batches of files
each, with that very function, so every batch holds the same images as in a local run. The
driver then clusters the gathered features (k-means, ``MiniBatchKMeans`` above 20,000 images)
and optimises the perturbations once; the protection itself runs as the executor's tasks.

With one torch thread on both sides the features equal those of a local run bit for bit (the
test suite checks it); with more threads on one side, float sums may be ordered differently,
which can move a k-means centre by a rounding error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..protect.feature_pass import (
    KEEP_IMAGES_BYTES,
    ImageSource,
    Source,
    StageProgress,
    as_source,
    extract_folder_features,
)
from ..protect.surrogate import Surrogate
from .ray_engine import connect

BLOCK_BATCHES = 4
"""Batches of ``batch_size`` files per actor call (folders; records: see :func:`_block_batches`)."""
BLOCKS_PER_ACTOR = 4
"""Record sources are cut into about this many blocks per actor."""


class _FeatureWorker:
    """Holds the surrogate (loaded once per actor) and embeds blocks of files."""

    def __init__(self, model: Surrogate) -> None:
        torch.set_num_threads(1)
        self.model = model.eval()

    def embed(
        self,
        source: str | ImageSource,
        start: int,
        files: list[str],
        resolution: int,
        max_pixels: int,
        batch_size: int,
        keep: bool,
    ) -> tuple[int, np.ndarray, np.ndarray | None, dict[str, str]]:
        features, kept, problems = extract_folder_features(
            as_source(source), files, self.model, resolution, max_pixels, batch_size, _silent
        )
        images = kept.numpy() if keep and kept is not None else None
        return start, features, images, problems


def _silent(stage: str, done: int, total: int | None) -> None:
    return None


def extract_features_on_ray(
    source: Source,
    files: list[str],
    model: Surrogate,
    resolution: int,
    max_pixels: int,
    batch_size: int,
    report: StageProgress,
    *,
    address: str | None = None,
    workers: int | None = None,
    actors: int | None = None,
) -> tuple[np.ndarray, torch.Tensor | None, dict[str, str]]:
    """Features of ``files`` below ``source`` on Ray actors (see the module docstring).

    ``actors``: how many (default: the cluster's CPUs, at most one per block). The surrogate
    must be on the CPU (a GPU surrogate is used locally instead), and the records readable by
    the actors (those of a ``memory://`` file system are embedded locally instead)."""
    if model.device.type != "cpu" or getattr(source, "process_local", False):
        return extract_folder_features(
            source, files, model, resolution, max_pixels, batch_size, report
        )
    ray = connect(address, workers)
    count = len(files)
    keep = count * 3 * resolution * resolution <= KEEP_IMAGES_BYTES
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    block = batch_size * _block_batches(source, count, batch_size, actors or cpus)
    starts = list(range(0, count, block))
    size = max(1, min(actors or cpus, len(starts)))
    worker_class = ray.remote(num_cpus=1)(_FeatureWorker)
    shared = ray.put(model)
    pool = [worker_class.remote(shared) for _ in range(size)]
    features = np.full((count, model.embed_dim), np.nan, dtype=np.float32)
    kept = torch.zeros(count, 3, resolution, resolution, dtype=torch.uint8) if keep else None
    problems: dict[str, str] = {}
    report("features", 0, count)
    pending: dict[Any, int] = {}
    queue = iter(starts)
    done = 0

    def submit(index: int, start: int) -> None:
        args = (source, files, start, block, resolution, max_pixels, batch_size, keep)
        pending[_submit(pool[index], *args)] = index

    try:
        for index, start in zip(range(size), queue, strict=False):
            submit(index, start)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            start, block_features, images, block_problems = ray.get(ready[0])
            rows = slice(start, start + block_features.shape[0])
            features[rows] = block_features
            if kept is not None and images is not None:
                kept[rows] = torch.from_numpy(np.array(images))
            problems.update(block_problems)
            done += block_features.shape[0]
            report("features", done, count)
            following = next(queue, None)
            if following is not None:
                submit(index, following)
    finally:
        for actor in pool:
            ray.kill(actor)
    return features, kept, problems


def _block_batches(source: Source, count: int, batch_size: int, actors: int) -> int:
    """Batches per actor call: :data:`BLOCK_BATCHES` for a folder; for records (an
    :class:`ImageSource`), larger blocks, about :data:`BLOCKS_PER_ACTOR` per actor, since an
    actor parses each container its block touches (shards of thousands of records would
    otherwise be read once per small block). Blocks start at multiples of ``batch_size`` either
    way, so every batch holds the same images as in a local run."""
    if isinstance(source, Path):
        return BLOCK_BATCHES
    per_actor = -(-count // (batch_size * actors * BLOCKS_PER_ACTOR))
    return max(BLOCK_BATCHES, per_actor)


def _submit(actor, source, files, start, block, resolution, max_pixels, batch_size, keep):
    where = str(source) if isinstance(source, Path) else source
    return actor.embed.remote(
        where, start, files[start : start + block], resolution, max_pixels, batch_size, keep
    )
