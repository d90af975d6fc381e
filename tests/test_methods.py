"""Protection methods as registry entries, and the folder runner's executors (CPU, offline)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unlearnable as ul
from unlearnable.cli import main
from unlearnable.errors import UsageError
from unlearnable.io import runner
from unlearnable.io.executors import ProcessExecutor, SerialExecutor
from unlearnable.io.manifest import MANIFEST_NAME
from unlearnable.io.runner import FolderJob
from unlearnable.protect.methods import (
    METHODS,
    MethodContext,
    method_config,
    register_method,
    resolve_method,
)
from unlearnable.protect.uc_method import UCMethodConfig

from .conftest import FIXED_KEY, make_labelled_folder, tree_digest

TIMING = {"created", "seconds", "images_per_second"}


def manifest_without_timings(folder: Path) -> dict:
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data.pop("created")
    data["summary"] = {k: v for k, v in data["summary"].items() if k not in TIMING}
    return data


def outputs(folder: Path) -> dict[str, str]:
    digests = tree_digest(folder)
    digests.pop(MANIFEST_NAME)
    return digests


# ------------------------------------------------------------------------------ the registry


@pytest.mark.parametrize(
    ("name", "config_type"),
    [
        ("cuda", ul.CudaConfig),
        ("cluster-cuda", ul.ClusterCudaConfig),
        ("photo", ul.PhotoConfig),
        ("uc", UCMethodConfig),
    ],
)
def test_each_method_is_a_registry_entry_with_a_frozen_config(name, config_type):
    entry = METHODS.get(name)
    assert entry.name == name and entry.config_type is config_type
    assert config_type.__dataclass_params__.frozen
    default = config_type()
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.clusters = 3  # type: ignore[misc]
    assert resolve_method(name) == (entry, default)
    assert METHODS.for_config(default) is entry
    assert name in METHODS.names()


def test_an_unknown_method_is_refused_with_the_choices(tmp_path):
    source = make_labelled_folder(tmp_path / "in")
    with pytest.raises(UsageError, match="unknown protection method 'blur'") as caught:
        ul.protect_directory(source, tmp_path / "out", FIXED_KEY, "blur")
    assert "cluster-cuda, cuda, photo, uc" in str(caught.value)
    with pytest.raises(UsageError, match="the configs are: ClusterCudaConfig"):
        ul.protect_directory(source, tmp_path / "out", FIXED_KEY, ul.UCConfig())
    assert not (tmp_path / "out").exists()


def test_options_of_another_method_are_refused():
    with pytest.raises(UsageError, match="'uc' has no option kernel_size; its options: surrogate"):
        method_config("uc", kernel_size=5)
    with pytest.raises(UsageError, match="'cuda' has no option clusters, surrogate"):
        method_config("cuda", surrogate="random", clusters=3)
    assert method_config("cluster-cuda", clusters=3, strength="high") == ul.ClusterCudaConfig(
        clusters=3, strength="high"
    )
    with pytest.raises(UsageError, match="cluster-cuda"):
        ul.CudaConfig(labels="clusters")
    with pytest.raises(UsageError, match="strength"):
        ul.CudaConfig(strength="max")
    with pytest.raises(UsageError, match="odd"):
        ul.ClusterCudaConfig(kernel_size=4)
    with pytest.raises(UsageError, match="at least 2 clusters"):
        UCMethodConfig(clusters=1)
    with pytest.raises(UsageError, match="workers"):
        ul.RunOptions(workers=0)


def test_the_cli_refuses_options_of_another_method(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    argv = ["protect", str(source), "-o", str(tmp_path / "out"), "--key", str(key_file), "-q"]
    result = runner.invoke(main, [*argv, "--method", "uc", "--blur", "0.2"])
    assert result.exit_code == 2 and "CUDA settings" in result.stderr
    result = runner.invoke(main, [*argv, "--method", "cluster-cuda", "--labels", "folders"])
    assert result.exit_code == 2 and "label-agnostic" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_method_choices_come_from_the_registry(runner):
    result = runner.invoke(main, ["protect", "--help"])
    assert result.exit_code == 0
    for name in METHODS.names():
        assert name in result.output
        assert METHODS.get(name).summary.split()[0] in result.output


# ------------------------------------------------------------------------------ a new method


@dataclass
class ShiftProtector:
    """Adds ``shift`` to every pixel of class 1 and subtracts it from the others."""

    shift: float
    method: str = "toy-shift"

    def parameters(self) -> dict:
        return {"shift": self.shift}

    def plan(self, height: int, width: int) -> str:
        return "all"

    def describe_plan(self, plan: str) -> dict:
        return {"plan": plan}

    def apply(self, images: torch.Tensor, label_ids: torch.Tensor, plan: str) -> torch.Tensor:
        sign = torch.where(label_ids == 1, 1.0, -1.0).view(-1, 1, 1, 1)
        return (images + sign * self.shift).clamp(0.0, 1.0)


@dataclass(frozen=True)
class ShiftConfig:
    labels: str = "auto"
    shift: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.shift <= 1:
            raise UsageError(f"shift must be in (0, 1], got {self.shift}")


@pytest.fixture
def toy_method():
    @register_method("toy-shift", ShiftConfig, summary="a test method")
    def prepare(config: ShiftConfig, context: MethodContext) -> FolderJob:
        labels = context.assign_labels(config.labels)
        return FolderJob(
            protector=ShiftProtector(config.shift),
            labels=labels.labels,
            classes=labels.classes,
            label_mode=labels.mode,
            problems=labels.problems,
            manifest_extra={"toy": {"files": len(context.files)}},
        )

    yield prepare
    METHODS.remove("toy-shift")
    assert "toy-shift" not in METHODS


def test_a_registered_method_protects_a_folder_end_to_end(tmp_path, toy_method):
    source = make_labelled_folder(tmp_path / "in", classes=("cat", "dog"), per_class=2)
    (source / "loose.png").write_bytes(b"not in a class folder, and not an image")
    run = ul.protect_directory(
        source, tmp_path / "out", FIXED_KEY, ShiftConfig(labels="folders", shift=0.2),
        ul.RunOptions(workers=1),
    )
    manifest = run.manifest
    assert manifest.method == "toy-shift" and manifest.extra["toy"] == {"files": 5}
    assert manifest.parameters["shift"] == 0.2 and manifest.label_mode == "folders"
    assert [r.path for r in run.failed] == ["loose.png"]
    for record in run.succeeded:
        before = np.asarray(Image.open(source / record.path), dtype=np.int16)
        after = np.asarray(Image.open(tmp_path / "out" / record.path), dtype=np.int16)
        expected = np.clip(before + (51 if record.label == "dog" else -51), 0, 255)
        assert np.abs(after - expected).max() <= 1, record.path
        assert record.params == {"plan": "all"}

    by_name = ul.protect_directory(source, tmp_path / "named", FIXED_KEY, "toy-shift")
    assert by_name.manifest.parameters["shift"] == 0.1 and by_name.manifest.label_mode == "folders"
    entry = METHODS.get("toy-shift")
    from_cli = entry.config_from_options({"labels": "single", "shift": 0.3, "eps": None})
    assert from_cli == ShiftConfig(labels="single", shift=0.3)


# ------------------------------------------------------------------------------ executors


@pytest.mark.parametrize("in_process", [True, False])
def test_serial_and_process_pool_executors_give_identical_outputs(
    tmp_path, monkeypatch, in_process
):
    source = make_labelled_folder(tmp_path / "in", classes=("a", "b", "c"), per_class=3)
    monkeypatch.setattr(runner, "CHUNK_FILES", 2)  # 5 chunks, so the pool really runs
    config = ul.CudaConfig(labels="folders", strength="high")
    serial = ul.protect_directory(
        source, tmp_path / "serial", FIXED_KEY, config, ul.RunOptions(executor=SerialExecutor())
    )
    pool = ProcessExecutor(2, in_process=in_process)
    pooled = ul.protect_directory(
        source, tmp_path / "pool", FIXED_KEY, config, ul.RunOptions(executor=pool)
    )
    assert len(serial.succeeded) == len(pooled.succeeded) == 9
    assert outputs(tmp_path / "serial") == outputs(tmp_path / "pool")
    assert manifest_without_timings(tmp_path / "serial") == manifest_without_timings(
        tmp_path / "pool"
    )


def _return_or_die(context: int, item: int) -> tuple[str, int]:
    if item == context:
        os._exit(3)  # a worker killed mid-run (as by the out-of-memory killer)
    return ("done", item)


def test_a_dead_worker_loses_its_items_instead_of_failing_the_run():
    items = list(range(6))
    results = list(
        ProcessExecutor(2, in_process=False).run(
            _return_or_die, 2, items, lambda item, message: ("lost", item)
        )
    )
    assert sorted(item for _, item in results) == items  # every item answered exactly once
    assert ("lost", 2) in results
    serial = list(SerialExecutor().run(_return_or_die, -1, items, lambda item, message: None))
    assert serial == [("done", item) for item in items]


def test_cli_defaults_match_the_library():
    from unlearnable.cli import protect as cli_protect
    from unlearnable.io.images import DEFAULT_MAX_PIXELS

    assert cli_protect.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS
