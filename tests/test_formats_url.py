"""Shard and Parquet output to fsspec URLs (``memory://`` and ``file://``, no network): the same
records and bytes as a local output folder on both engines, resume from the journal kept at the
URL, and one-line usage errors."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import fsspec
import pytest

import unlearnable as ul
from unlearnable.cli import main
from unlearnable.io.formats.url_output import JOURNAL_PARTS, UrlFolder
from unlearnable.io.journal import JOURNAL_NAME
from unlearnable.io.manifest import MANIFEST_NAME
from unlearnable.protect.dataset import protect_dataset
from unlearnable.protect.methods import RunOptions

from .conftest import FIXED_KEY
from .test_formats import _identity, make_sets
from .test_ray_engine import ray_instance  # noqa: F401 - the session's Ray instance

SERIAL = RunOptions(workers=1)


@pytest.fixture
def memory_url():
    """A fresh ``memory://`` folder, removed afterwards."""
    name = f"/unlearnable-test-{uuid.uuid4().hex}"
    yield f"memory://{name}/out"
    fs = fsspec.filesystem("memory")
    if fs.exists(name):
        fs.rm(name, recursive=True)


def _stored(url: str) -> dict[str, bytes]:
    """Every file below ``url`` by relative path, the manifest left out."""
    fs, base = fsspec.core.url_to_fs(url)
    base = base.rstrip("/")
    return {
        path[len(base) + 1 :]: fs.cat_file(path)
        for path in sorted(fs.find(base))
        if not path.endswith(MANIFEST_NAME)
    }


