"""Model files: our safetensors + model.json format, TorchScript / torch.export archives, state
dicts for registered architectures, and the refusals (pickles, garbage, weights that do not fit).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from unlearnable.checkpoints import (
    SCHEMA_VERSION,
    LoadedModel,
    ModelSpec,
    UntrustedPickleError,
    detect_format,
    load_model,
    read_state_dict,
    save_model,
)
from unlearnable.errors import IntegrityError, ModelFileError, UsageError
from unlearnable.models import build_victim

CLASSES = ("cat", "dog", "bird")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def _images(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator)


def _trained_like(name: str, size: int = 16, seed: int = 1) -> nn.Module:
    """A victim whose weights and BN statistics differ from any fresh build (eval mode)."""
    model = build_victim(name, len(CLASSES), size, seed=seed)
    with torch.no_grad():
        model.train()(_images(8, size, seed=seed))  # moves the BN running statistics
    return model.eval()


class _Plain(nn.Module):
    """A model that does not normalise its inputs itself (the caller must)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _plain_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std)


# ------------------------------------------------------------------------------ our format


@pytest.mark.parametrize("name", ["small-cnn", "resnet20"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    model = _trained_like(name)
    spec = ModelSpec(classes=CLASSES, input_size=16, arch=name, metadata={"epochs": 3})
    json_path = save_model(model, tmp_path / "victim", spec)
    assert json_path == tmp_path / "victim" / "model.json"
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["model.json", "model.safetensors"]

    loaded = load_model(tmp_path / "victim")
    assert isinstance(loaded, LoadedModel) and not loaded.training
    assert loaded.source_format == "unlearnable"
    x = _images(4)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(loaded(x), expected)
        # the weights really come from the file: a fresh build gives other outputs
        fresh = build_victim(name, len(CLASSES), 16, seed=0).eval()
        assert not torch.allclose(fresh(x), expected)
    assert torch.equal(loaded.predict(x, batch_size=3), expected.argmax(1))
    assert loaded.class_names([2, 0]) == ["bird", "cat"]

    recorded = loaded.spec
    assert recorded.classes == CLASSES and recorded.arch == name
    assert recorded.metadata == {"epochs": 3}
    assert recorded.normalized_by_model and recorded.mean == (0.5,) * 3
    data = json.loads(json_path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["builder"] == {
        "name": name,
        "args": {"num_classes": 3, "image_size": 16, "in_channels": 3},
    }
    assert data["input"]["normalized_by_model"] is True
    # either file of the pair loads the same model
    assert load_model(json_path).spec == recorded
    assert load_model(json_path.with_name("model.safetensors")).spec == recorded


def test_stem_pair_and_lone_weights_file(tmp_path: Path) -> None:
    model = _trained_like("small-cnn")
    spec = ModelSpec(classes=CLASSES, input_size=16, arch="small-cnn")
    json_path = save_model(model, tmp_path / "nets" / "clean.safetensors", spec)
    assert json_path == tmp_path / "nets" / "clean.json"
    assert (tmp_path / "nets" / "clean.safetensors").is_file()
    # the weights alone still describe their model (the spec is in the safetensors header)
    lone = tmp_path / "elsewhere.safetensors"
    shutil.copy(tmp_path / "nets" / "clean.safetensors", lone)
    x = _images(2)
    loaded = load_model(lone, classes=["a", "b", "c"])  # renaming the classes is allowed
    assert loaded.spec.classes == ("a", "b", "c")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ModelFileError, match="class count does not match"):
        load_model(lone, classes=["a", "b"])
    with pytest.raises(UsageError, match="input_size"):
        load_model(lone, input_size=32)
    with pytest.raises(UsageError, match="arch"):
        load_model(lone, arch="resnet20")


def test_torchvision_victims_and_plain_torchvision_state_dicts(tmp_path: Path) -> None:
    import torchvision

    from unlearnable.models import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=len(CLASSES)).eval()
    path = tmp_path / "mobilenet.safetensors"  # keys as torchvision names them: features.0...
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    loaded = load_model(path, arch="tv:mobilenet_v3_small", classes=CLASSES, input_size=32)
    assert loaded.spec.mean == IMAGENET_MEAN and loaded.spec.normalized_by_model
    x = _images(2, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x - mean) / std)
        assert torch.allclose(loaded(x), expected, atol=1e-5)
    # and our own format for a tv: victim
    spec = ModelSpec(classes=CLASSES, input_size=32, arch="tv:mobilenet_v3_small")
    save_model(loaded.module, tmp_path / "tv", spec)
    again = load_model(tmp_path / "tv")
    assert again.spec.arch == "tv:mobilenet_v3_small" and again.spec.mean == IMAGENET_MEAN
    with torch.no_grad():
        assert torch.allclose(again(x), expected, atol=1e-5)


