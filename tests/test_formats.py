"""WebDataset shards and Parquet files in and out, protect_batch, and format detection (local
engine; the Ray engine is in test_ray_engine.py)."""

from __future__ import annotations

import builtins
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unlearnable as ul
from unlearnable.cli import main
from unlearnable.io.formats import FormatOptions, FormatUsageError, detect_format
from unlearnable.io.formats.webdataset import write_shard
from unlearnable.protect.batch import protect_batch
from unlearnable.protect.dataset import protect_dataset
from unlearnable.protect.methods import RunOptions

from .conftest import FIXED_KEY

pa = pytest.importorskip("pyarrow", reason="Parquet tests need pyarrow (pip install pyarrow)")
import pyarrow.parquet as pq  # noqa: E402

from unlearnable.io.formats.parquet import write_parquet  # noqa: E402

SERIAL = RunOptions(workers=1)


def png_bytes(seed: int, size=(24, 20), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    data = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(data).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(seed, (32, 32)))).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def make_sets(root: Path, count: int = 8) -> dict[str, Path]:
    """The same labelled images as a folder, as two WebDataset shards and as one Parquet file."""
    images = [png_bytes(i) if i % 3 else jpeg_bytes(i) for i in range(count)]
    ext = ["jpg" if i % 3 == 0 else "png" for i in range(count)]
    labels = [str(i % 2) for i in range(count)]
    folder = root / "folder"
    for i in range(count):
        (folder / labels[i]).mkdir(parents=True, exist_ok=True)
        (folder / labels[i] / f"{i:06d}.{ext[i]}").write_bytes(images[i])
    shards = root / "shards"
    shards.mkdir()
    samples = [
        {
            ext[i]: images[i],
            "cls": labels[i].encode(),
            "txt": f"a photo {i}".encode(),
            "json": json.dumps({"id": i, "label": labels[i]}).encode(),
        }
        for i in range(count)
    ]
    half = count // 2
    keys = [f"{i:06d}" for i in range(count)]
    (shards / "train-0000.tar").write_bytes(write_shard(samples[:half], keys[:half]))
    (shards / "train-0001.tar").write_bytes(write_shard(samples[half:], keys[half:]))
    parquet = root / "parquet"
    parquet.mkdir()
    (parquet / "train.parquet").write_bytes(
        write_parquet(
            {
                "image": [{"bytes": images[i], "path": f"{i}.{ext[i]}"} for i in range(count)],
                "label": [i % 2 for i in range(count)],
                "caption": [f"a photo {i}" for i in range(count)],
            }
        )
    )
    return {"folder": folder, "webdataset": shards, "parquet": parquet}