def _local(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def _same_run(remote, local) -> None:
    assert [r.path for r in remote.manifest.files] == [r.path for r in local.manifest.files]
    assert [_identity(r) for r in remote.manifest.files] == [
        _identity(r) for r in local.manifest.files
    ]


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_url_output_matches_a_local_output(tmp_path, memory_url, kind):
    """In this process, to a file:// URL, and from worker processes (which send their containers
    back to be written: memory:// lives in one process; Ray tasks writing a URL themselves are
    tested below)."""
    source = make_sets(tmp_path)[kind]
    local = protect_dataset(source, tmp_path / "local", FIXED_KEY, "cuda", SERIAL)
    expected = _local(tmp_path / "local")
    serial = protect_dataset(source, memory_url, FIXED_KEY, "cuda", SERIAL)
    _same_run(serial, local)
    assert _stored(memory_url) == expected
    assert str(serial.output_dir) == memory_url.rstrip("/")
    fs, base = fsspec.core.url_to_fs(memory_url)
    written = json.loads(fs.cat_file(f"{base}/{MANIFEST_NAME}"))
    assert [f["path"] for f in written["files"]] == [r.path for r in local.manifest.files]
    assert not fs.exists(f"{base}/{JOURNAL_NAME}") and not fs.exists(f"{base}/{JOURNAL_PARTS}")

    file_url = (tmp_path / "file-url").as_uri()
    protect_dataset(source, file_url, FIXED_KEY, "cuda", SERIAL)
    assert _local(tmp_path / "file-url") == expected
    if kind == "webdataset":  # worker processes (spawned: slow to start, so once)
        pooled_url = memory_url + "-pool"
        pooled = protect_dataset(source, pooled_url, FIXED_KEY, "cuda", RunOptions(workers=2))
        _same_run(pooled, local)
        assert _stored(pooled_url) == expected


def test_resume_after_an_interrupted_url_run(tmp_path, memory_url):
    shards = make_sets(tmp_path, count=12)["webdataset"]
    clean = protect_dataset(shards, tmp_path / "clean", FIXED_KEY, "cuda", SERIAL)

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        protect_dataset(shards, memory_url, FIXED_KEY, "cuda", SERIAL, progress=stop)
    folder = UrlFolder(memory_url)
    names = folder.names()
    assert JOURNAL_NAME in names and MANIFEST_NAME not in names  # the journal is at the URL
    assert "train-0000.tar" in names and "train-0001.tar" not in names
    assert folder.names(JOURNAL_PARTS)  # the first shard's records were written out
    folder.write(".train-0001.tar.999.0.tmp", b"half a shard")  # a killed write's leftover
    with pytest.raises(ul.UsageError, match="not empty; use --resume"):
        protect_dataset(shards, memory_url, FIXED_KEY, "cuda", SERIAL)
    other_key = ul.SecretKey(bytes(32))
    with pytest.raises(ul.UsageError, match="different key"):
        protect_dataset(shards, memory_url, other_key, "cuda", RunOptions(workers=1, resume=True))

    resumed = protect_dataset(
        shards, memory_url, FIXED_KEY, "cuda", RunOptions(workers=1, resume=True)
    )
    assert resumed.manifest.summary["resumed"] == 6
    _same_run(resumed, clean)
    assert _stored(memory_url) == _local(tmp_path / "clean")  # no journal, no temporary left
    again = protect_dataset(
        shards, memory_url, FIXED_KEY, "cuda", RunOptions(workers=1, resume=True)
    )
    assert again.manifest.summary["resumed"] == 12  # from the manifest at the URL


def test_cli_url_output_and_usage_errors(tmp_path, memory_url, runner, monkeypatch):
    sets = make_sets(tmp_path)
    key = tmp_path / "k.bin"
    ul.write_key_file(key)
    base = ["protect", str(sets["webdataset"]), "--key", str(key), "--workers", "1"]
    result = runner.invoke(main, [*base, "-o", memory_url, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] == 8 and summary["output"] == memory_url
    assert "train-0001.tar" in UrlFolder(memory_url).names()

    # a folder of images is written to local folders only
    result = runner.invoke(
        main, ["protect", str(sets["folder"]), "-o", memory_url + "-f", "--key", str(key)]
    )
    assert result.exit_code == 2 and "a folder of images is written to a local folder" in (
        result.output
    )
    assert len(result.output.strip().splitlines()) == 1

    # a protocol whose package is missing
    if "s3" in fsspec.registry:
        pytest.skip("s3fs is loaded in this process")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    result = runner.invoke(main, [*base, "-o", "s3://bucket/out/"])
    assert result.exit_code == 2, result.output
    assert "cannot write to s3://bucket/out/" in result.output and "s3fs" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    result = runner.invoke(main, [*base, "-o", "nosuchprotocol://bucket/out"])
    assert result.exit_code == 2 and "Protocol not known" in result.output


def test_url_write_failures(tmp_path, memory_url, monkeypatch):
    """A container that cannot be written is a per-record error; a journal that cannot be
    written stops the run with a RunStorageError naming the URL (never a local staging path)."""
    from unlearnable.io.runner import RunStorageError

    shards = make_sets(tmp_path)["webdataset"]
    real = UrlFolder.write

    def failing(suffix):
        def write(self, name, data):
            if name.endswith(suffix):
                raise PermissionError(13, "Access Denied")
            return real(self, name, data)

        return write

    monkeypatch.setattr(UrlFolder, "write", failing("train-0001.tar"))
    run = protect_dataset(shards, memory_url, FIXED_KEY, "cuda", SERIAL)
    assert len(run.succeeded) == 4 and len(run.failed) == 4
    assert all("cannot write output train-0001.tar" in r.error for r in run.failed)
    assert "train-0001.tar" not in UrlFolder(memory_url).names()

    second = memory_url + "-2"
    monkeypatch.setattr(UrlFolder, "write", failing(MANIFEST_NAME))
    with pytest.raises(RunStorageError) as caught:
        protect_dataset(shards, second, FIXED_KEY, "cuda", SERIAL)
    assert f"cannot write {MANIFEST_NAME} to {second}" in str(caught.value)
    assert "--resume" in str(caught.value) and "unlearnable-run-" not in str(caught.value)
    assert JOURNAL_NAME in UrlFolder(second).names()  # kept: the records are there
    monkeypatch.setattr(UrlFolder, "write", real)
    resumed = protect_dataset(shards, second, FIXED_KEY, "cuda", RunOptions(workers=1, resume=True))
    assert resumed.manifest.summary["resumed"] == 8
    assert MANIFEST_NAME in UrlFolder(second).names()


def test_output_url_inside_the_input_is_refused(tmp_path):
    shards = make_sets(tmp_path)["webdataset"]
    with pytest.raises(ul.UsageError, match="is the input or inside it"):
        protect_dataset(shards, (shards / "out").as_uri(), FIXED_KEY, "cuda", SERIAL)


@pytest.mark.usefixtures("ray_instance")
def test_ray_engine_writes_urls_and_resumes_there(tmp_path, memory_url):
    """Ray tasks write a file:// output themselves; with memory:// (in the driver only) the
    driver sends the tasks their input containers (and on resume the earlier outputs) and
    writes the containers they send back."""
    from unlearnable.engines.ray_engine import RayExecutor

    sets = make_sets(tmp_path, count=12)
    for kind in ("webdataset", "parquet"):
        local = protect_dataset(sets[kind], tmp_path / f"local-{kind}", FIXED_KEY, "cuda", SERIAL)
        file_url = (tmp_path / f"ray-{kind}").as_uri()
        remote = protect_dataset(
            sets[kind], file_url, FIXED_KEY, "cuda", RunOptions(executor=RayExecutor())
        )
        _same_run(remote, local)
        assert _local(tmp_path / f"ray-{kind}") == _local(tmp_path / f"local-{kind}")
    # memory:// in and out: the driver sends each task its container and writes the results
    fs = fsspec.filesystem("memory")
    source_url = memory_url + "-in"
    for path in sets["parquet"].iterdir():
        fs.pipe_file(f"{fsspec.core.url_to_fs(source_url)[1]}/{path.name}", path.read_bytes())
    remote = protect_dataset(
        source_url, memory_url + "-out", FIXED_KEY, "cuda", RunOptions(executor=RayExecutor())
    )
    _same_run(remote, local)
    assert _stored(memory_url + "-out") == _local(tmp_path / "local-parquet")

    def stop(done, total):
        raise KeyboardInterrupt

    shards = sets["webdataset"]
    with pytest.raises(KeyboardInterrupt):
        protect_dataset(
            shards, memory_url, FIXED_KEY, "cuda", RunOptions(executor=RayExecutor()), progress=stop
        )
    assert JOURNAL_NAME in UrlFolder(memory_url).names()
    resumed = protect_dataset(
        shards, memory_url, FIXED_KEY, "cuda", RunOptions(executor=RayExecutor(), resume=True)
    )
    assert resumed.manifest.summary["resumed"] >= 6
    _same_run(resumed, protect_dataset(shards, tmp_path / "clean", FIXED_KEY, "cuda", SERIAL))
    assert _stored(memory_url) == _local(tmp_path / "clean")
