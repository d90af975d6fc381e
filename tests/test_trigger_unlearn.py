"""Trigger recovery and unlearning (purify's second stage) on tiny synthetic models."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from unlearnable.attacks.backdoor import BadNets, attack_success_rate
from unlearnable.checkpoints import load_model
from unlearnable.cli import main
from unlearnable.defenses.detection import DetectionConfig
from unlearnable.defenses.ebyd import PurifyConfig, purify_model
from unlearnable.defenses.ebyd_data import CleanSet
from unlearnable.defenses.exposure import ExposureConfig
from unlearnable.defenses.removal import MaskConfig, prune_channels, require_batch_norm
from unlearnable.defenses.trigger_unlearn import (
    UnlearnConfig,
    recalibrate_norm_stats,
    recover_trigger,
    unlearn_backdoor,
    unlearn_triggers,
)
from unlearnable.errors import UsageError
from unlearnable.training.classification import evaluate

from .test_ebyd import CLASSES, _saved, _train, synthetic, write_synthetic_folder

# lr 0.003: at the default 0.01 the tiny 4-class model's batch norm sometimes collapses a class
FAST = UnlearnConfig(reverse_steps=150, epochs=4, batch_size=32, lr=0.003)


@pytest.fixture(scope="module")
def backdoored():
    torch.set_num_threads(1)
    return _train(0.15)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_recovered_trigger_sends_other_classes_to_the_target_and_is_seeded(backdoored) -> None:
    images, labels = synthetic(120, seed=3)
    before = _snapshot(backdoored)
    first = recover_trigger(backdoored, images, labels, 0, FAST)
    again = recover_trigger(backdoored, images, labels, 0, FAST)
    other = recover_trigger(backdoored, images, labels, 0, FAST, seed=7)
    assert first.hit_rate >= 0.9 and first.target == 0
    assert 0 < first.mask_pixels < 0.25 * 16 * 16  # a small patch, not the whole image
    assert torch.equal(first.mask, again.mask) and torch.equal(first.pattern, again.pattern)
    assert not torch.equal(first.mask, other.mask)
    assert first.mask.shape == (1, 1, 16, 16) and first.pattern.shape == (1, 3, 16, 16)
    assert float(first.mask.min()) >= 0 and float(first.mask.max()) <= 1
    stamped = first.apply(torch.zeros(2, 3, 16, 16))
    assert torch.allclose(stamped, (first.mask * first.pattern).expand(2, 3, 16, 16))
    assert all(torch.equal(v, before[k]) for k, v in backdoored.state_dict().items())


def test_unlearning_removes_the_backdoor_and_keeps_pruned_channels_at_zero(backdoored) -> None:
    images, labels = synthetic(160, seed=3)
    test_x, test_y = synthetic(200, seed=7)
    layers = require_batch_norm(backdoored)
    pruned_channels = [(layers[0][0], 1), (layers[1][0], 3)]
    pruned = prune_channels(backdoored, pruned_channels)
    before = _snapshot(pruned)
    asr_before = attack_success_rate(pruned, test_x, test_y, BadNets(), 0)
    result = unlearn_backdoor(pruned, images, labels, 0, FAST, pruned=pruned_channels)
    assert len(result.triggers) == FAST.rounds and len(result.rows) == FAST.epochs
    assert {"clean_acc", "trigger_hits"} <= set(result.rows[-1])
    asr_after = attack_success_rate(result.model, test_x, test_y, BadNets(), 0)
    assert asr_before >= 0.5 and asr_after <= 0.3, (asr_before, asr_after)
    assert evaluate(result.model, test_x, test_y) >= evaluate(pruned, test_x, test_y) - 0.1
    bn = dict(require_batch_norm(result.model))
    for name, channel in pruned_channels:
        assert float(bn[name].weight.detach()[channel]) == 0.0
    assert all(torch.equal(v, before[k]) for k, v in pruned.state_dict().items())


def test_norm_statistics_are_measured_again_on_the_clean_images_only() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        net[0].running_mean.fill_(5.0)
        net[0].running_var.fill_(9.0)
        net[0].weight.mul_(2.0)
    net.train()  # the caller's mode is kept
    before = _snapshot(net)
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    tuned = recalibrate_norm_stats(net, images, batch_size=4)
    x = images.float() / 255
    bn = tuned[0]
    # a cumulative average over the batches (4, 4, 2 images) and their mirrors
    means = [x[s : s + 4].mean(dim=(0, 2, 3)) for s in (0, 4, 8)]
    expected = (means[0] + means[1] + means[2]) / 3  # a mirror has the same channel means
    assert torch.allclose(bn.running_mean, expected, atol=1e-6)
    assert float(bn.running_var.min()) < 1.0  # pixels in [0, 1] vary far less than 9
    assert not tuned.training and net.training
    assert torch.equal(bn.weight, net[0].weight) and torch.equal(tuned[1].weight, net[1].weight)
    assert bn.momentum == net[0].momentum
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # a single image has no variance: the statistics it had are kept
    kept = recalibrate_norm_stats(net, images[:1])
    assert torch.equal(kept[0].running_mean, net[0].running_mean)


def test_unlearning_settings_are_checked(backdoored) -> None:
    images, labels = synthetic(40, seed=3)
    with pytest.raises(UsageError, match="stamp_fraction"):
        UnlearnConfig(stamp_fraction=0)
    with pytest.raises(UsageError, match="distill"):
        UnlearnConfig(distill=1.5)
    with pytest.raises(UsageError, match="at least one"):
        unlearn_triggers(backdoored, images, labels, [], FAST)
    with pytest.raises(UsageError, match="other than the target"):
        recover_trigger(backdoored, images[labels == 0], labels[labels == 0], 0, FAST)
    with pytest.raises(UsageError, match="no batch-norm layer"):
        trigger = recover_trigger(backdoored, images, labels, 0, FAST)
        unlearn_triggers(backdoored, images, labels, [trigger], FAST, pruned=[("nope", 0)])


def test_purify_unlearns_only_a_detected_target(backdoored) -> None:
    clean = CleanSet(*synthetic(160, seed=3), CLASSES)
    base = PurifyConfig(exposure=ExposureConfig(batch_size=32, max_epochs=6),
                        masks=MaskConfig(epochs=2), defense_images=80, unlearn=FAST)  # fmt: skip
    trigger = {"name": "badnets", "target": 0}
    # threshold 0 flags whatever class dominates the exposed model; above 1 nothing is flagged
    flagged = dataclasses.replace(base, detection=DetectionConfig(threshold=0.0))
    result = purify_model(backdoored, clean, flagged, trigger=trigger)
    report = result.to_report()
    assert result.detection.target is not None and result.unlearned is not None
    assert report["unlearn"]["triggers"][0]["target"] == result.detection.target
    assert result.asr_after < result.asr_before
    calm = dataclasses.replace(base, detection=DetectionConfig(threshold=1.01))
    skipped = purify_model(backdoored, clean, calm, trigger=trigger)
    assert skipped.unlearned is None and any("no backdoor target" in n for n in skipped.notes)
    off = purify_model(backdoored, clean, dataclasses.replace(base, unlearn=None))
    assert off.unlearned is None and off.to_report()["unlearn"] is None
    assert torch.equal(
        torch.cat([p.flatten() for p in off.model.parameters()]),
        torch.cat([p.flatten() for p in off.choice.model.parameters()]),
    )


def test_purify_cli_reports_the_unlearned_trigger(runner, tmp_path, backdoored) -> None:
    model = _saved(backdoored, tmp_path / "m")
    clean = write_synthetic_folder(tmp_path / "clean", per_class=20)
    out = tmp_path / "purified"
    result = runner.invoke(main, [
        "purify", str(model), "--clean", str(clean), "--trigger", "badnets", "--target", "a",
        "--max-epochs", "6", "--mask-epochs", "2", "--defense-images", "40", "--threshold", "0",
        "--unlearn-rounds", "1", "-o", str(out), "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["unlearn"] is not None and len(report["unlearn"]["triggers"]) == 1
    for name in ("unlearn.csv", "triggers.png", "report.md"):
        assert (out / name).is_file(), name
    assert "trigger unlearning: target" in (out / "report.md").read_text()
    saved = load_model(out).spec.metadata["purified"]
    assert saved["method"] == "ebyd-rnp+trigger-unlearning"
    assert saved["unlearned_target"] == report["detected_target"]


def test_purify_names_no_target_on_a_model_at_chance_and_keeps_the_callers_modes() -> None:
    from .test_ebyd import tiny_bn

    torch.manual_seed(0)
    untrained = tiny_bn(4, 16)  # random weights: at chance on the clean images
    untrained.train()
    untrained[1].eval()  # mixed modes, as a caller may leave them
    modes = [m.training for m in untrained.modules()]
    before = _snapshot(untrained)
    clean = CleanSet(*synthetic(160, seed=3), CLASSES)
    config = PurifyConfig(exposure=ExposureConfig(batch_size=32, max_epochs=2),
                          masks=MaskConfig(epochs=1), defense_images=80, unlearn=FAST,
                          detection=DetectionConfig(threshold=0.0))  # fmt: skip
    result = purify_model(untrained, clean, config)
    assert result.detection.verdict == "inconclusive" and result.detection.target is None
    assert result.unlearned is None
    assert any("no trigger to unlearn" in n for n in result.notes)
    assert [m.training for m in untrained.modules()] == modes
    assert all(torch.equal(v, before[k]) for k, v in untrained.state_dict().items())
