"""FreezeAsGuard: mask learning, the mask file, enforcement (frozen tensors never move), the
classification adapter and the ``freeze`` / ``finetune`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from unlearnable.defenses.freeze import (
    ClassificationAdapter,
    ClassificationData,
    FinetuneConfig,
    FreezeConfig,
    MaskFileError,
    build_mask,
    finetune,
    learn_freeze_mask,
    load_mask,
    relearn,
    save_mask,
)
from unlearnable.errors import IntegrityError, UsageError
from unlearnable.training import Callback

from .conftest import make_labelled_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


class Tiny(nn.Module):
    """conv-BN-conv-pool-linear on (B, 3, 8, 8) images, 4 classes."""

    def __init__(self, width: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.head(x)


def data(classes: tuple[int, ...], n: int = 16, seed: int = 0) -> ClassificationData:
    """Colour-coded uint8 (n, 3, 8, 8) images of ``classes``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes)[torch.arange(n) % len(classes)]
    colours = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.2, 0.9], [0.8, 0.8, 0.2]])
    x = colours[labels][:, :, None, None] + 0.15 * torch.randn(n, 3, 8, 8, generator=g)
    return ClassificationData((x.clamp(0, 1) * 255).round().to(torch.uint8), labels)


ILLEGAL, LEGAL = data((0, 1), seed=1), data((2, 3), seed=2)
QUICK = FreezeConfig(ratio=0.4, steps=8, batch_size=8, relearn_epochs=1)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- enforcement