def test_prepare_resizes_and_handles_grey_and_colour(tmp_path: Path) -> None:
    model = _trained_like("small-cnn")
    save_model(model, tmp_path / "m", ModelSpec(classes=CLASSES, input_size=16, arch="small-cnn"))
    loaded = load_model(tmp_path / "m")
    big = torch.rand(2, 3, 40, 64)  # non-square: centre-cropped to 40x40, resized to 16x16
    prepared = loaded.prepare(big)
    assert prepared.shape == (2, 3, 16, 16) and big.shape == (2, 3, 40, 64)
    assert loaded(big).shape == (2, 3)
    grey = torch.rand(2, 1, 16, 16)
    assert torch.equal(loaded.prepare(grey), grey.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="channels"):
        loaded.prepare(torch.rand(1, 2, 16, 16))
    loaded.train()
    loaded.predict(_images(2))
    assert loaded.training and loaded.module.training  # predict restores the mode


def test_model_json_refusals(tmp_path: Path) -> None:
    save_model(
        _trained_like("small-cnn"),
        tmp_path / "m",
        ModelSpec(classes=CLASSES, input_size=16, arch="small-cnn"),
    )
    json_path = tmp_path / "m" / "model.json"
    original = json.loads(json_path.read_text())

    def rewrite(**changes) -> None:
        json_path.write_text(json.dumps({**original, **changes}))

    rewrite(builder={"name": "no-such-net", "args": original["builder"]["args"]})
    with pytest.raises(ModelFileError, match="unknown model builder.*no-such-net"):
        load_model(tmp_path / "m")
    rewrite(schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ModelFileError, match="newer"):
        load_model(tmp_path / "m")
    rewrite(classes=["a", "b"])
    with pytest.raises(ModelFileError, match="class count does not match"):
        load_model(tmp_path / "m")
    # the builder is right but the weights are another architecture's
    rewrite(builder={"name": "resnet20", "args": original["builder"]["args"]})
    with pytest.raises(ModelFileError, match="do not fit resnet20.*missing keys"):
        load_model(tmp_path / "m")


def test_weights_that_do_not_fit_name_the_keys(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in _trained_like("resnet20").state_dict().items()}
    path = tmp_path / "weights.safetensors"
    args = {"arch": "resnet20", "classes": CLASSES, "input_size": 16}

    save_file({k: v for k, v in state.items() if k != "fc.bias"}, str(path))
    with pytest.raises(ModelFileError, match="missing keys: fc.bias"):
        load_model(path, **args)
    save_file({**state, "extra.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="unexpected keys: extra.weight"):
        load_model(path, **args)
    save_file({**state, "stem.0.weight": torch.zeros(16, 3, 5, 5)}, str(path))
    with pytest.raises(ModelFileError, match=r"shape mismatch: stem\.0\.weight is \[16, 3, 5, 5\]"):
        load_model(path, **args)
    save_file(state, str(path))
    with pytest.raises(ModelFileError, match="class count does not match.*fc.weight"):
        load_model(path, arch="resnet20", classes=["a", "b", "c", "d"], input_size=16)
    with pytest.raises(ModelFileError, match="--arch"):
        load_model(path, classes=CLASSES, input_size=16)
    with pytest.raises(ModelFileError, match="unknown model builder"):
        load_model(path, arch="no-such-net", classes=CLASSES, input_size=16)
    loaded = load_model(path, **args)
    assert loaded.source_format == "safetensors" and loaded.spec.mean == (0.5,) * 3


def test_save_refuses_a_spec_the_model_does_not_fit(tmp_path: Path) -> None:
    model = _trained_like("small-cnn")
    with pytest.raises(UsageError, match="class count does not match"):
        save_model(
            model, tmp_path / "m", ModelSpec(classes=("a", "b"), input_size=16, arch="small-cnn")
        )
    with pytest.raises(UsageError, match="do not fit resnet20"):
        save_model(
            model, tmp_path / "m", ModelSpec(classes=CLASSES, input_size=16, arch="resnet20")
        )
    with pytest.raises(UsageError, match="spec.arch"):
        save_model(model, tmp_path / "m", ModelSpec(classes=CLASSES, input_size=16))
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------ atomic writes


def test_failed_save_leaves_no_partial_files(tmp_path: Path, monkeypatch) -> None:
    model = _trained_like("small-cnn")
    spec = ModelSpec(classes=CLASSES, input_size=16, arch="small-cnn")

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tmp_path / "m", spec)
    assert list((tmp_path / "m").iterdir()) == []  # no temp file, no half-written file
    monkeypatch.undo()

    save_model(model, tmp_path / "m", spec)
    other = _trained_like("small-cnn", seed=2)
    real_replace = os.replace

    def fail_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("crash between the two files")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_json)
    with pytest.raises(OSError, match="crash"):
        save_model(other, tmp_path / "m", spec)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    with pytest.raises(IntegrityError, match="SHA-256"):  # the torn pair is detected
        load_model(tmp_path / "m")


