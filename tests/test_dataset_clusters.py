"""Unlearnable Clusters and CUDA on clusters over WebDataset shards and Parquet files: the same
clusters and protected pixels as the same images in a folder, on both engines.

Every run uses the ``random`` surrogate (a tiny randomly initialised ViT): no network.
"""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import fsspec
import pytest

import unlearnable as ul
from unlearnable.cli import main
from unlearnable.io.formats.webdataset import write_shard
from unlearnable.protect.dataset import protect_dataset
from unlearnable.protect.methods import RunOptions
from unlearnable.protect.surrogate import WeakSurrogateWarning

from .conftest import FIXED_KEY
from .test_protect_uc import make_flat_folder
from .test_ray_engine import ray_instance  # noqa: F401 - the session's Ray instance

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

SERIAL = RunOptions(workers=1, threads=1)
UC = ul.UCMethodConfig(surrogate="random", clusters=3, uc=ul.UCConfig(steps=2))
CLUSTER_CUDA = ul.ClusterCudaConfig(surrogate="random", clusters=3)


@pytest.fixture(autouse=True)
def _quiet_random_surrogate():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakSurrogateWarning)
        yield


def make_record_sets(root: Path) -> dict[str, Path]:
    """The flat folder of test_protect_uc, and its images in the same (sorted) order as two
    WebDataset shards (with captions) and as one Parquet file (with a caption column)."""
    folder = make_flat_folder(root / "folder")
    names = sorted(p.name for p in folder.iterdir())
    images = [(folder / name).read_bytes() for name in names]
    shards = root / "shards"
    shards.mkdir()
    samples = [
        {"png": data, "txt": f"caption {name}".encode()}
        for name, data in zip(names, images, strict=True)
    ]
    keys = [name.rsplit(".", 1)[0] for name in names]
    (shards / "a.tar").write_bytes(write_shard(samples[:8], keys[:8]))
    (shards / "b.tar").write_bytes(write_shard(samples[8:], keys[8:]))
    sets = {"folder": folder, "webdataset": shards}
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    parquet = root / "parquet"
    parquet.mkdir()
    table = pa.table({"image": images, "caption": [f"caption {n}" for n in names]})
    pq.write_table(table, parquet / "x.parquet")
    sets["parquet"] = parquet
    return sets


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def _outputs(run, kind: str) -> list[bytes]:
    """The protected images of a run in record order (folder files, shard members, rows)."""
    root = str(run.output_dir)
    if kind == "folder":
        return [(Path(root) / r.output_path).read_bytes() for r in run.manifest.files]
    fs, base = fsspec.core.url_to_fs(root)
    out = []
    for record in run.manifest.files:
        container, _, name = record.output_path.partition("#")
        data = fs.cat_file(f"{base.rstrip('/')}/{container}")
        if kind == "webdataset":
            out.append(_members(data)[name])
        else:
            import pyarrow.parquet as pq

            out.append(pq.read_table(io.BytesIO(data)).column("image")[int(name)].as_py())
    return out


def _same_without_paths(run, other) -> None:
    def identity(record):
        data = record.to_json()
        data.pop("path"), data.pop("output_path")
        return data

    assert [identity(r) for r in run.manifest.files] == [identity(r) for r in other.manifest.files]


@pytest.mark.parametrize("method", [UC, CLUSTER_CUDA], ids=["uc", "cluster-cuda"])
def test_records_get_the_clusters_and_pixels_of_the_same_folder(tmp_path, method):
    sets = make_record_sets(tmp_path)
    runs = {
        kind: protect_dataset(path, tmp_path / f"out-{kind}", FIXED_KEY, method, SERIAL)
        for kind, path in sets.items()
    }
    folder = runs["folder"]
    assert len(folder.succeeded) == 21 and folder.manifest.label_mode == "clusters"
    clusters = [r.cluster for r in folder.manifest.files]
    assert len(set(clusters)) == 3
    for kind in ("webdataset", "parquet"):
        run = runs[kind]
        assert len(run.succeeded) == 21
        assert [r.cluster for r in run.manifest.files] == clusters
        _same_without_paths(run, folder)  # hashes, plans, quality, labels, clusters
        assert _outputs(run, kind) == _outputs(folder, "folder")
        info, folder_info = run.manifest.extra["clustering"], folder.manifest.extra["clustering"]
        assert info["cluster_sizes"] == folder_info["cluster_sizes"]
        assert run.manifest.parameters == folder.manifest.parameters
    # other members and columns come through unchanged
    members = _members((tmp_path / "out-webdataset" / "a.tar").read_bytes())
    assert members["alpha.txt"] == b"caption alpha.png"
    resumed = protect_dataset(
        sets["webdataset"],
        tmp_path / "out-webdataset",
        FIXED_KEY,
        method,
        RunOptions(workers=1, threads=1, resume=True),
    )
    assert resumed.manifest.extra["clustering"]["features_from_cache"] is True
    assert resumed.manifest.summary["resumed"] == 21


