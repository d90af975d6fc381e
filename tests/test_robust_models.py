"""Model-side commands on models and data we did not make: archives, odd state dicts, plain
``nn.Module``s in float64 or train mode, unreadable images, outputs that would hit the input.

Each test here failed before the fix it names (a traceback, an "internal error", a silently
wrong result or a clobbered input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import make_labelled_folder, random_image
from unlearnable.checkpoints import load_model
from unlearnable.cli import main
from unlearnable.defenses.ebyd import ScanConfig, scan_model
from unlearnable.defenses.ebyd_data import CleanSet, load_clean_folder, match_classes
from unlearnable.defenses.exposure import ExposureConfig
from unlearnable.defenses.freeze_adapters import (
    ClassificationAdapter,
    ClassificationData,
    load_classification_folder,
)
from unlearnable.defenses.freeze_enforce import FinetuneConfig, finetune
from unlearnable.defenses.freeze_learn import FreezeConfig, learn_freeze_mask
from unlearnable.errors import InputError, UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("a", "b", "c")


class Plain(nn.Module):
    """A user's own classifier: conv, batch norm, pooled linear head."""

    def __init__(self, outputs: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _images(n: int = 18, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return images, torch.arange(n) % 3


def _state(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.dtype for p in model.parameters()],
    )


def _same(a, b) -> bool:
    return a[1:] == b[1:] and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def _script(tmp_path: Path, model: nn.Module, name: str = "net.pt") -> Path:
    path = tmp_path / name
    torch.jit.script(model.eval()).save(str(path))
    return path


# ------------------------------------------------------------------ plain modules, library


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [False, True])
def test_scan_takes_a_plain_module_in_any_mode_and_precision_and_leaves_it_alone(
    dtype, training
) -> None:
    # before: float64 -> RuntimeError "Input type (float) and bias type (double)"
    torch.manual_seed(0)
    model = Plain().to(dtype).train(training)
    model.bn.train(not training)  # mixed modes, as a caller with frozen batch norm has
    model.conv.bias.requires_grad_(False)
    before = _state(model)
    images, labels = _images()
    config = ScanConfig(exposure=ExposureConfig(max_epochs=1), defense_images=8)
    result = scan_model(model, CleanSet(images, labels, CLASSES), config)
    assert result.detection.verdict in ("clean", "backdoored", "inconclusive")
    assert _same(before, _state(model))


def test_scan_refuses_a_model_whose_outputs_are_not_the_classes() -> None:
    # before: ran and read a histogram over 5 outputs for 3 classes
    images, labels = _images()
    with pytest.raises(UsageError, match="class count does not match"):
        scan_model(Plain(outputs=5), CleanSet(images, labels, CLASSES), ScanConfig())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finetune_keeps_the_callers_mode_and_takes_float64_models(dtype) -> None:
    # before: the mode came back as eval; float64 -> RuntimeError
    torch.manual_seed(0)
    model = Plain().to(dtype).train(True)
    model.bn.eval()  # mixed modes, as a caller with frozen batch norm has
    images, labels = _images()
    data = ClassificationData(images, labels)
    config = FreezeConfig(steps=2, relearn_epochs=0, batch_size=4, ratio=0.5)
    mask = learn_freeze_mask(model, data, data, config=config).mask
    flags = [p.requires_grad for p in model.parameters()]
    finetune(model, mask, data, config=FinetuneConfig(epochs=1, batch_size=6))
    assert model.training and model.conv.training and not model.bn.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.dtype == dtype for p in model.parameters())


# ------------------------------------------------------------------ archives


def test_a_freeze_mask_is_learned_on_a_torchscript_archive(tmp_path) -> None:
    # before: "ValueError: can't optimize a non-leaf Tensor" (deepcopy of a script module)
    loaded = load_model(_script(tmp_path, Plain()), classes=CLASSES, input_size=12)
    images, labels = _images()
    data = ClassificationData(images, labels)
    config = FreezeConfig(steps=2, relearn_epochs=1, batch_size=4, ratio=0.5)
    result = learn_freeze_mask(loaded, data, data, config=config)
    assert result.mask.frozen
    assert set(result.mask.frozen) <= {n for n, _ in loaded.module.named_parameters()}