class GradSpy(Callback):
    """Records, after every batch, which parameters hold a gradient."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.with_grad: list[set[str]] = []

    def on_step_end(self, state, step) -> None:
        self.with_grad.append({n for n, p in self.model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_frozen_tensors_stay_bit_identical_with_weight_decay(optimizer: str) -> None:
    model = Tiny()
    mask = build_mask(model, ["conv1.weight", "bn1.bias"], excluded=["head.weight", "head.bias"])
    before = snapshot(model)
    spy = GradSpy(model)
    config = FinetuneConfig(epochs=3, lr=0.05, weight_decay=0.5, batch_size=8, optimizer=optimizer)
    result = finetune(model, mask, ILLEGAL, config=config, callbacks=[spy])
    after = snapshot(model)
    for name in ("conv1.weight", "bn1.bias"):
        assert torch.equal(before[name], after[name]), name
    for name in ("conv1.bias", "bn1.weight", "conv2.weight", "head.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert result.verified and result.frozen_tensors == 2
    assert all("conv1.weight" not in names and "conv2.weight" in names for names in spy.with_grad)
    assert all(p.requires_grad for p in model.parameters())  # restored after the run


def test_frozen_channels_stay_bit_identical_while_the_rest_of_the_tensor_trains() -> None:
    model = Tiny()
    mask = build_mask(model, {"conv1.weight": (0, 2), "bn1.weight": (1,)}, level="channel")
    before = snapshot(model)
    # 3 batches per epoch, 2 per step: every epoch ends with a remainder step
    config = FinetuneConfig(epochs=3, lr=0.05, weight_decay=0.5, batch_size=6, accumulate=2)
    result = finetune(model, mask, ILLEGAL, config=config)
    after = snapshot(model)
    assert torch.equal(before["conv1.weight"][[0, 2]], after["conv1.weight"][[0, 2]])
    assert torch.equal(before["bn1.weight"][1], after["bn1.weight"][1])
    assert not torch.equal(before["conv1.weight"][1], after["conv1.weight"][1])
    assert not torch.equal(before["bn1.weight"][0], after["bn1.weight"][0])
    frozen_numel = 2 * 3 * 3 * 3 + 1
    total = sum(p.numel() for p in model.parameters())
    assert result.trainable_parameters == total - frozen_numel
    assert mask.frozen_parameter_count == frozen_numel


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_channel_mask_from_a_file_keeps_its_channels_through_weight_decay(
    optimizer: str, tmp_path: Path
) -> None:
    model = Tiny()
    frozen = {"conv1.weight": (1, 4), "bn1.bias": (0, 5), "conv2.weight": (7,)}
    path = save_mask(build_mask(model, frozen, level="channel"), tmp_path / "m.json")
    mask = load_mask(path)
    before = snapshot(model)
    config = FinetuneConfig(epochs=2, lr=0.05, weight_decay=0.5, batch_size=8, optimizer=optimizer)
    assert finetune(model, mask, ILLEGAL, config=config).verified
    after = snapshot(model)
    for name, channels in frozen.items():
        free = [c for c in range(before[name].shape[0]) if c not in channels]
        assert torch.equal(before[name][list(channels)], after[name][list(channels)]), name
        assert not torch.equal(before[name][free], after[name][free]), name  # the rest moves
    mask.check_release(model)  # still the release after enforced fine-tuning


def test_channel_mask_file_round_trips(tmp_path: Path) -> None:
    model = Tiny()
    frozen = {"conv1.weight": (0, 2), "bn1.weight": (1,), "conv2.bias": None}
    mask = build_mask(model, frozen, level="channel", excluded=["head.weight", "head.bias"])
    loaded = load_mask(save_mask(mask, tmp_path / "m.json"))
    assert loaded.level == "channel" and loaded.frozen == mask.frozen
    assert loaded.release_digest == mask.release_digest and loaded.share == mask.share
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["frozen"] == {"conv1.weight": [0, 2], "bn1.weight": [1], "conv2.bias": None}
    groups = 6 + 6 + 6 + 6 + 8 + 8  # dim 0 of every maskable tensor
    assert data["share"]["groups"] == pytest.approx((2 + 1 + 8) / groups)
    assert loaded.frozen_parameter_count == 2 * 27 + 1 + 8
    # the channel values are part of the release digest: changing one is noticed
    with torch.no_grad():
        model.conv1.weight[2].add_(1.0)
    with pytest.raises(IntegrityError, match="differ from the release"):
        loaded.check_release(model)


def test_channel_mask_mismatches_are_refused(tmp_path: Path) -> None:
    path = save_mask(
        build_mask(Tiny(), {"conv1.weight": (0, 2)}, level="channel", excluded=["head.bias"]),
        tmp_path / "m.json",
    )
    good = json.loads(path.read_text())

    def refused(change, match: str) -> None:
        data = json.loads(json.dumps(good))
        change(data)
        path.write_text(json.dumps(data))
        with pytest.raises(MaskFileError, match=match):
            load_mask(path)

    refused(lambda d: d["frozen"].update({"conv1.weight": [0, 6]}), r"channel\(s\) \[6\]")
    refused(lambda d: d["frozen"].update({"conv1.weight": [-1]}), r"channel\(s\) \[-1\]")
    refused(lambda d: d["frozen"].update({"conv1.weight": [2, 2]}), "twice")
    refused(lambda d: d["frozen"].update({"conv1.weight": []}), "empty channel list")
    refused(lambda d: d["frozen"].update({"conv1.weight": ["x"]}), "damaged")
    refused(lambda d: d.update({"level": "tensor"}), "only channel-level masks")
    refused(lambda d: d["frozen"].update({"head.bias": None}), "also excludes")
    path.write_text(json.dumps(good))
    with pytest.raises(MaskFileError, match="fingerprint differs"):
        finetune(Tiny(width=5), load_mask(path), ILLEGAL, config=FinetuneConfig(epochs=1))
    with pytest.raises(MaskFileError, match="only channel-level"):
        build_mask(Tiny(), {"conv1.weight": (0,)})  # channels in a tensor-level mask


def test_finetune_refuses_changed_release_values() -> None:
    model = Tiny()
    mask = build_mask(model, ["conv2.weight"])
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] += 1.0
    with pytest.raises(IntegrityError, match="differ from the release"):
        finetune(model, mask, ILLEGAL, config=FinetuneConfig(epochs=1, batch_size=8))
    finetune(model, mask, ILLEGAL, config=FinetuneConfig(epochs=1, check_release=False))


# ----------------------------------------------------------------------------- mask file


def test_mask_file_round_trips_and_names_existing_tensors(tmp_path: Path) -> None:
    model = Tiny()
    mask = build_mask(
        model, ["conv1.weight", "conv2.bias"], target_ratio=0.3, excluded=["head.weight"]
    )
    path = save_mask(mask, tmp_path / "release")
    assert path == tmp_path / "release" / "mask.json"
    loaded = load_mask(tmp_path / "release")
    assert loaded.frozen == mask.frozen
    assert loaded.tensors == mask.tensors
    assert loaded.fingerprint == mask.fingerprint
    assert loaded.release_digest == mask.release_digest
    assert loaded.share == pytest.approx(mask.share)
    names = dict(model.named_parameters())
    assert set(loaded.frozen_names) <= set(names)
    data = json.loads(path.read_text())
    assert data["schema"] == "unlearnable.freeze-mask" and data["schema_version"] == 1
    n_tensors = len(names)
    n_params = sum(p.numel() for p in names.values())
    frozen_params = names["conv1.weight"].numel() + names["conv2.bias"].numel()
    assert data["share"]["tensors"] == pytest.approx(2 / n_tensors)
    assert data["share"]["parameters"] == pytest.approx(frozen_params / n_params)
    assert data["frozen_parameters"] == frozen_params
    loaded.check(model)  # fits the model it was made for
    loaded.check_release(model)


def test_mask_of_another_model_is_refused(tmp_path: Path) -> None:
    mask = build_mask(Tiny(), ["conv1.weight"])
    wider = Tiny(width=5)
    with pytest.raises(MaskFileError, match=r"fingerprint differs.*conv1\.weight"):
        mask.check(wider)
    with pytest.raises(MaskFileError, match="fingerprint"):
        finetune(wider, mask, ILLEGAL, config=FinetuneConfig(epochs=1))

    class Renamed(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.first = self.conv1
            del self.conv1

    with pytest.raises(MaskFileError, match="does not have: conv1.weight"):
        mask.check(Renamed())


def test_mask_file_with_unknown_or_damaged_entries_is_refused(tmp_path: Path) -> None:
    path = save_mask(build_mask(Tiny(), ["conv1.weight"]), tmp_path / "m.json")
    data = json.loads(path.read_text())
    data["frozen"]["encoder.layer9.weight"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(MaskFileError, match="encoder.layer9.weight"):
        load_mask(path)
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(MaskFileError, match="version 99"):
        load_mask(path)
    path.write_text("{not json")
    with pytest.raises(MaskFileError, match="not valid JSON"):
        load_mask(path)
    with pytest.raises(MaskFileError, match="not found"):
        load_mask(tmp_path / "missing.json")
    with pytest.raises(UsageError, match="no parameters named"):
        build_mask(Tiny(), ["nope.weight"])


# ----------------------------------------------------------------------------- learning


def test_learning_runs_a_few_steps_and_leaves_the_model_alone() -> None:
    model = Tiny()
    before = snapshot(model)
    result = learn_freeze_mask(model, ILLEGAL, LEGAL, config=QUICK)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    mask = result.mask
    assert mask.excluded == ("head.weight", "head.bias")  # the head is never masked
    assert not set(mask.frozen) & set(mask.excluded)
    assert len(mask.frozen) == round(0.4 * 6)  # top-k over the 6 maskable tensors
    assert len(result.rows) == 8 // 4 and result.rows[-1]["step"] == 8
    for row in result.rows:
        for key in ("mask_mean", "hard_ratio", "illegal_loss", "legal_loss", "user_loss"):
            assert row[key] == row[key] and abs(row[key]) < 1e3  # finite
    assert result.relearn_history is not None and len(result.relearn_history.rows) == 1
    mask.check(model)
    mask.check_release(model)


def test_mean_soft_mask_tracks_the_target_ratio() -> None:
    model = Tiny(width=12)
    means = {}
    for ratio in (0.2, 0.6):
        config = FreezeConfig(
            ratio=ratio, level="channel", steps=90, user_interval=4, batch_size=8,
            relearn_epochs=0, mask_lr=0.1,
        )  # fmt: skip
        result = learn_freeze_mask(model, ILLEGAL, LEGAL, config=config)
        means[ratio] = result.rows[-1]["mask_mean"]
        assert abs(means[ratio] - ratio) < 0.05, (ratio, [r["mask_mean"] for r in result.rows])
        assert result.mask.share["groups"] == pytest.approx(ratio, abs=0.02)
        assert result.mask.level == "channel"
        assert any(c is not None for c in result.mask.frozen.values())  # partial tensors


def test_start_from_a_shared_relearned_model() -> None:
    model = Tiny()
    ft, history = relearn(model, ILLEGAL, LEGAL, config=QUICK)
    assert history.rows and not torch.equal(ft.conv1.weight, model.conv1.weight)
    a = learn_freeze_mask(model, ILLEGAL, LEGAL, config=QUICK, start_from=ft)
    assert a.relearn_history is None
    assert a.mask.fingerprint == build_mask(model, []).fingerprint
    with pytest.raises(UsageError, match="architecture"):
        learn_freeze_mask(model, ILLEGAL, LEGAL, config=QUICK, start_from=Tiny(width=5))


def test_bad_configs_are_usage_errors() -> None:
    for kwargs in ({"ratio": 0.0}, {"ratio": 1.0}, {"level": "row"}, {"user_interval": 1}):
        with pytest.raises(UsageError):
            FreezeConfig(**kwargs)
    with pytest.raises(UsageError, match="matches no parameter"):
        learn_freeze_mask(Tiny(), ILLEGAL, LEGAL, config=FreezeConfig(exclude=("fc",)))
    with pytest.raises(UsageError, match="freezes none"):
        learn_freeze_mask(Tiny(), ILLEGAL, LEGAL, config=FreezeConfig(ratio=0.05))


def test_classification_adapter_readout_restricts_loss_and_accuracy() -> None:
    model = Tiny()
    adapter = ClassificationAdapter(readout=(0, 1))
    metrics = adapter.evaluate(model, ILLEGAL, torch.device("cpu"))
    assert 0.0 <= metrics["acc"] <= 1.0 and metrics["loss"] > 0
    full = ClassificationAdapter().evaluate(model, ILLEGAL, torch.device("cpu"))
    assert metrics["loss"] < full["loss"]  # 2-way CE of the same logits is smaller
    from unlearnable.errors import InputError

    with pytest.raises(InputError, match="readout"):
        adapter.evaluate(model, LEGAL, torch.device("cpu"))


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_setup(tmp_path: Path) -> Path:
    from unlearnable.checkpoints import ModelSpec, save_model
    from unlearnable.models import build_victim

    classes = ("a", "b", "c", "d")
    make_labelled_folder(tmp_path / "ill", classes=("a", "b"), per_class=3, size=(8, 8))
    make_labelled_folder(tmp_path / "leg", classes=("c", "d"), per_class=3, size=(8, 8))
    save_model(
        build_victim("small-cnn", 4, 8, seed=0),
        tmp_path / "model",
        ModelSpec(classes=classes, input_size=8, arch="small-cnn"),
    )
    return tmp_path


def test_cli_freeze_then_finetune(runner, cli_setup: Path) -> None:
    from unlearnable.cli import main

    root = cli_setup
    args = ["freeze", str(root / "model"), "--illegal", str(root / "ill"), "--legal",
            str(root / "leg"), "--ratio", "0.3", "--steps", "4", "--batch-size", "4",
            "--relearn-epochs", "0", "--device", "cpu", "-o", str(root / "run"), "--json"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["mask"]["frozen_tensors"] == round(0.3 * 12)
    for name in ("mask.json", "config.json", "report.json", "report.md", "mask.png", "losses.png"):
        assert (root / "run" / name).is_file(), name
    header = (root / "run" / "steps.csv").read_text().splitlines()[0].split(",")
    assert {"step", "mask_mean", "illegal_loss", "legal_loss"} <= set(header)

    args = ["finetune", str(root / "model"), str(root / "ill"), "--mask", str(root / "run"),
            "--epochs", "2", "--batch-size", "4", "--test", str(root / "ill"), "--device",
            "cpu", "-o", str(root / "ft"), "--json"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["frozen_verified"] is True and "eval_acc" in report["last_epoch"]
    from unlearnable.checkpoints import load_model

    mask = load_mask(root / "run" / "mask.json")
    release, tuned = load_model(root / "model"), load_model(root / "ft" / "model")
    mask.check_release(tuned.module)  # the saved model's frozen tensors are the release's
    params = dict(tuned.module.named_parameters())
    changed = [n for n, p in release.module.named_parameters() if not torch.equal(p, params[n])]
    assert changed and not set(changed) & set(mask.frozen)


def test_cli_exit_codes(runner, cli_setup: Path, tmp_path: Path) -> None:
    from unlearnable.cli import main

    root = cli_setup
    other = save_mask(build_mask(Tiny(), ["conv1.weight"]), tmp_path / "other.json")
    base = ["finetune", str(root / "model"), str(root / "ill"), "--device", "cpu"]
    result = runner.invoke(main, [*base, "--mask", str(other), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "does not have" in result.output
    result = runner.invoke(main, [*base, "--mask", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    freeze = ["freeze", str(root / "model"), "--illegal", str(root / "ill"), "--legal",
              str(root / "leg"), "--device", "cpu", "-o", str(tmp_path / "f")]  # fmt: skip
    for extra in (["--ratio", "1.5"], ["--exclude", "nope"], ["--level", "row"]):
        result = runner.invoke(main, [*freeze, *extra])
        assert result.exit_code == 2, (extra, result.output)
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, [*freeze, "--legal", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no images" in result.output


def test_cli_choices_match_the_library() -> None:
    from unlearnable.cli import freeze as cli
    from unlearnable.defenses import freeze_enforce, freeze_learn, freeze_mask
    from unlearnable.defenses.freeze_adapters import TASKS

    assert set(cli.TASK_CHOICES) == {"auto", *TASKS.names()}
    assert cli.LEVELS == freeze_mask.LEVELS
    assert cli.BINARIZE == freeze_learn.BINARIZE
    assert cli.OPTIMIZERS == freeze_enforce.OPTIMIZERS


def test_diffusion_task_without_diffusers_says_how_to_install(
    runner, monkeypatch, cli_setup: Path
) -> None:
    import sys

    from unlearnable.cli import main
    from unlearnable.defenses.freeze_diffusion import load_diffusion_model

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(UsageError, match=r'pip install "unlearnable\[diffusion\]"'):
        load_diffusion_model(cli_setup)
    args = ["freeze", str(cli_setup / "model"), "--task", "diffusion", "--illegal",
            str(cli_setup / "ill"), "--legal", str(cli_setup / "leg"), "--device", "cpu"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "needs diffusers: pip install" in result.output


def test_data_folder_label_problems_are_named_with_their_reason(tmp_path):
    """A file outside any class folder is refused with the reason of the first problem."""
    from PIL import Image

    from unlearnable.defenses.freeze_adapters import load_classification_folder
    from unlearnable.errors import InputError

    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(InputError, match=r"1 images have no usable class folder, e\.g\. loose\.png: "):
        load_classification_folder(tmp_path, ["cat"], 8)
