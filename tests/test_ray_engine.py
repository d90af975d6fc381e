"""The Ray engine: the same files and records as the local engine, resume after an interrupted
Ray run, retried workers without lost or duplicated records, and a clear message without Ray.

One local Ray instance (2 CPUs, no dashboard) is started per test session (per xdist worker).
"""

from __future__ import annotations

import builtins
import os
import tarfile
from pathlib import Path

import pytest

import unlearnable as ul
from unlearnable.cli import main
from unlearnable.engines.ray_engine import RayEngineError, RayExecutor
from unlearnable.protect.dataset import protect_dataset
from unlearnable.protect.methods import RunOptions

from .conftest import FIXED_KEY
from .test_formats import _identity, make_sets


@pytest.fixture(scope="session")
def ray_instance():
    ray = pytest.importorskip(
        "ray", reason='the Ray engine tests need ray (pip install "unlearnable[ray]")'
    )
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "unlearnable-manifest.json"
    }


@pytest.mark.parametrize("kind", ["folder", "webdataset", "parquet", "url"])
def test_ray_engine_matches_the_local_engine(tmp_path, ray_instance, kind):
    sets = make_sets(tmp_path)
    source = sets["parquet"].as_uri() if kind == "url" else sets[kind]  # fsspec in the workers
    local = protect_dataset(source, tmp_path / "local", FIXED_KEY, "cuda", RunOptions(workers=1))
    remote = protect_dataset(
        source, tmp_path / "ray", FIXED_KEY, "cuda", RunOptions(executor=RayExecutor())
    )
    assert [r.path for r in remote.manifest.files] == [r.path for r in local.manifest.files]
    assert [_identity(r) for r in remote.manifest.files] == [
        _identity(r) for r in local.manifest.files
    ]
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_resume_after_an_interrupted_ray_run(tmp_path, ray_instance):
    shards = make_sets(tmp_path, count=12)["webdataset"]
    clean = protect_dataset(shards, tmp_path / "clean", FIXED_KEY, "cuda", RunOptions(workers=1))

    def stop(done, total):
        raise KeyboardInterrupt

    engine = RunOptions(executor=RayExecutor())
    with pytest.raises(KeyboardInterrupt):
        protect_dataset(shards, tmp_path / "out", FIXED_KEY, "cuda", engine, progress=stop)
    resumed = protect_dataset(
        shards,
        tmp_path / "out",
        FIXED_KEY,
        "cuda",
        RunOptions(executor=RayExecutor(), resume=True),
    )
    assert resumed.manifest.summary["resumed"] >= 6
    assert [_identity(r) for r in resumed.manifest.files] == [
        _identity(r) for r in clean.manifest.files
    ]
    for name in ("train-0000.tar", "train-0001.tar"):
        assert _members(tmp_path / "out" / name) == _members(tmp_path / "clean" / name)


def _die_once(marker_dir: str, item: int) -> int:
    """Kill this worker process on the first attempt of each item (a lost worker)."""
    marker = Path(marker_dir) / f"{item}.started"
    if not marker.exists():
        marker.write_text("x")
        os._exit(1)
    return item * 10


def _lost(item: int, message: str) -> int:
    return -item


def test_a_lost_worker_is_retried_without_duplicates(tmp_path, ray_instance):
    results = list(RayExecutor(max_retries=2).run(_die_once, str(tmp_path), [1, 2], _lost))
    assert sorted(results) == [10, 20]
    spent = tmp_path / "spent"
    spent.mkdir()
    results = list(RayExecutor(max_retries=0).run(_die_once, str(spent), [4], _lost))
    assert results == [-4]  # retries spent: reported as lost, not raised


def test_cli_engine_ray(tmp_path, ray_instance, runner):
    shards = make_sets(tmp_path)["webdataset"]
    key = tmp_path / "k.bin"
    ul.write_key_file(key)
    result = runner.invoke(
        main,
        [
            "protect",
            str(shards),
            "-o",
            str(tmp_path / "o"),
            "--key",
            str(key),
            "--engine",
            "ray",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "train-0001.tar").exists()


def test_ray_missing_gives_a_clear_message(tmp_path, monkeypatch, runner):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RayEngineError, match=r'pip install "unlearnable\[ray\]"'):
        RayExecutor()
    key = tmp_path / "k.bin"
    ul.write_key_file(key)
    folder = make_sets(tmp_path)["folder"]
    result = runner.invoke(
        main,
        ["protect", str(folder), "-o", str(tmp_path / "o"), "--key", str(key), "--engine", "ray"],
    )
    assert result.exit_code == 2 and "unlearnable[ray]" in result.output
    assert "Traceback" not in result.output


def test_uc_on_ray_actors_matches_the_local_run(tmp_path, ray_instance, monkeypatch):
    """Features on Ray actors (one torch thread each), k-means and the optimisation once on the
    driver, protection in Ray tasks: the same clusters, files and records as a local run."""
    import warnings

    import torch

    from unlearnable.engines import ray_features
    from unlearnable.protect.surrogate import WeakSurrogateWarning

    from .test_protect_uc import image_digests, make_flat_folder

    source = make_flat_folder(tmp_path / "in")
    method = ul.UCMethodConfig(surrogate="random", clusters=3, uc=ul.UCConfig(steps=2))
    calls = []
    real = ray_features.extract_features_on_ray
    monkeypatch.setattr(
        ray_features, "extract_features_on_ray", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WeakSurrogateWarning)
            local = protect_dataset(
                source, tmp_path / "local", FIXED_KEY, method, RunOptions(workers=1, threads=1)
            )
            remote = protect_dataset(
                source,
                tmp_path / "ray",
                FIXED_KEY,
                method,
                RunOptions(executor=RayExecutor(), threads=1),
            )
    finally:
        torch.set_num_threads(previous)
    assert calls == [1]  # the features came from the actors
    clustering = remote.manifest.extra["clustering"]
    assert (
        clustering["assignments_sha256"] == local.manifest.extra["clustering"]["assignments_sha256"]
    )
    assert [_identity(r) for r in remote.manifest.files] == [
        _identity(r) for r in local.manifest.files
    ]
    assert image_digests(tmp_path / "ray") == image_digests(tmp_path / "local")
