"""``protect --method uc`` and ``--labels clusters``: surrogate clusters of a folder (CPU, offline).

Every run uses the ``random`` surrogate (a tiny randomly initialised ViT): no network, and fast.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unlearnable as ul
from unlearnable.cli import main
from unlearnable.io.journal import JOURNAL_NAME
from unlearnable.io.manifest import MANIFEST_NAME
from unlearnable.io.runner import discover_and_check
from unlearnable.models import build_victim
from unlearnable.protect import surrogate_loaders, uc_pipeline
from unlearnable.protect.surrogate import WeakSurrogateWarning
from unlearnable.protect.uc_pipeline import (
    CLUSTER_STATE_NAME,
    FEATURE_CACHE_NAME,
    RUN_FILES,
    cluster_folder,
)
from unlearnable.verify_inputs import load_verify_folders

from .conftest import FIXED_KEY, tree_digest

UC_FAST = ["--surrogate", "random", "--clusters", "3", "--uc-steps", "3", "--workers", "1", "-q"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(autouse=True)
def _quiet_random_surrogate():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakSurrogateWarning)
        yield


def _class_image(c_index: int, i: int, size=(24, 24), mode="RGB") -> Image.Image:
    """Noise around a class colour, so the clusters have something to find."""
    rng = np.random.default_rng(1000 * c_index + i)
    w, h = size
    base = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 230]][c_index % 3], dtype=np.int16)
    data = np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(data, "RGB")
    return image if mode == "RGB" else image.convert(mode)


def make_flat_folder(root: Path) -> Path:
    """18 images of 24x24 (3 colour groups) plus a 40x30 RGB, a 40x30 grey and a 40x30 RGBA."""
    root.mkdir(parents=True)
    for c in range(3):
        for i in range(6):
            _class_image(c, i).save(root / f"img{c}{i}.png")
    _class_image(0, 50, (40, 30)).save(root / "wide.png")
    _class_image(1, 51, (40, 30), "L").save(root / "grey.png")
    _class_image(2, 52, (40, 30), "RGBA").save(root / "alpha.png")
    return root


def make_class_folders(root: Path, per_class: int = 6, offset: int = 0) -> Path:
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _class_image(c, offset + i).save(root / name / f"img{i}.png")
    return root


def protect(runner, source, out, key, *args):
    """``unlearnable protect SOURCE -o OUT --key KEY ARGS...`` in-process."""
    argv = ["protect", source, "-o", out, "--key", key, *args]
    return runner.invoke(main, [str(a) for a in argv], catch_exceptions=False)


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def image_digests(folder: Path) -> dict[str, str]:
    digests = tree_digest(folder)
    for name in (MANIFEST_NAME, *RUN_FILES):
        digests.pop(name, None)
    return digests


def test_uc_protects_an_unlabelled_folder_within_budget(tmp_path, runner, key_file):
    source = make_flat_folder(tmp_path / "in")
    before = tree_digest(source)
    result = protect(
        runner, source, tmp_path / "out", key_file, "--method", "uc", "--eps", "8", *UC_FAST
    )
    assert result.exit_code == 0, result.output
    assert tree_digest(source) == before
    manifest = manifest_of(tmp_path / "out")
    assert manifest["method"] == "uc"
    assert manifest["labels"] == {
        "mode": "clusters",
        "classes": {"cluster-0": 0, "cluster-1": 1, "cluster-2": 2},
    }
    clustering = manifest["clustering"]
    assert clustering["surrogate"] == "random" and clustering["k"] == 3
    assert clustering["uc"]["eps"] == pytest.approx(8 / 255)
    assert clustering["uc"]["config"]["steps"] == 3
    assert sum(clustering["cluster_sizes"]) == 21
    assert manifest["parameters"]["surrogate"] == "random"
    assert len(manifest["files"]) == 21
    for record in manifest["files"]:
        assert record["status"] == "ok"
        assert record["label"] == f"cluster-{record['cluster']}"
    assert (tmp_path / "out" / FEATURE_CACHE_NAME).is_file()
    assert (tmp_path / "out" / CLUSTER_STATE_NAME).is_file()

    changed = 0
    for record in manifest["files"]:
        original = Image.open(source / record["path"])
        protected = Image.open(tmp_path / "out" / record["path"])
        assert (protected.size, protected.mode) == (original.size, original.mode)
        colour = "L" if original.mode == "L" else "RGB"
        a = np.asarray(original.convert(colour), dtype=np.int16)
        b = np.asarray(protected.convert(colour), dtype=np.int16)
        assert np.abs(b - a).max() <= 8 + 1, record["path"]  # eps + rounding, every pixel
        changed += int(np.abs(b - a).max() > 0)
        if original.mode == "RGBA":
            assert np.array_equal(np.asarray(original)[..., 3], np.asarray(protected)[..., 3])
    assert changed == 21


def test_same_key_same_surrogate_gives_identical_outputs(tmp_path, runner, key_file):
    source = make_flat_folder(tmp_path / "in")
    for name in ("a", "b"):
        result = protect(runner, source, tmp_path / name, key_file, "--method", "uc", *UC_FAST)
        assert result.exit_code == 0, result.output
    a, b = image_digests(tmp_path / "a"), image_digests(tmp_path / "b")
    assert a == b and len(a) == 21
    clusters_a = {r["path"]: r["cluster"] for r in manifest_of(tmp_path / "a")["files"]}
    clusters_b = {r["path"]: r["cluster"] for r in manifest_of(tmp_path / "b")["files"]}
    assert clusters_a == clusters_b

    other_key = tmp_path / "other.bin"
    assert runner.invoke(main, ["keygen", str(other_key)]).exit_code == 0
    result = protect(runner, source, tmp_path / "c", other_key, "--method", "uc", *UC_FAST)
    assert result.exit_code == 0, result.output
    c = image_digests(tmp_path / "c")
    assert all(a[path] != c[path] for path in a)


def test_uc_outputs_do_not_depend_on_the_number_of_torch_threads(tmp_path):
    """Same key and data, 1 or 2 torch threads: the same perturbations and output files. The
    surrogate is average pooling, whose passes are the same with any threads, so this checks
    the optimisation itself (the gradients of the samples of a cluster were summed with
    parallel atomic adds, in an order that changed with the threads); a real surrogate's
    matrix products may still depend on the threads (see :mod:`unlearnable.protect.uc_optimise`)."""
    source = make_flat_folder(tmp_path / "in")
    pooling = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten())  # (B, 48)
    surrogate = ul.surrogate_from_module(
        pooling, name="pool", input_size=32, strip_classifier=False
    )
    config = ul.UCMethodConfig(surrogate=surrogate, clusters=3, uc=ul.UCConfig(steps=3))
    deltas, digests = {}, {}
    for threads in (1, 2):
        out = tmp_path / f"threads-{threads}"
        run = ul.protect_directory(
            source, out, FIXED_KEY, config, ul.RunOptions(workers=1, threads=threads)
        )
        assert not run.failed
        deltas[threads] = np.load(out / CLUSTER_STATE_NAME)["deltas"]
        digests[threads] = image_digests(out)
    assert deltas[1].shape == (3, 3, 32, 32) and np.abs(deltas[1]).max() > 0
    assert np.array_equal(deltas[1], deltas[2])
    assert digests[1] == digests[2] and len(digests[1]) == 21


def test_cuda_with_cluster_labels(tmp_path, runner, key_file):
    source = make_flat_folder(tmp_path / "in")
    result = protect(
        runner,
        source,
        tmp_path / "out",
        key_file,
        "--labels",
        "clusters",
        "--surrogate",
        "random",
        "--clusters",
        "3",
        "--workers",
        "1",
        "-q",
    )
    assert result.exit_code == 0, result.output
    manifest = manifest_of(tmp_path / "out")
    assert manifest["method"] == "cuda"
    assert manifest["labels"]["mode"] == "clusters"
    assert list(manifest["labels"]["classes"]) == ["cluster-0", "cluster-1", "cluster-2"]
    assert manifest["clustering"]["surrogate"] == "random" and "uc" not in manifest["clustering"]
    records = manifest["files"]
    assert len(records) == 21 and all(r["status"] == "ok" for r in records)
    assert all(r["label"] == f"cluster-{r['cluster']}" for r in records)
    assert len({r["cluster"] for r in records}) >= 2


def test_resume_reuses_features_clusters_and_perturbations(tmp_path, runner, key_file, monkeypatch):
    source = make_flat_folder(tmp_path / "in")
    out = tmp_path / "out"
    args = (out, key_file, "--method", "uc", *UC_FAST)
    assert protect(runner, source, *args).exit_code == 0
    first = image_digests(out)
    cache_mtime = (out / FEATURE_CACHE_NAME).stat().st_mtime_ns
    for name in ("img00.png", "wide.png", "grey.png"):  # as if the run had been killed
        (out / name).unlink()

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed")

    def no_optimisation(*args, **kwargs):
        raise AssertionError("perturbations were recomputed")

    monkeypatch.setattr(uc_pipeline, "extract_folder_features", no_extraction)
    monkeypatch.setattr(uc_pipeline, "optimise_cluster_perturbations", no_optimisation)
    result = protect(runner, source, *args, "--resume")
    assert result.exit_code == 0, result.output
    assert image_digests(out) == first
    assert (out / FEATURE_CACHE_NAME).stat().st_mtime_ns == cache_mtime
    manifest = manifest_of(out)
    assert manifest["summary"]["resumed"] == 18
    assert manifest["clustering"]["features_from_cache"] is True
    assert manifest["clustering"]["state_from_cache"] is True

    # Without the saved perturbations, a resume relearns them from the cached features and
    # images prepared again from the files: the same perturbations, the same outputs.
    monkeypatch.undo()
    monkeypatch.setattr(uc_pipeline, "extract_folder_features", no_extraction)
    (out / CLUSTER_STATE_NAME).unlink()
    (out / "img10.png").unlink()
    result = protect(runner, source, *args, "--resume")
    assert result.exit_code == 0, result.output
    assert image_digests(out) == first


def test_resume_with_other_settings_fails_before_any_work(tmp_path, runner, key_file, monkeypatch):
    source = make_flat_folder(tmp_path / "in")
    out = tmp_path / "out"
    assert protect(runner, source, out, key_file, "--method", "uc", *UC_FAST).exit_code == 0

    def no_work(*args, **kwargs):
        raise AssertionError("a refused resume must not extract features")

    monkeypatch.setattr(uc_pipeline, "extract_folder_features", no_work)
    for extra in (["--eps", "4"], ["--clusters", "2"]):
        result = protect(
            runner, source, out, key_file, "--method", "uc", *UC_FAST, *extra, "--resume"
        )
        assert result.exit_code == 2 and "--resume" in result.stderr
    cuda = protect(
        runner,
        source,
        out,
        key_file,
        "--labels",
        "clusters",
        "--surrogate",
        "random",
        "--clusters",
        "3",
        "-q",
        "--resume",
    )
    assert cuda.exit_code == 2 and "--resume" in cuda.stderr


def test_resume_of_a_run_stopped_before_its_manifest_reads_its_journal(
    tmp_path, runner, key_file, monkeypatch
):
    """Ctrl-C after some files (journal, no manifest yet): a resume with other settings is
    refused before any work, one with the same settings reuses the clusters and perturbations
    and ends as an uninterrupted run."""
    from unlearnable.io import journal as journal_module
    from unlearnable.io import runner as runner_module

    source = make_flat_folder(tmp_path / "in")
    reference, out = tmp_path / "reference", tmp_path / "out"
    args = (key_file, "--method", "uc", *UC_FAST)
    assert protect(runner, source, reference, *args).exit_code == 0
    real_append = journal_module.Journal.append
    appended = []

    def append_then_ctrl_c(self, records):
        texts = real_append(self, records)
        appended.append(len(records))
        if len(appended) == 2:
            raise KeyboardInterrupt
        return texts

    monkeypatch.setattr(runner_module, "CHUNK_FILES", 4)
    monkeypatch.setattr(journal_module.Journal, "append", append_then_ctrl_c)
    assert protect(runner, source, out, *args).exit_code == 130
    assert (out / JOURNAL_NAME).exists() and not (out / MANIFEST_NAME).exists()
    monkeypatch.undo()

    def no_work(*args, **kwargs):
        raise AssertionError("this resume must not extract features or learn perturbations")

    monkeypatch.setattr(uc_pipeline, "extract_folder_features", no_work)
    monkeypatch.setattr(uc_pipeline, "optimise_cluster_perturbations", no_work)
    other = protect(runner, source, out, *args, "--eps", "4", "--resume")
    assert other.exit_code == 2 and "other settings" in other.stderr
    again = protect(runner, source, out, *args, "--resume")
    assert again.exit_code == 0, again.output
    assert image_digests(out) == image_digests(reference)
    manifest = manifest_of(out)
    assert manifest["summary"]["resumed"] == 8
    assert manifest["clustering"]["state_from_cache"] is True
    assert manifest["files"] == manifest_of(reference)["files"]


def test_a_run_killed_after_the_feature_pass_continues_without_resume(tmp_path, runner, key_file):
    source = make_flat_folder(tmp_path / "in")
    out = tmp_path / "out"
    discovery = discover_and_check(source, out)
    cluster_folder(source, out, discovery.files, FIXED_KEY, "random", 3)  # only the caches
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)
    key_path = tmp_path / "fixed.bin"
    ul.write_key_file(key_path, FIXED_KEY)
    result = protect(
        runner,
        source,
        out,
        key_path,
        "--labels",
        "clusters",
        "--surrogate",
        "random",
        "--clusters",
        "3",
        "--workers",
        "1",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert manifest_of(out)["clustering"]["features_from_cache"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "uc", "--surrogate", "random", "--clusters", "22"], "22 clusters from 21"),
        (["--method", "uc", "--surrogate", "no-such-model:openai"], "unknown open_clip model"),
        (["--labels", "clusters", "--surrogate", "tv:no_such_net"], "unknown torchvision"),
        (["--eps", "8"], "--eps and --uc-steps are settings of --method uc"),
        (["--surrogate", "random"], "need --method uc or --labels clusters"),
        (["--method", "uc", "--labels", "single", "--surrogate", "random"], "label-agnostic"),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(tmp_path, runner, key_file, args, message):
    source = make_flat_folder(tmp_path / "in")
    result = protect(runner, source, tmp_path / "out", key_file, *args, "-q")
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    if "--surrogate" in args and "random" not in args:
        assert "--surrogate random" in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()


def test_offline_hub_fails_fast_without_touching_the_network(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(surrogate_loaders, "_network_reachable", lambda url, timeout: False)
    with surrogate_loaders._hub_offline_when_unreachable() as offline:
        assert offline and constants.HF_HUB_OFFLINE
    assert constants.HF_HUB_OFFLINE is False


def test_own_module_as_surrogate_and_verify_with_scraper_folders(tmp_path):
    clean = make_class_folders(tmp_path / "clean")
    test = make_class_folders(tmp_path / "test", per_class=3, offset=100)
    cnn = build_victim("small-cnn", 5, 32, seed=0)
    surrogate = ul.surrogate_from_module(cnn, name="cnn", input_size=32)
    assert isinstance(cnn[-1], torch.nn.Linear)  # the caller's module is left as it was
    run = ul.protect_directory(
        clean,
        tmp_path / "uc",
        FIXED_KEY,
        ul.UCMethodConfig(surrogate=surrogate, clusters=3, uc=ul.UCConfig(steps=2)),
        ul.RunOptions(workers=1),
    )
    assert not run.failed
    assert run.manifest.extra["clustering"]["surrogate"] == "module:cnn"

    loaded = load_verify_folders(tmp_path / "uc", clean, test, hacker_labels="folders")
    data = loaded.data
    assert loaded.owner_label_mode == "manifest:clusters"
    assert data.class_names == ["cluster-0", "cluster-1", "cluster-2"]
    assert data.num_classes == 3 and data.scraper_labels is not None
    folders = sorted(p.parent.name for p in clean.rglob("*.png"))
    names = ["blue", "green", "red"]
    assert sorted(names[i] for i in data.scraper_labels.tolist()) == folders

    mapping = tmp_path / "coarse.csv"
    mapping.write_text("red,warm\ngreen,cold\nblue,cold\n")
    coarse = load_verify_folders(
        tmp_path / "uc", clean, test, labels="folders", hacker_labels=str(mapping)
    )
    assert coarse.data.num_classes == 2
