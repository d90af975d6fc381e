"""Backdoor attacks: triggers applied exactly, all-to-one poisoning, ASR on non-target images,
trigger descriptions, and `unlearnable backdoor train`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from unlearnable.attacks.backdoor import (
    BACKDOORS,
    BadNets,
    Blend,
    PoisonConfig,
    WaNet,
    attack_success_rate,
    backdoor_from_spec,
    make_backdoor,
    poison_training_set,
    triggered_test_set,
)
from unlearnable.cli import main
from unlearnable.errors import UsageError


def _images(n=6, c=3, size=16, seed=0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_badnets_white_patch_is_pixel_exact() -> None:
    x = _images()
    out = BadNets(size=3).apply(x)
    assert torch.equal(out[:, :, -3:, -3:], torch.ones(6, 3, 3, 3))
    assert torch.equal(out[:, :, :-3, :], x[:, :, :-3, :])
    assert torch.equal(out[:, :, -3:, :-3], x[:, :, -3:, :-3])
    assert not torch.equal(out, x) and torch.equal(x, _images())  # input untouched


def test_badnets_grid_pattern_margin_and_fit() -> None:
    x = _images(2)
    out = BadNets(size=3, margin=2, pattern="grid").apply(x)
    expected = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    assert torch.equal(out[0, 1, 11:14, 11:14], expected)
    changed = (out != x).any(dim=1)
    assert not changed[:, :11].any() and not changed[:, :, :11].any()
    assert not changed[:, 14:].any() and not changed[:, :, 14:].any()
    with pytest.raises(UsageError, match="does not fit"):
        BadNets(size=20).apply(x)
    with pytest.raises(UsageError, match="pattern"):
        BadNets(pattern="stars")


def test_blend_is_the_alpha_mix_of_a_fixed_pattern() -> None:
    x = _images(4)
    blend = Blend(alpha=0.2, pattern_seed=3)
    pattern = blend.pattern(3, 16, 16)
    assert torch.allclose(blend.apply(x), 0.8 * x + 0.2 * pattern, atol=1e-6)
    assert torch.equal(pattern, Blend(alpha=0.5, pattern_seed=3).pattern(3, 16, 16))
    assert not torch.equal(pattern, Blend(pattern_seed=4).pattern(3, 16, 16))
    assert 0 <= float(blend.apply(x).min()) and float(blend.apply(x).max()) <= 1


def test_wanet_warps_with_one_fixed_field() -> None:
    x = _images(3)
    wanet = WaNet(k=4, s=0.5)
    out = wanet.apply(x)
    assert out.shape == x.shape and not torch.allclose(out, x, atol=1e-3)
    # the same field for every image and every call: warping a stack = warping each image
    assert torch.allclose(out[1:2], wanet.apply(x[1:2]), atol=1e-6)
    identity = WaNet(s=1e-9).apply(x)
    assert torch.allclose(identity, x, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    noisy = wanet.noise_apply(x, g)
    assert not torch.allclose(noisy, out, atol=1e-4)
    with pytest.raises(UsageError, match="noise mode"):
        BadNets().noise_apply(x, g)


def test_poisoning_is_all_to_one_on_non_target_images() -> None:
    images = (_images(40) * 255).round().to(torch.uint8)
    labels = torch.arange(40) % 4
    poisoned = poison_training_set(images, labels, BadNets(), PoisonConfig(target=2, rate=0.25))
    assert poisoned.poisoned.numel() == 10
    assert (labels[poisoned.poisoned] != 2).all()  # chosen from non-target classes
    assert (poisoned.labels[poisoned.poisoned] == 2).all()
    assert poisoned.images.dtype == torch.uint8
    assert (poisoned.images[poisoned.poisoned][:, :, -3:, -3:] == 255).all()
    rest = torch.ones(40, dtype=torch.bool)
    rest[poisoned.poisoned] = False
    assert torch.equal(poisoned.images[rest], images[rest])
    assert torch.equal(poisoned.labels[rest], labels[rest])
    again = poison_training_set(images, labels, BadNets(), PoisonConfig(target=2, rate=0.25))
    assert torch.equal(again.poisoned, poisoned.poisoned)  # seeded
    other = poison_training_set(images, labels, BadNets(), PoisonConfig(2, 0.25, seed=1))
    assert not torch.equal(other.poisoned, poisoned.poisoned)
    with pytest.raises(UsageError, match="lower the rate"):
        poison_training_set(images, labels, BadNets(), PoisonConfig(target=2, rate=0.9))


def test_wanet_cross_samples_keep_their_labels() -> None:
    images = _images(40)
    labels = torch.arange(40) % 4
    poisoned = poison_training_set(images, labels, WaNet(cross_ratio=2), PoisonConfig(0, 0.1))
    assert poisoned.poisoned.numel() == 4 and poisoned.cross.numel() == 8
    assert not set(poisoned.cross.tolist()) & set(poisoned.poisoned.tolist())
    assert torch.equal(poisoned.labels[poisoned.cross], labels[poisoned.cross])
    assert not torch.allclose(poisoned.images[poisoned.cross], images[poisoned.cross])


class _PatchDetector(nn.Module):
    """Predicts class 1 when the bottom-right pixel is white, else the image's 'true' class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = (x[:, :, -1, -1] > 0.99).all(dim=1).float()
        return torch.stack([1 - white, white, torch.zeros_like(white)], dim=1)