def test_a_float64_torchscript_archive_loads_and_predicts(tmp_path) -> None:
    # before: the probe fed float32 zeros -> "fails on a (1, 3, 12, 12) input"
    loaded = load_model(_script(tmp_path, Plain().double()), classes=CLASSES, input_size=12)
    assert loaded.input_dtype == torch.float64
    images, _ = _images(4)
    assert loaded.predict(images.float() / 255).shape == (4,)


def test_finetune_cli_saves_a_torchscript_archive_back_as_one(runner, tmp_path) -> None:
    # before: trained, then "only models in unlearnable's own format can be saved"
    model = _script(tmp_path, Plain())
    data = make_labelled_folder(tmp_path / "data", CLASSES, per_class=3, size=(12, 12))
    common = ["--input-size", "12", "--classes", "a,b,c", "-q"]
    run = runner.invoke(
        main,
        ["freeze", str(model), "--illegal", str(data), "--legal", str(data), "--steps", "2",
         "--relearn-epochs", "0", "--batch-size", "3", "--ratio", "0.5", "-o",
         str(tmp_path / "freeze"), *common],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    run = runner.invoke(
        main,
        ["finetune", str(model), str(data), "--mask", str(tmp_path / "freeze"), "--epochs", "1",
         "-o", str(tmp_path / "ft"), *common],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    saved = tmp_path / "ft" / "model" / "model.pt"
    again = load_model(saved, classes=CLASSES, input_size=12)
    mask = json.loads((tmp_path / "freeze" / "mask.json").read_text())
    for name in mask["frozen"]:
        original = dict(torch.jit.load(str(model)).named_parameters())[name]
        assert torch.equal(dict(again.module.named_parameters())[name], original)


def test_finetune_refuses_an_export_archive_before_training(tmp_path) -> None:
    net = Plain().eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 12, 12),)), str(path))
    loaded = load_model(path, classes=CLASSES)
    with pytest.raises(UsageError, match="cannot be saved after fine-tuning"):
        ClassificationAdapter().check_savable(loaded)


# ------------------------------------------------------------------ state dicts


def _tv_state(classes: int = 3) -> dict[str, torch.Tensor]:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in resnet18(num_classes=classes).state_dict().items()}


@pytest.mark.parametrize("variant", ["compiled", "lightning", "no-counters"])
def test_state_dicts_from_common_training_setups_load(tmp_path, variant) -> None:
    # before: "no key in common: the file holds another architecture"
    from safetensors.torch import save_file

    state = _tv_state()
    if variant == "compiled":
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    elif variant == "lightning":
        state = {f"model.{k}": v for k, v in state.items()}
    else:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    loaded = load_model(path, arch="tv:resnet18", classes=CLASSES, input_size=32)
    weight = loaded.module.state_dict()["1.conv1.weight"]
    assert torch.equal(weight, _tv_state()["conv1.weight"])


def test_a_torchvision_state_dict_takes_the_callers_normalisation(tmp_path) -> None:
    # before: "mean/std cannot be set for tv:resnet18" (ImageNet statistics were forced)
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(_tv_state(), str(path))
    loaded = load_model(
        path, arch="tv:resnet18", classes=CLASSES, input_size=32, mean=[0.5], std=[0.25]
    )
    assert loaded.spec.mean == (0.5, 0.5, 0.5) and loaded.spec.std == (0.25, 0.25, 0.25)
    assert torch.equal(loaded.module.state_dict()["0.mean"].flatten(), torch.full((3,), 0.5))