def _identity(record):
    """A record without its path (which names the file, member or row)."""
    data = record.to_json()
    data.pop("path"), data.pop("output_path", None)
    return data


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_detect_format(tmp_path):
    sets = make_sets(tmp_path)
    assert detect_format(sets["folder"]) == "folder"
    assert detect_format(sets["webdataset"]) == "webdataset"
    assert detect_format(sets["parquet"]) == "parquet"
    assert detect_format(sets["webdataset"] / "train-0000.tar") == "webdataset"
    assert detect_format(sets["folder"], FormatOptions("folder")) == "folder"
    with pytest.raises(FormatUsageError, match="no .parquet files"):
        detect_format(sets["webdataset"], FormatOptions("parquet"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.tar").write_bytes((sets["webdataset"] / "train-0000.tar").read_bytes())
    (mixed / "b.parquet").write_bytes((sets["parquet"] / "train.parquet").read_bytes())
    with pytest.raises(FormatUsageError, match="--input-format"):
        detect_format(mixed)
    with pytest.raises(FormatUsageError, match="cls, json:FIELD or none"):
        FormatOptions(wds_label="caption")


@pytest.mark.parametrize("method", ["cuda", "photo"])
def test_same_images_and_records_for_folder_shards_parquet_and_batch(tmp_path, method):
    sets = make_sets(tmp_path)
    runs = {
        kind: protect_dataset(path, tmp_path / f"out-{kind}", FIXED_KEY, method, SERIAL)
        for kind, path in sets.items()
    }
    identities = {kind: [_identity(r) for r in run.manifest.files] for kind, run in runs.items()}
    ordered = {  # the folder sorts by label first: compare per image, keyed by input hash
        kind: sorted(ids, key=lambda d: d["input_sha256"]) for kind, ids in identities.items()
    }
    assert ordered["folder"] == ordered["webdataset"] == ordered["parquet"]
    assert all(r.status == "ok" for run in runs.values() for r in run.manifest.files)
    assert runs["webdataset"].manifest.files[0].path == "train-0000.tar#000000.jpg"
    assert runs["parquet"].manifest.files[0].path == "train.parquet#000000000"

    # protect_batch on the same bytes gives the same output bytes
    members = _tar_members(sets["webdataset"] / "train-0000.tar")
    images = [members[f"00000{i}.{'jpg' if i % 3 == 0 else 'png'}"] for i in range(4)]
    batch = protect_batch(images, [i % 2 for i in range(4)], FIXED_KEY, method)
    out = _tar_members(tmp_path / "out-webdataset" / "train-0000.tar")
    assert batch.images == [out[f"00000{i}.{'jpg' if i % 3 == 0 else 'png'}"] for i in range(4)]
    assert [_identity(r) for r in batch.records] == identities["webdataset"][:4]


def test_webdataset_round_trip_keeps_members_and_captions(tmp_path):
    shards = make_sets(tmp_path)["webdataset"]
    run = protect_dataset(shards, tmp_path / "out", FIXED_KEY, "cuda", SERIAL)
    assert run.manifest.label_mode == "webdataset:cls" and run.manifest.classes == ["0", "1"]
    for name in ("train-0000.tar", "train-0001.tar"):
        before, after = _tar_members(shards / name), _tar_members(tmp_path / "out" / name)
        assert list(before) == list(after)  # same members in the same order
        for member, data in before.items():
            if member.endswith((".txt", ".json", ".cls")):
                assert after[member] == data
            else:
                assert after[member] != data
                assert Image.open(io.BytesIO(after[member])).size == (
                    Image.open(io.BytesIO(data)).size
                )


def test_webdataset_json_label_and_png_output(tmp_path):
    shards = make_sets(tmp_path)["webdataset"]
    run = protect_dataset(
        shards,
        tmp_path / "out",
        FIXED_KEY,
        "cuda",
        RunOptions(workers=1, output=ul.OutputOptions(format="png")),
        FormatOptions(wds_label="json:label"),
    )
    assert run.manifest.label_mode == "webdataset:json:label"
    after = _tar_members(tmp_path / "out" / "train-0000.tar")
    assert "000000.png" in after and "000000.jpg" not in after and "000000.txt" in after
    assert run.manifest.files[0].output_path == "train-0000.tar#000000.png"


def test_corrupt_record_is_a_per_record_error(tmp_path, runner):
    good = [{"png": png_bytes(i), "cls": b"1", "txt": b"caption"} for i in range(3)]
    good[1]["png"] = b"\x89PNG\r\n\x1a\n garbage"
    good.append({"txt": b"no image here"})
    shard = tmp_path / "in" / "s.tar"
    shard.parent.mkdir()
    shard.write_bytes(write_shard(good))
    run = protect_dataset(shard, tmp_path / "out", FIXED_KEY, "cuda", SERIAL)
    status = {r.path: r.status for r in run.manifest.files}
    assert status == {
        "s.tar#000000.png": "ok",
        "s.tar#000001.png": "error",
        "s.tar#000002.png": "ok",
        "s.tar#000003": "skipped",
    }
    members = _tar_members(tmp_path / "out" / "s.tar")
    assert not any(m.startswith("000001.") for m in members)  # never released unprotected
    assert members["000003.txt"] == b"no image here" and "000000.png" in members
    assert [r.path for r in run.skipped] == ["s.tar#000003"]

    captions_only = tmp_path / "in2" / "captions.tar"  # nothing to protect: copied as it is
    captions_only.parent.mkdir()
    captions_only.write_bytes(write_shard([{"txt": b"one"}, {"txt": b"two"}]))
    run = protect_dataset(captions_only, tmp_path / "out2", FIXED_KEY, "cuda", SERIAL)
    assert [r.status for r in run.manifest.files] == ["skipped", "skipped"]
    assert _tar_members(tmp_path / "out2" / "captions.tar") == _tar_members(captions_only)

    result = runner.invoke(
        main,
        [
            "protect",
            str(shard),
            "-o",
            str(tmp_path / "cli"),
            "--key",
            str(_key(tmp_path)),
            "-q",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 1 and "s.tar#000001.png" in result.output


def _key(tmp_path: Path) -> Path:
    path = tmp_path / "k.bin"
    if not path.exists():
        ul.write_key_file(path)
    return path


def test_parquet_round_trip_keeps_columns_and_metadata(tmp_path):
    source = make_sets(tmp_path)["parquet"] / "train.parquet"
    table = pq.read_table(source)
    table = table.replace_schema_metadata({b"huggingface": b'{"info": "kept"}'})
    images = table.column("image").to_pylist()
    images[2] = {"bytes": b"not an image", "path": "2.png"}
    table = table.set_column(0, table.schema.field(0), pa.array(images, table.schema.field(0).type))
    pq.write_table(table, source)
    run = protect_dataset(source.parent, tmp_path / "out", FIXED_KEY, "cuda", SERIAL)
    after = pq.read_table(tmp_path / "out" / "train.parquet")
    assert after.schema == table.schema and after.schema.metadata == table.schema.metadata
    assert after.column("caption").equals(table.column("caption"))
    assert after.column("label").equals(table.column("label"))
    new_images = after.column("image").to_pylist()
    assert new_images[2] is None  # the failed row keeps its place, without its image
    assert [r.status for r in run.manifest.files].count("error") == 1
    for before, now in zip(images, new_images, strict=True):
        if now is not None:
            assert now["path"] == before["path"] and now["bytes"] != before["bytes"]


def test_parquet_binary_column_and_options(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(
        write_parquet({"img": [png_bytes(i) for i in range(3)], "cat": ["x", "y", "x"]})
    )
    with pytest.raises(ul.UsageError, match="--image-column"):
        protect_dataset(folder, tmp_path / "bad", FIXED_KEY, "cuda", SERIAL)
    with pytest.raises(ul.UsageError, match="no label column 'label'"):
        protect_dataset(
            folder,
            tmp_path / "bad2",
            FIXED_KEY,
            "cuda",
            SERIAL,
            FormatOptions(image_column="img", label_column="label"),
        )
    run = protect_dataset(
        folder,
        tmp_path / "out",
        FIXED_KEY,
        "cuda",
        SERIAL,
        FormatOptions(image_column="img", label_column="cat"),
    )
    assert run.manifest.classes == ["x", "y"] and len(run.succeeded) == 3


def test_resume_per_container_gives_the_same_result(tmp_path):
    shards = make_sets(tmp_path, count=12)["webdataset"]
    clean = protect_dataset(shards, tmp_path / "clean", FIXED_KEY, "cuda", SERIAL)

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        protect_dataset(shards, tmp_path / "out", FIXED_KEY, "cuda", SERIAL, progress=stop)
    assert (tmp_path / "out" / "train-0000.tar").exists()
    assert not (tmp_path / "out" / "train-0001.tar").exists()
    resumed = protect_dataset(
        shards, tmp_path / "out", FIXED_KEY, "cuda", RunOptions(workers=1, resume=True)
    )
    assert resumed.manifest.summary["resumed"] == 6
    assert [_identity(r) for r in resumed.manifest.files] == [
        _identity(r) for r in clean.manifest.files
    ]
    for name in ("train-0000.tar", "train-0001.tar"):
        assert _tar_members(tmp_path / "out" / name) == _tar_members(tmp_path / "clean" / name)


def test_protect_batch_arrays_labels_and_errors():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(3)]
    arrays.append(rng.integers(0, 256, (16, 16), dtype=np.uint8))
    result = protect_batch(arrays, ["cat", "dog", "cat", "dog"], FIXED_KEY)
    assert [img.shape for img in result.images] == [a.shape for a in arrays]
    assert all(not np.array_equal(a, b) for a, b in zip(arrays, result.images, strict=True))
    again = protect_batch(arrays[:1], ["cat"], FIXED_KEY)  # any subset of the classes
    assert np.array_equal(again.images[0], result.images[0])
    other = protect_batch(arrays[:1], ["cat"], ul.SecretKey(bytes(32)))
    assert not np.array_equal(other.images[0], result.images[0])
    mixed = protect_batch([b"nonsense", png_bytes(1)], None, FIXED_KEY)
    assert mixed.images[0] is None and mixed.records[0].status == "error"
    assert isinstance(mixed.images[1], bytes)
    with pytest.raises(ul.UsageError, match="cluster once"):
        protect_batch([png_bytes(1)], None, FIXED_KEY, "uc")

    # a ready protector (e.g. FolderClusters.protector()): labels are class ids
    deltas = (rng.uniform(-1, 1, (2, 3, 8, 8)) * 8 / 255).astype(np.float32)
    clusters = ul.ClusterProtector(deltas, 8 / 255)
    grey = np.full((10, 12, 3), 100, dtype=np.uint8)
    out = protect_batch([grey, grey], [0, 1], FIXED_KEY, clusters).images
    assert all(0 < np.abs(o.astype(int) - 100).max() <= 9 for o in out)
    assert not np.array_equal(out[0], out[1])  # each cluster its own perturbation


def test_pyarrow_missing_gives_a_clear_message(tmp_path, monkeypatch):
    folder = make_sets(tmp_path)["parquet"]
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ul.UsageError, match=r'pip install "unlearnable\[parquet\]"'):
        protect_dataset(folder, tmp_path / "out", FIXED_KEY, "cuda", SERIAL)


def test_cli_shards_and_usage_errors(tmp_path, runner):
    shards = make_sets(tmp_path)["webdataset"]
    key = _key(tmp_path)
    result = runner.invoke(
        main,
        [
            "protect",
            str(shards),
            "-o",
            str(tmp_path / "o"),
            "--key",
            str(key),
            "--workers",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] == 8
    result = runner.invoke(
        main,
        [
            "protect",
            str(shards),
            "-o",
            str(tmp_path / "o2"),
            "--key",
            str(key),
            "--ray-address",
            "auto",
        ],
    )
    assert result.exit_code == 2 and "--engine ray" in result.output
    result = runner.invoke(
        main,
        [
            "protect",
            str(shards),
            "-o",
            str(tmp_path / "o3"),
            "--key",
            str(key),
            "--labels",
            "folders",
        ],
    )
    assert result.exit_code == 2 and "carry their own labels" in result.output
    result = runner.invoke(
        main,
        [
            "protect",
            str(shards),
            "-o",
            str(tmp_path / "o4"),
            "--key",
            str(key),
            "--method",
            "uc",
            "--surrogate",
            "random",
        ],
    )
    assert result.exit_code == 2 and "cannot make 10 clusters from 8 images" in result.output
    assert "Traceback" not in result.output


def test_url_inputs_are_read_through_fsspec(tmp_path, runner):
    sets = make_sets(tmp_path)
    local = protect_dataset(sets["webdataset"], tmp_path / "local", FIXED_KEY, "cuda", SERIAL)
    url = sets["webdataset"].as_uri()  # file:///...: the same code path as s3:// or gs://
    remote = protect_dataset(url, tmp_path / "url", FIXED_KEY, "cuda", SERIAL)
    assert [_identity(r) for r in remote.manifest.files] == [
        _identity(r) for r in local.manifest.files
    ]
    for name in ("train-0000.tar", "train-0001.tar"):
        assert _tar_members(tmp_path / "url" / name) == _tar_members(tmp_path / "local" / name)
    one_file = protect_dataset(
        (sets["parquet"] / "train.parquet").as_uri(), tmp_path / "pq", FIXED_KEY, "cuda", SERIAL
    )
    assert len(one_file.succeeded) == 8 and (tmp_path / "pq" / "train.parquet").is_file()

    key = _key(tmp_path)
    result = runner.invoke(
        main,
        ["protect", url, "-o", str(tmp_path / "cli"), "--key", str(key), "--workers", "1", "-q"],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["protect", url, "--key", str(key)])
    assert result.exit_code == 2 and "give the output folder with -o" in result.output
    result = runner.invoke(
        main,
        ["protect", "nosuchprotocol://bucket/shards", "-o", str(tmp_path / "x"), "--key", str(key)],
    )
    assert result.exit_code == 2 and "Protocol not known" in result.output
    assert "Traceback" not in result.output


def test_a_resumed_shard_run_keeps_the_earlier_metrics_version(tmp_path):
    shards = make_sets(tmp_path, count=12)["webdataset"]
    run = protect_dataset(shards, tmp_path / "out", FIXED_KEY, "cuda", SERIAL)
    manifest_path = tmp_path / "out" / "unlearnable-manifest.json"
    assert run.manifest.extra["metrics_version"] == 3
    data = json.loads(manifest_path.read_text())
    del data["metrics_version"]  # as written before the metrics versions: version 1
    manifest_path.write_text(json.dumps(data))
    (tmp_path / "out" / "train-0001.tar").unlink()
    resumed = protect_dataset(
        shards, tmp_path / "out", FIXED_KEY, "cuda", RunOptions(workers=1, resume=True)
    )
    assert resumed.manifest.extra["metrics_version"] == 1
    assert json.loads(manifest_path.read_text())["metrics_version"] == 1