def test_cli_labels_clusters_and_uc_on_shards(tmp_path, runner):
    sets = make_record_sets(tmp_path)
    key = tmp_path / "k.bin"
    ul.write_key_file(key)
    fast = ["--surrogate", "random", "--clusters", "3", "--workers", "1", "-q"]
    for name, args in (
        ("cc", ["--labels", "clusters"]),
        ("uc", ["--method", "uc", "--uc-steps", "2"]),
    ):
        out = tmp_path / name
        argv = ["protect", str(sets["webdataset"]), "-o", str(out), "--key", str(key), *args, *fast]
        result = runner.invoke(main, argv)
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "unlearnable-manifest.json").read_text())
        assert manifest["labels"]["mode"] == "clusters" and manifest["input_format"] == "webdataset"
        assert {r["status"] for r in manifest["files"]} == {"ok"}
        assert all(r["label"] == f"cluster-{r['cluster']}" for r in manifest["files"])
    argv = ["protect", str(sets["webdataset"]), "-o", str(tmp_path / "x"), "--key", str(key)]
    result = runner.invoke(main, [*argv, "--method", "uc", *fast[:2], "--clusters", "40"])
    assert result.exit_code == 2 and "cannot make 40 clusters from 21 images" in result.output


def test_clusters_of_records_to_a_url_output(tmp_path):
    """Clusters of records written to a URL: the caches stay in a temporary local folder, the
    outputs equal those of a local output folder."""
    sets = make_record_sets(tmp_path)
    local = protect_dataset(sets["parquet"], tmp_path / "local", FIXED_KEY, CLUSTER_CUDA, SERIAL)
    url = "memory://clusters-test/out"
    try:
        remote = protect_dataset(sets["parquet"], url, FIXED_KEY, CLUSTER_CUDA, SERIAL)
        _same_without_paths(remote, local)
        assert _outputs(remote, "parquet") == _outputs(local, "parquet")
        fs, base = fsspec.core.url_to_fs(url)
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(base)) == [
            "unlearnable-manifest.json",
            "x.parquet",
        ]
        # a resume clusters again (the caches were temporary): the same clusters, all kept
        resume_options = RunOptions(workers=1, threads=1, resume=True)
        resumed = protect_dataset(sets["parquet"], url, FIXED_KEY, CLUSTER_CUDA, resume_options)
        assert resumed.manifest.summary["resumed"] == 21
        written = json.loads(fs.cat_file(f"{base}/unlearnable-manifest.json"))
        written["clustering"]["assignments_sha256"] = "0" * 64  # as if the records had changed
        fs.pipe_file(f"{base}/unlearnable-manifest.json", json.dumps(written).encode())
        with pytest.raises(ul.UsageError, match="the clusters differ"):
            protect_dataset(sets["parquet"], url, FIXED_KEY, CLUSTER_CUDA, resume_options)
    finally:
        fsspec.filesystem("memory").rm("/clusters-test", recursive=True)


@pytest.mark.usefixtures("ray_instance")
def test_uc_on_shards_with_ray_actors_matches_the_local_run(tmp_path, monkeypatch):
    """Features of the records on Ray actors (one surrogate each, reading the shards
    themselves), k-means and the optimisation once, protection in Ray tasks: the same clusters,
    records and shards as the local engine."""
    from unlearnable.engines import ray_features
    from unlearnable.engines.ray_engine import RayExecutor

    shards = make_record_sets(tmp_path)["webdataset"]
    calls = []
    real = ray_features.extract_features_on_ray
    monkeypatch.setattr(
        ray_features, "extract_features_on_ray", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    local = protect_dataset(shards, tmp_path / "local", FIXED_KEY, UC, SERIAL)
    remote = protect_dataset(
        shards, tmp_path / "ray", FIXED_KEY, UC, RunOptions(executor=RayExecutor(), threads=1)
    )
    assert calls == [1]  # the features came from the actors
    assert (
        remote.manifest.extra["clustering"]["assignments_sha256"]
        == local.manifest.extra["clustering"]["assignments_sha256"]
    )
    assert [r.to_json() for r in remote.manifest.files] == [
        r.to_json() for r in local.manifest.files
    ]
    for name in ("a.tar", "b.tar"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()

    # shards in a memory:// file system, which the actors cannot see: embedded on the driver
    fs = fsspec.filesystem("memory")
    folder = f"/clusters-ray-{tmp_path.name}"
    try:
        for name in ("a.tar", "b.tar"):
            fs.pipe_file(f"{folder}/{name}", (shards / name).read_bytes())
        engine = RunOptions(executor=RayExecutor(), threads=1)
        in_memory = protect_dataset(f"memory://{folder}", tmp_path / "m", FIXED_KEY, UC, engine)
    finally:
        fs.rm(folder, recursive=True)
    assert calls == [1, 1] and len(in_memory.succeeded) == 21
    assert [r.to_json() for r in in_memory.manifest.files] == [
        r.to_json() for r in local.manifest.files
    ]