def test_a_state_dict_recording_its_normalisation_refuses_another(tmp_path) -> None:
    from safetensors.torch import save_file

    from unlearnable.models import build_victim

    path = tmp_path / "w.safetensors"
    save_file(build_victim("small-cnn", 3, 16, seed=0).state_dict(), str(path))
    with pytest.raises(UsageError, match="records its own normalisation"):
        load_model(path, arch="small-cnn", classes=CLASSES, input_size=16, mean=[0.1], std=[1])


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_a_device_torch_cannot_use_is_a_usage_error(tmp_path) -> None:
    # before: "internal error: RuntimeError: PyTorch is not linked with support for mps"
    from safetensors.torch import save_file

    from unlearnable.models import build_victim

    path = tmp_path / "w.safetensors"
    save_file(build_victim("small-cnn", 3, 16, seed=0).state_dict(), str(path))
    with pytest.raises(UsageError, match="mps"):
        load_model(path, arch="small-cnn", classes=CLASSES, input_size=16, device="mps")
    with pytest.raises(UsageError, match="mps"):
        load_model(_script(tmp_path, Plain()), classes=CLASSES, input_size=12, device="mps")


# ------------------------------------------------------------------ clean folders


def _folder_with_bad_files(root: Path) -> Path:
    make_labelled_folder(root, CLASSES, per_class=2, size=(12, 12))
    (root / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "c" / "empty.jpg").write_bytes(b"")
    return root


def test_unreadable_clean_images_are_skipped_and_listed(tmp_path) -> None:
    # before: the first unreadable image stopped scan, purify and backdoor train (exit 2)
    root = _folder_with_bad_files(tmp_path / "clean")
    clean = load_clean_folder(root, CLASSES, 12)
    assert len(clean) == 6 and set(clean.skipped) == {"c/broken.png", "c/empty.jpg"}
    assert clean.labels.tolist().count(2) == 2
    assert "2 clean file(s) could not be read" in (clean.skipped_note() or "")
    data = load_classification_folder(root, CLASSES, 12)
    assert data.images.shape[0] == 6 and set(data.skipped) == set(clean.skipped)


def test_a_clean_folder_with_one_readable_class_is_refused(tmp_path) -> None:
    root = tmp_path / "clean"
    make_labelled_folder(root, ("a",), per_class=2, size=(12, 12))
    (root / "b").mkdir()
    (root / "b" / "broken.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="at least 2 classes"):
        load_clean_folder(root, CLASSES, 12)


def test_class_names_that_differ_in_case_get_a_hint(tmp_path) -> None:
    with pytest.raises(InputError, match="differ only in case or spaces: 'cat' ~ 'Cat'"):
        match_classes(["cat", "dog"], ["Cat", "dog"], tmp_path)


def test_scan_cli_notes_skipped_images_in_the_report(runner, tmp_path) -> None:
    root = _folder_with_bad_files(tmp_path / "clean")
    model = _script(tmp_path, Plain())
    run = runner.invoke(
        main,
        ["scan", str(model), "--clean", str(root), "--classes", "a,b,c", "--input-size", "12",
         "--max-epochs", "1", "--defense-images", "4", "--json", "-o", str(tmp_path / "run")],
    )  # fmt: skip
    assert run.exit_code in (0, 1, 3), run.output  # clean, inconclusive or flagged
    report = json.loads(run.stdout)
    assert any("could not be read" in note for note in report["notes"])


def test_names_that_are_not_utf8_are_reported_not_crashed_on(tmp_path) -> None:
    # before: "internal error: UnicodeEncodeError ... surrogates not allowed" writing reports
    import os

    from unlearnable.defenses.ebyd_subjects import _class_names

    root = make_labelled_folder(tmp_path / "clean", CLASSES, per_class=2, size=(12, 12))
    with open(os.fsencode(root / "a") + b"/bad\xff.png", "wb") as handle:
        handle.write(b"junk")
    clean = load_clean_folder(root, CLASSES, 12)
    assert list(clean.skipped) == ["a/bad\\xff.png"]
    json.dumps(clean.skipped_note(), ensure_ascii=False).encode("utf-8")
    os.mkdir(os.fsencode(root) + b"/caf\xe9")
    random_image().save(os.fsdecode(os.fsencode(root) + b"/caf\xe9/0.png"))
    with pytest.raises(InputError, match=r"caf\\xe9' of .* is not valid UTF-8"):
        load_clean_folder(root, CLASSES, 12)
    with pytest.raises(InputError, match="not valid UTF-8"):
        _class_names(root)


def _one_class_model() -> nn.Module:
    """A classifier that answers class 0 for every image (at chance on balanced data)."""
    model = Plain()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    return model.eval()


def test_a_model_at_chance_on_the_clean_images_is_inconclusive_not_backdoored(
    runner, tmp_path
) -> None:
    # before: "backdoored", exit 3, for an untrained model or class names in the wrong order
    images, labels = _images()
    config = ScanConfig(exposure=ExposureConfig(max_epochs=1), defense_images=9)
    result = scan_model(_one_class_model(), CleanSet(images, labels, CLASSES), config)
    assert result.detection.verdict == "inconclusive"
    assert not result.flagged and result.target_name is None
    assert "before any exposure" in result.notes[0]
    model = _script(tmp_path, _one_class_model())
    clean = make_labelled_folder(tmp_path / "clean", CLASSES, per_class=3, size=(12, 12))
    run = runner.invoke(
        main,
        ["scan", str(model), "--clean", str(clean), "--classes", "a,b,c", "--input-size", "12",
         "--max-epochs", "1", "--json", "-o", str(tmp_path / "run")],
    )  # fmt: skip
    assert run.exit_code == 1, run.output
    assert json.loads(run.stdout)["verdict"] == "inconclusive"


def test_class_name_files_with_a_byte_order_mark_and_paths_without_at(tmp_path, monkeypatch):
    # before: the BOM became part of the first class name; "classes.txt" gave "got 1"
    from unlearnable.cli.model_options import parse_classes

    names = tmp_path / "names.txt"
    names.write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\n")
    assert parse_classes(f"@{names}") == ("cat", "dog")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="given as @FILE"):
        parse_classes("missing.txt")


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = Plain()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