# ------------------------------------------------------------------------------ archives


def test_torchscript_archive_predicts_like_the_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Plain().eval()
    path = tmp_path / "scripted.bin"  # the extension says nothing: detection is by content
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    assert detect_format(path) == "torchscript"
    with pytest.raises(ModelFileError, match="--classes"):
        load_model(path, input_size=16)
    with pytest.raises(ModelFileError, match="class count does not match"):
        load_model(path, classes=["a", "b"], input_size=16)
    loaded = load_model(path, classes=CLASSES, input_size=16, mean=MEAN, std=STD)
    assert loaded.source_format == "torchscript" and not loaded.spec.normalized_by_model
    x = _images(5)
    with torch.no_grad():
        assert torch.allclose(loaded(x), _plain_reference(model, x), atol=1e-6)
    with pytest.raises(ModelFileError, match="not a state dict"):
        read_state_dict(path)


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_torch_export_archive_predicts_like_the_original(tmp_path: Path, dynamic_batch) -> None:
    torch.manual_seed(0)
    model = _Plain().eval()
    example = (torch.rand(2, 3, 16, 16),)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, example, dynamic_shapes=shapes), str(path))
    assert detect_format(path) == "torch-export"
    # the archive gives its input size; the class names must come from the caller
    with pytest.raises(ModelFileError, match="--classes"):
        load_model(path)
    with pytest.raises(UsageError, match="16 px"):
        load_model(path, classes=CLASSES, input_size=32)
    loaded = load_model(path, classes=CLASSES, mean=MEAN, std=STD)
    assert loaded.spec.input_size == 16
    assert loaded.fixed_batch == (None if dynamic_batch else 2)
    x = _images(5)  # not a multiple of the exported batch of 2
    with torch.no_grad():
        assert torch.allclose(loaded(x), _plain_reference(model, x), atol=1e-6)
    assert loaded.predict(x).shape == (5,)


# ------------------------------------------------------------------------------ pickles


def test_pickle_needs_trust_pickle(tmp_path: Path) -> None:
    model = _trained_like("resnet20")
    args = {"arch": "resnet20", "classes": CLASSES, "input_size": 16}
    x = _images(3)
    for legacy in (False, True):
        path = tmp_path / f"weights-{legacy}.pth"
        torch.save(
            {"state_dict": model.state_dict()}, path, _use_new_zipfile_serialization=not legacy
        )
        assert detect_format(path) == "pickle"
        with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
            load_model(path, **args)
        loaded = load_model(path, trust_pickle=True, **args)
        assert loaded.source_format == "pickle"
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)  # a pickled module, not a state dict: refused even when trusted
    with pytest.raises(ModelFileError, match="state_dict"):
        load_model(whole, trust_pickle=True, **args)


def test_read_state_dict_unwraps_and_strips_module_prefix(tmp_path: Path) -> None:
    path = tmp_path / "dp.pt"
    torch.save({"model": {"module.w": torch.ones(2), "module.b": torch.zeros(1)}}, path)
    weights = read_state_dict(path, trust_pickle=True)
    assert set(weights.tensors) == {"w", "b"} and weights.format == "pickle"
    assert len(weights.sha256) == 64
    renamed = tmp_path / "really-safetensors.pt"
    save_file({"w": torch.ones(2)}, str(renamed))
    assert read_state_dict(renamed).format == "safetensors"  # no trust needed: not a pickle


# ------------------------------------------------------------------------------ garbage


def test_garbage_empty_and_truncated_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(os.urandom(64) + b"not a model")
    with pytest.raises(ModelFileError, match="unknown checkpoint format"):
        load_model(garbage, arch="small-cnn", classes=CLASSES, input_size=16)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        load_model(empty)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.pt2")
    with pytest.raises(ModelFileError, match="without model.json"):
        load_model(tmp_path)

    save_model(
        _trained_like("small-cnn"),
        tmp_path / "m",
        ModelSpec(classes=CLASSES, input_size=16, arch="small-cnn"),
    )
    data = (tmp_path / "m" / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(cut)
    archive = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(1000)}, archive)
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="truncated or damaged zip"):
        load_model(archive, trust_pickle=True)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        ModelSpec(classes=("a", "a"), input_size=8)
    with pytest.raises(ValueError, match="at least 2"):
        ModelSpec(classes=("a",), input_size=8)
    with pytest.raises(ValueError, match="mean and std"):
        ModelSpec(classes=("a", "b"), input_size=8, normalized_by_model=False)
    with pytest.raises(ValueError, match="JSON"):
        ModelSpec(classes=("a", "b"), input_size=8, metadata={"x": object()})
    spec = ModelSpec(classes=["a", "b"], input_size=8, mean=[0.5], std=[0.25])
    assert spec.classes == ("a", "b") and spec.mean == (0.5,) and spec.num_classes == 2
    assert ModelSpec.from_json_dict(spec.to_json_dict(), "test") == spec