def test_asr_counts_non_target_images_only() -> None:
    images = _images(9) * 0.5
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    model = _PatchDetector()
    assert attack_success_rate(model, images, labels, BadNets(), target=1) == 1.0
    assert attack_success_rate(model, images, labels, Blend(), target=1) == 0.0
    triggered, true = triggered_test_set(images, labels, BadNets(), target=1)
    assert triggered.shape[0] == 6 and (true != 1).all()
    assert attack_success_rate(model, images, torch.ones(9, dtype=torch.int64), BadNets(), 1) == 0


def test_registry_and_specs_round_trip() -> None:
    assert {"badnets", "blend", "wanet"} <= set(BACKDOORS.names())
    for trigger in (BadNets(size=4, pattern="grid"), Blend(alpha=0.1), WaNet(k=8)):
        assert backdoor_from_spec(trigger.describe()) == trigger
    assert backdoor_from_spec("blend:alpha=0.3,pattern_seed=2") == Blend(0.3, 2)
    assert backdoor_from_spec({"name": "badnets", "target": 0}) == BadNets()
    with pytest.raises(UsageError, match="unknown backdoor"):
        make_backdoor("sig")
    with pytest.raises(UsageError, match="badnets"):
        make_backdoor("badnets", colour="red")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        backdoor_from_spec("badnets:size")


def test_cli_attack_choices_match_the_registry() -> None:
    import importlib

    cli = importlib.import_module("unlearnable.cli.backdoor")
    assert set(cli.ATTACKS) == set(BACKDOORS.names())


def test_backdoor_train_cli_writes_a_loadable_model(runner, tmp_path) -> None:
    from unlearnable.checkpoints import load_model

    from .test_ebyd import write_synthetic_folder  # also registers the tiny test model

    data = write_synthetic_folder(tmp_path / "data", per_class=12, classes=("a", "b", "c"))
    out = tmp_path / "model"
    args = [
        "backdoor",
        "train",
        str(data),
        "--target",
        "b",
        "--rate",
        "0.2",
        "--epochs",
        "1",
        "--model",
        "test-tiny-bn",
        "--param",
        "size=2",
        "-o",
        str(out),
        "--json",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["attack"] == {
        "name": "badnets",
        "size": 2,
        "margin": 0,
        "pattern": "white",
        "target": 1,
        "target_name": "b",
    }
    assert report["poisoned_images"] == round(0.2 * report["train_images"])
    assert 0 <= report["attack_success_rate"] <= 1 and 0 <= report["clean_accuracy"] <= 1
    loaded = load_model(out)
    assert loaded.spec.classes == ("a", "b", "c") and loaded.spec.input_size == 16
    assert loaded.spec.metadata["backdoor"]["name"] == "badnets"
    assert json.loads((out / "trigger.json").read_text())["target"] == 1
    for name in ("report.json", "report.md", "epochs.csv", "config.json"):
        assert (out / name).is_file()
    bad = runner.invoke(main, [*args[:4], "--target", "zebra", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "zebra" in bad.output