class _MapOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.conv(x), 1)


@pytest.mark.parametrize("net", [_DictOut, _MapOut])
def test_archives_returning_a_logits_dict_or_a_1x1_map_load(tmp_path, net) -> None:
    # before: "the model returned dict ...; check input_size" / "outputs of shape (1, 3, 1, 1)"
    loaded = load_model(_script(tmp_path, net()), classes=CLASSES, input_size=12)
    images, _ = _images(2)
    assert loaded(images.float() / 255).shape == (2, 3)


@pytest.mark.parametrize("training", [False, True])
def test_audit_takes_a_float64_module_and_a_logits_dict_and_leaves_them_alone(training) -> None:
    # before: RuntimeError "Input type (float) and bias type (double)" / "'dict' has no argmax"
    from unlearnable.audit import AuditConfig, audit_model
    from unlearnable.io.manifest import Manifest
    from unlearnable.keys import SecretKey
    from unlearnable.protect.cuda import CudaProtector

    key = SecretKey(bytes([3]) * 32)
    manifest = Manifest(
        "cuda", CudaProtector(key, CLASSES).parameters(), key.fingerprint, "folders", list(CLASSES)
    )
    probes = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    config = AuditConfig(null_keys=3, alpha=0.5)
    for model in (Plain().double(), _DictOut()):
        model.train(training)
        next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).train(not training)
        before = _state(model)
        result = audit_model(model, key, manifest, probes, model_classes=CLASSES, config=config)
        assert 0 < result.p_value <= 1
        assert _same(before, _state(model))
    last = _one_class_model()
    last.head.bias.data = torch.tensor([0.0, 0.0, 5.0])  # answers class 2 for everything
    with pytest.raises(UsageError, match="name every output"):
        free = AuditConfig(null_keys=3, alpha=0.5, statistic="label-free")
        audit_model(last, key, manifest, probes, model_classes=["a", "b"], config=free)


def test_an_export_for_rectangular_inputs_says_so(tmp_path) -> None:
    # before: "holds no model description: pass input_size=", then a guard failure
    from unlearnable.errors import ModelFileError

    path = tmp_path / "rect.pt2"
    torch.export.save(torch.export.export(Plain().eval(), (torch.zeros(2, 3, 12, 16),)), str(path))
    with pytest.raises(ModelFileError, match="exported for 12x16 inputs"):
        load_model(path, classes=CLASSES, input_size=12)
