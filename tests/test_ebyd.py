"""EBYD: clean data matching, exposure, detection, BN-mask removal, the scan / purify commands on
every model format. Tiny synthetic data (16 px stripe patterns) and a tiny BN CNN."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from unlearnable.attacks.backdoor import BadNets, PoisonConfig
from unlearnable.attacks.training import TrainConfig
from unlearnable.checkpoints import ModelSpec, load_model, save_model
from unlearnable.cli import main
from unlearnable.defenses.detection import (
    DetectionConfig,
    agreed_histogram,
    auroc,
    detect,
    detect_exposures,
    detect_target,
    featureless,
    featureless_prior,
    gain_histogram,
    read_out,
)
from unlearnable.defenses.ebyd import PurifyConfig, ScanConfig, purify_model, scan_model
from unlearnable.defenses.ebyd_data import (
    CleanSet,
    load_clean_folder,
    split_defense,
    split_parts,
)
from unlearnable.defenses.ebyd_subjects import train_backdoored
from unlearnable.defenses.exposure import ExposureConfig, expose, stop_threshold
from unlearnable.defenses.removal import (
    MaskConfig,
    MaskedModel,
    PruneConfig,
    choose_pruning,
    learn_masks,
    per_layer,
    prune,
    rank_channels,
    require_batch_norm,
)
from unlearnable.errors import InputError, UsageError
from unlearnable.models import VICTIMS

TINY = "test-tiny-bn"
CLASSES = ("a", "b", "c", "d")


def tiny_bn(num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
    """conv8-BN-pool-conv16-BN-pool-conv32-BN-GAP-linear: about 6k parameters."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, 8), nn.MaxPool2d(2), *block(8, 16), nn.MaxPool2d(2),
        *block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


if TINY not in VICTIMS:
    VICTIMS.add(TINY, tiny_bn)


def synthetic(n: int, classes: int = 4, size: int = 16, seed: int = 0):
    """uint8 ``(n, 3, size, size)`` stripe images, class k at angle ``k * pi / 4`` with a random
    phase, tint and noise; labels ``arange(n) % classes``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    angle = (labels % 4).float()[:, None, None] * math.pi / 4
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    wave = torch.sin((xs * torch.cos(angle) + ys * torch.sin(angle)) * 1.2 + phase)
    tints = torch.tensor([[0.65, 0.45, 0.45], [0.45, 0.45, 0.65], [0.45, 0.65, 0.45]])
    tint = tints[(labels // 4) % 3][:, :, None, None]
    images = tint + 0.25 * wave[:, None] + 0.06 * torch.randn(n, 3, size, size, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def write_synthetic_folder(root: Path, per_class: int = 10, classes=CLASSES, seed: int = 5):
    """``root/<class>/<i>.png`` synthetic images; returns ``root``."""
    images, labels = synthetic(per_class * len(classes), len(classes), seed=seed)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return root


def _train(rate: float, seed: int = 0, target: int = 0) -> nn.Module:
    train, test = synthetic(200, seed=1), synthetic(80, seed=2)
    run = train_backdoored(
        *train, *test, BadNets(), PoisonConfig(target, rate, seed), TINY,
        TrainConfig(epochs=10, batch_size=32, lr=0.05, augment=False), seed=seed,
    )  # fmt: skip
    return run.model


@pytest.fixture(scope="module")
def backdoored() -> nn.Module:
    torch.set_num_threads(1)
    return _train(0.15)


def _clean_set(n: int = 120, seed: int = 3) -> CleanSet:
    images, labels = synthetic(n, seed=seed)
    return CleanSet(images, labels, CLASSES)


def _saved(model: nn.Module, path: Path) -> Path:
    save_model(model, path, ModelSpec(classes=CLASSES, input_size=16, arch=TINY))
    return path


# ------------------------------------------------------------------------- clean data


def test_split_defense_is_balanced_seeded_and_disjoint() -> None:
    labels = torch.arange(100) % 4
    defense, holdout = split_defense(labels, 40, seed=0)
    assert defense.numel() == 40 and holdout.numel() == 60
    assert not set(defense.tolist()) & set(holdout.tolist())
    assert torch.bincount(labels[defense]).tolist() == [10, 10, 10, 10]
    assert torch.equal(split_defense(labels, 40, seed=0)[0], defense)
    assert not torch.equal(split_defense(labels, 40, seed=1)[0], defense)
    assert split_defense(labels, 500, seed=0)[0].numel() == 80  # at most 80 %


def test_split_parts_are_disjoint_balanced_and_seeded() -> None:
    labels = torch.arange(101) % 4
    parts = split_parts(labels, 2, seed=0)
    assert sum(p.numel() for p in parts) == 101
    assert sorted(torch.cat(parts).tolist()) == list(range(101))
    for part in parts:
        counts = torch.bincount(labels[part], minlength=4)
        assert int(counts.max()) - int(counts.min()) <= 1
    assert all(torch.equal(a, b) for a, b in zip(parts, split_parts(labels, 2, 0), strict=True))
    assert not torch.equal(split_parts(labels, 2, seed=1)[0], parts[0])
    assert [p.numel() for p in split_parts(labels, 3, 0)] in ([34, 34, 33], [34, 33, 34],
                                                              [33, 34, 34])  # fmt: skip


def test_clean_folder_is_matched_to_the_model_classes_by_name(tmp_path) -> None:
    root = write_synthetic_folder(tmp_path / "clean", per_class=2, classes=("d", "b"))
    clean = load_clean_folder(root, CLASSES, 16)
    assert clean.images.shape == (4, 3, 16, 16) and clean.images.dtype == torch.uint8
    assert sorted(set(clean.labels.tolist())) == [1, 3]  # indices in the model's order
    assert clean.missing == ("a", "c")
    with pytest.raises(InputError, match=r"zebra is not a model class .*model classes: a, b"):
        write_synthetic_folder(tmp_path / "bad", per_class=1, classes=("a", "zebra"))
        load_clean_folder(tmp_path / "bad", CLASSES, 16)
    (root / "loose.png").write_bytes(next((root / "b").glob("*.png")).read_bytes())
    with pytest.raises(InputError, match="outside a class subfolder"):
        load_clean_folder(root, CLASSES, 16)


# ------------------------------------------------------------------------- exposure


def test_stop_threshold_scales_with_the_classes() -> None:
    ten = torch.arange(100) % 10
    assert stop_threshold(ExposureConfig(), ten) == pytest.approx(0.2)
    assert stop_threshold(ExposureConfig(), torch.arange(40) % 4) == pytest.approx(1 / 3)
    assert stop_threshold(ExposureConfig(stop_accuracy=0.05), ten) == 0.05
    assert stop_threshold(ExposureConfig(early_stop=False), ten) is None
    with pytest.raises(UsageError):
        ExposureConfig(optimizer="lbfgs")


def test_cul_lowers_clean_accuracy_and_leaves_the_model_alone(backdoored) -> None:
    clean, holdout = _clean_set(), _clean_set(80, seed=4)
    before = {k: v.clone() for k, v in backdoored.state_dict().items()}
    config = ExposureConfig(lr=0.01, batch_size=32, max_epochs=15)
    result = expose(backdoored, clean.images, clean.labels, 4, config,
                    holdout.images, holdout.labels)  # fmt: skip
    first, last = result.rows[0], result.final
    assert first["epoch"] == 0 and first["clean_acc"] > 0.9
    assert last["clean_acc"] < first["clean_acc"] - 0.4
    assert last["clean_acc"] <= result.stop_threshold and result.stopped_early
    assert all(abs(sum(r["histogram"]) - 1) < 1e-6 for r in result.rows)
    for key, value in backdoored.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_random_label_exposure_fine_tunes_towards_noise(backdoored) -> None:
    clean = _clean_set()
    config = ExposureConfig.for_method("random-label", lr=3e-3, batch_size=32, max_epochs=6)
    assert config.optimizer == "adam"
    result = expose(backdoored, clean.images, clean.labels, 4, config)
    assert result.final["clean_acc"] < result.rows[0]["clean_acc"]
    with pytest.raises(UsageError, match="unknown exposure"):
        ExposureConfig.for_method("magic")


# ------------------------------------------------------------------------- detection


def test_detection_reads_the_histogram() -> None:
    flagged = detect([0.05, 0.8, 0.1, 0.05])
    assert flagged.flagged and flagged.target == 1 and flagged.verdict == "backdoored"
    calm = detect([0.3, 0.25, 0.25, 0.2])
    assert not calm.flagged and calm.target is None and calm.score == 0.3
    assert detect_target([0.45, 0.3, 0.25]) is None and detect_target([0.45, 0.3], 0.4) == 0
    var = detect([0.5, 0.5 / 9] + [0.5 / 9] * 8, DetectionConfig(score="variance"))
    assert var.score == pytest.approx((0.5 - 0.1) ** 2 * 10 / 9 / 10 + 0.0, rel=0.2)
    assert var.flagged  # EBYD's 0.01: about 40 % in one class of 10
    assert auroc([0.9, 0.8], [0.1, 0.8]) == pytest.approx(0.875) and auroc([], [1]) is None


def test_detection_needs_every_exposure_to_agree_on_the_sink() -> None:
    stable = [[0.05, 0.8, 0.1, 0.05], [0.1, 0.7, 0.1, 0.1]]
    assert agreed_histogram(stable) == (0.05, 0.7, 0.1, 0.05)
    both = detect(stable)
    assert both.flagged and both.target == 1 and both.score == 0.7 and both.agree
    moving = detect([[0.05, 0.8, 0.1, 0.05], [0.8, 0.1, 0.05, 0.05]])  # a sink that moves
    assert not moving.flagged and moving.tops == (1, 0) and not moving.agree
    assert detect([[0.05, 0.8, 0.1, 0.05]]).score == detect([0.05, 0.8, 0.1, 0.05]).score
    with pytest.raises(UsageError, match="different lengths"):
        detect([[0.5, 0.5], [0.2, 0.3, 0.5]])
    rows = [
        {"epoch": 0, "clean_acc": 0.9, "holdout_acc": 0.8, "histogram": [0.25] * 4},
        {"epoch": 1, "clean_acc": 0.8, "holdout_acc": 0.7, "histogram": [0.3, 0.2, 0.25, 0.25]},
        {"epoch": 2, "clean_acc": 0.5, "holdout_acc": 0.5, "histogram": [0.2, 0.5, 0.2, 0.1]},
        {"epoch": 3, "clean_acc": 0.1, "holdout_acc": 0.1, "histogram": [0.0, 0.1, 0.9, 0.0]},
    ]  # fmt: skip
    assert read_out(rows) == ((0.0, 0.1, 0.9, 0.0), 3)
    early = DetectionConfig(readout="early", early_drop=0.3)  # held-out acc <= 0.56: epoch 2
    assert read_out(rows, early) == ((0.0, 1.0, 0.0, 0.0), 2)  # where predictions moved
    assert read_out(rows[:2], early)[1] == 1  # never lost 30 %: the last row
    no_holdout = [{**r, "holdout_acc": None} for r in rows]
    assert read_out(no_holdout, DetectionConfig(readout="early", early_drop=0.4))[1] == 2
    assert gain_histogram([0.5, 0.5], [0.5, 0.5]) == (0.0, 0.0)
    assert detect_exposures([rows, rows], early).target == 1
    with pytest.raises(UsageError, match="readout"):
        DetectionConfig(readout="middle")


def test_the_featureless_prior_discounts_a_natural_sink(backdoored) -> None:
    sink = [0.05, 0.75, 0.1, 0.1]
    assert detect(sink).flagged and detect(sink).target == 1
    natural = detect(sink, prior=[0.0, 0.6, 0.2, 0.2])  # the model answers b for blurs anyway
    assert not natural.flagged and natural.score == pytest.approx(0.15)
    assert natural.prior == (0.0, 0.6, 0.2, 0.2) and natural.variance == detect(sink).variance
    assert detect(sink, prior=[0.25] * 4).target == 1  # a flat prior changes nothing but shares
    with pytest.raises(UsageError, match="prior over 3 classes"):
        detect(sink, prior=[0.5, 0.25, 0.25])
    images = synthetic(6, seed=4)[0]
    blurred = featureless(images)
    assert blurred.shape == images.shape and blurred.dtype == torch.float32
    assert 0 <= float(blurred.min()) <= float(blurred.max()) <= 1
    assert torch.equal(images, synthetic(6, seed=4)[0])  # input untouched
    assert float((blurred[:, :, :2, :2] - blurred[:, :, 2:4, 2:4]).abs().max()) < 0.3  # smooth
    prior = featureless_prior(backdoored, images, 4)
    assert len(prior) == 4 and sum(prior) == pytest.approx(1.0)


# ------------------------------------------------------------------------- removal


def test_masked_batch_norm_scales_gamma_only(backdoored) -> None:
    x = synthetic(8, seed=9)[0].float() / 255
    masked = MaskedModel(backdoored)
    assert torch.allclose(masked(x), backdoored(x), atol=1e-5)  # all-ones masks: no change
    with torch.no_grad():
        masked.masks[1][3] = 0.0
    out = masked(x)
    masked.remove()
    reference, _ = prune(backdoored, {masked.layers[1][0]: torch.eye(16)[3] * -1 + 1}, 0.5)
    assert torch.allclose(out, reference(x), atol=1e-5)


def test_pruning_changes_only_the_chosen_channels(backdoored) -> None:
    layers = require_batch_norm(backdoored)
    masks = {name: torch.ones(m.num_features) for name, m in layers}
    first, second = layers[0][0], layers[2][0]
    masks[first][[1, 5]] = 0.1
    masks[second][7] = 0.25
    pruned, channels = prune(backdoored, masks, threshold=0.2)
    assert sorted(channels) == [(first, 1), (first, 5)]
    original, after = backdoored.state_dict(), pruned.state_dict()
    for key, value in original.items():
        if key == f"{first}.weight":
            assert torch.equal(after[key][[1, 5]], torch.zeros(2))
            keep = [c for c in range(value.numel()) if c not in (1, 5)]
            assert torch.equal(after[key][keep], value[keep])
        else:
            assert torch.equal(after[key], value), key
    assert sorted(prune(backdoored, masks, 0.3)[1]) == [(first, 1), (first, 5), (second, 7)]


def test_masks_are_learned_alone_and_pruning_is_chosen_on_clean_accuracy(backdoored) -> None:
    clean = _clean_set()
    before = {k: v.clone() for k, v in backdoored.state_dict().items()}
    result = learn_masks(backdoored, clean.images, clean.labels, MaskConfig(epochs=2))
    values = torch.cat(list(result.masks.values()))
    assert values.numel() == 8 + 16 + 32 and 0 <= float(values.min()) <= float(values.max()) <= 1
    assert len(result.rows) == 2 and all(
        torch.equal(v, before[k]) for k, v in backdoored.state_dict().items()
    )
    masks = {name: torch.linspace(0, 1, v.numel()) for name, v in result.masks.items()}
    choice = choose_pruning(backdoored, masks, clean.images, clean.labels,
                            PruneConfig(max_drop=0.1, by="threshold"))  # fmt: skip
    drops = [choice.reference_acc - r["defense_acc"] for r in choice.sweep]
    assert [r["threshold"] for r in choice.sweep] == list(PruneConfig().grid)
    allowed = [r["threshold"] for r, d in zip(choice.sweep, drops, strict=True) if d <= 0.1]
    first_bad = next((r["threshold"] for r, d in zip(choice.sweep, drops, strict=True)
                      if d > 0.1), 1.0)  # fmt: skip
    assert choice.threshold == max([0.0] + [t for t in allowed if t < first_bad])
    fixed = choose_pruning(backdoored, masks, clean.images, clean.labels,
                           PruneConfig(rule="fixed", threshold=0.33))  # fmt: skip
    assert fixed.threshold == 0.33 and len(fixed.channels) == sum(
        int((m <= 0.33).sum()) for m in masks.values()
    )


def test_pruning_keeps_the_model_when_even_zero_masks_cost_too_much(backdoored) -> None:
    clean = _clean_set()
    masks = {name: torch.ones(m.num_features) for name, m in require_batch_norm(backdoored)}
    first = next(iter(masks))
    masks[first][:] = 0.0  # every channel of the first layer "recovered" to 0
    choice = choose_pruning(backdoored, masks, clean.images, clean.labels,
                            PruneConfig(max_drop=0.05, by="threshold"))  # fmt: skip
    assert choice.reference_acc > 0.9 and choice.channels == []
    x = clean.images[:8].float() / 255
    assert torch.equal(choice.model(x), backdoored(x)) and choice.model is not backdoored
    assert len(prune(backdoored, masks, 0.0)[1]) == masks[first].numel()


def test_ranking_breaks_ties_by_how_early_a_mask_fell() -> None:
    masks = {"a": torch.tensor([0.0, 0.5, 0.0]), "b": torch.tensor([0.0, 1.0])}
    history = [{"a": torch.tensor([0.2, 0.9, 0.6]), "b": torch.tensor([0.1, 1.0])}, masks]
    ranked = [(n, c) for _, n, c in rank_channels(masks, history)]
    assert ranked == [("b", 0), ("a", 0), ("a", 2), ("a", 1), ("b", 1)]
    assert [(n, c) for _, n, c in rank_channels(masks)][:3] == [("a", 0), ("a", 2), ("b", 0)]


def test_pruning_by_count_takes_the_lowest_channels_within_the_tolerance(backdoored) -> None:
    clean = _clean_set()
    learned = learn_masks(backdoored, clean.images, clean.labels, MaskConfig(epochs=2))
    assert len(learned.history) == 2
    assert all(torch.equal(learned.history[-1][k], v) for k, v in learned.masks.items())
    layers = require_batch_norm(backdoored)
    masks = {name: torch.rand(m.num_features, generator=torch.Generator().manual_seed(i))
             for i, (name, m) in enumerate(layers)}  # fmt: skip
    counts = (1, 2, 4, 8, 16, 32, 56)
    choice = choose_pruning(backdoored, masks, clean.images, clean.labels,
                            PruneConfig(by="count", max_drop=0.1, counts=counts))  # fmt: skip
    ranked = [(n, c) for _, n, c in rank_channels(masks)]
    drops = [choice.reference_acc - r["defense_acc"] for r in choice.sweep]
    assert [r["pruned"] for r in choice.sweep] == list(counts[: len(choice.sweep)])
    within = next((i for i, d in enumerate(drops) if d > 0.1), len(drops))
    assert len(choice.channels) == (counts[within - 1] if within else 0)
    assert choice.channels == ranked[: len(choice.channels)]
    assert within == len(drops) - 1  # all 56 channels break it; the sweep stops there
    original, after = backdoored.state_dict(), choice.model.state_dict()
    pruned_weights = {(n, c) for n, c in choice.channels}
    for name, _ in layers:
        for c in range(original[f"{name}.weight"].numel()):
            expected = 0.0 if (name, c) in pruned_weights else original[f"{name}.weight"][c]
            assert float(after[f"{name}.weight"][c]) == float(expected)
    with pytest.raises(UsageError):
        PruneConfig(by="count", rule="fixed")
    assert PruneConfig(rule="fixed").by == "threshold" and PruneConfig().by == "layer"
    with pytest.raises(UsageError):
        PruneConfig(by="size")


def test_pruning_by_layer_takes_the_lowest_fraction_of_every_layer(backdoored) -> None:
    masks = {"a": torch.tensor([0.9, 0.1, 0.5, 0.0]), "b": torch.tensor([0.2] + [1.0] * 7)}
    ranked = rank_channels(masks)
    assert per_layer(ranked, 0.25) == [("a", 3), ("b", 0), ("b", 1)]  # 1 of 4, 2 of 8
    assert sorted(per_layer(ranked, 0.5)) == [("a", 1), ("a", 3), ("b", 0), ("b", 1), ("b", 2),
                                              ("b", 3)]  # fmt: skip
    clean = _clean_set()
    layers = require_batch_norm(backdoored)
    learned = {name: torch.rand(m.num_features, generator=torch.Generator().manual_seed(i))
               for i, (name, m) in enumerate(layers)}  # fmt: skip
    fractions = (1 / 8, 1 / 4, 1 / 2, 1.0)
    choice = choose_pruning(backdoored, learned, clean.images, clean.labels,
                            PruneConfig(by="layer", max_drop=0.1, fractions=fractions))  # fmt: skip
    drops = [choice.reference_acc - r["defense_acc"] for r in choice.sweep]
    within = next((i for i, d in enumerate(drops) if d > 0.1), len(drops))
    assert within == len(drops) - 1  # pruning every channel breaks the budget
    expected = per_layer(rank_channels(learned), fractions[within - 1]) if within else []
    assert choice.channels == expected


def test_removal_refuses_models_it_cannot_mask(tmp_path) -> None:
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    with pytest.raises(UsageError, match="no batch-norm"):
        require_batch_norm(no_bn)
    scripted = torch.jit.script(tiny_bn(4, 16))
    with pytest.raises(UsageError, match="TorchScript or torch.export"):
        require_batch_norm(scripted)


# ------------------------------------------------------------------------- library calls


def test_scan_and_purify_library_calls(backdoored, tmp_path) -> None:
    model = load_model(_saved(backdoored, tmp_path / "m"))
    clean = CleanSet(*synthetic(160, seed=3), CLASSES)
    fast = ExposureConfig(batch_size=32, max_epochs=8)
    result = scan_model(model, clean, ScanConfig(exposure=fast, defense_images=80))
    assert result.defense_size == 80 and result.holdout_size == 80
    assert result.to_report()["verdict"] in ("clean", "backdoored")
    purified = purify_model(
        model,
        clean,
        PurifyConfig(exposure=fast, masks=MaskConfig(epochs=3), defense_images=80,
                     prune=PruneConfig(by="threshold")),
        trigger={"name": "badnets", "target": 0},
    )  # fmt: skip
    assert purified.asr_before is not None and purified.trigger["target"] == 0
    assert purified.model is not model and purified.choice.threshold in (0.0, *PruneConfig().grid)
    layered = purify_model(model, clean, PurifyConfig(exposure=fast, masks=MaskConfig(epochs=3),
                                                      defense_images=80))  # fmt: skip
    assert PurifyConfig().prune.by == "layer" and layered.to_report()["by"] == "layer"
    drop = layered.choice.reference_acc - min(
        [layered.choice.reference_acc] + [r["defense_acc"] for r in layered.choice.sweep[:-1]]
    )
    assert drop <= 0.05 and len(layered.masks.history) == 3


# ------------------------------------------------------------------------- command line


def _archive(model: nn.Module, path: Path, kind: str) -> Path:
    model = model.eval()
    if kind == "torchscript":
        torch.jit.save(torch.jit.script(model), str(path))
    else:
        batch = torch.export.Dim("batch", min=2)
        program = torch.export.export(model, (torch.zeros(4, 3, 16, 16),),
                                      dynamic_shapes=({0: batch},))  # fmt: skip
        torch.export.save(program, str(path))
    return path


SCAN_FAST = ["--max-epochs", "3", "--defense-images", "20", "-q"]


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_scan_reads_archives_and_purify_refuses_them(runner, tmp_path, backdoored, kind) -> None:
    clean = write_synthetic_folder(tmp_path / "clean", per_class=10)
    path = _archive(backdoored, tmp_path / ("m.pt" if kind == "torchscript" else "m.pt2"), kind)
    args = [str(path), "--clean", str(clean), "--classes", ",".join(CLASSES),
            "--input-size", "16", *SCAN_FAST]  # fmt: skip
    result = runner.invoke(main, ["scan", *args, "-o", str(tmp_path / "run"), "--json"])
    assert result.exit_code in (0, 3), result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["schema"] == "unlearnable.scan-report" and report["model_info"]["format"]
    assert (report["verdict"] == "backdoored") == (result.exit_code == 3)
    refused = runner.invoke(main, ["purify", *args, "-o", str(tmp_path / "p")])
    assert refused.exit_code == 2 and "cannot be masked" in refused.output


def test_scan_exit_codes_follow_the_verdict(runner, tmp_path, backdoored) -> None:
    model = _saved(backdoored, tmp_path / "m")
    clean = write_synthetic_folder(tmp_path / "clean", per_class=10)
    base = ["scan", str(model), "--clean", str(clean), *SCAN_FAST]
    flagged = runner.invoke(main, [*base, "--threshold", "0", "--exposures", "2",
                                   "-o", str(tmp_path / "r1")])  # fmt: skip
    assert flagged.exit_code == 3, flagged.output
    calm = runner.invoke(main, [*base, "--threshold", "1.01", "-o", str(tmp_path / "r2")])
    assert calm.exit_code == 0, calm.output
    run = tmp_path / "r1"
    for name in ("report.json", "report.md", "epochs.csv", "histogram.png", "config.json"):
        assert (run / name).is_file(), name
    header = (run / "epochs.csv").read_text().splitlines()[0]
    assert "share_a" in header and "clean_acc" in header
    assert "exposure" in header
    report = json.loads((run / "report.json").read_text())
    assert len(report["exposures"]) == 2 and report["threshold"] == 0
    assert {r["exposure"] for r in report["epochs"]} == {1, 2}
    wrong = runner.invoke(main, [*base[:2], "--clean", str(clean), "--classes", "w,x,y,z"])
    assert wrong.exit_code == 2 and "do not match the model's classes" in wrong.output


def test_scan_state_dicts_safetensors_and_refused_pickles(runner, tmp_path, backdoored) -> None:
    from safetensors.torch import save_file

    clean = write_synthetic_folder(tmp_path / "clean", per_class=10)
    weights = {k: v.contiguous() for k, v in backdoored.state_dict().items()}
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save(weights, tmp_path / "w.pt")
    common = ["--clean", str(clean), "--arch", TINY, "--classes", ",".join(CLASSES),
              "--input-size", "16", *SCAN_FAST, "--threshold", "1.01"]  # fmt: skip
    ok = runner.invoke(main, ["scan", str(tmp_path / "w.safetensors"), *common,
                              "-o", str(tmp_path / "r")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(main, ["scan", str(tmp_path / "w.pt"), *common])
    assert refused.exit_code == 2 and "--trust-pickle" in refused.output
    trusted = runner.invoke(main, ["scan", str(tmp_path / "w.pt"), *common, "--trust-pickle",
                                   "-o", str(tmp_path / "r2")])  # fmt: skip
    assert trusted.exit_code == 0, trusted.output


def test_purify_cli_saves_a_pruned_model_and_its_report(runner, tmp_path, backdoored) -> None:
    model = _saved(backdoored, tmp_path / "m")
    (tmp_path / "trigger.json").write_text(json.dumps({"name": "badnets", "target": 0}))
    clean = write_synthetic_folder(tmp_path / "clean", per_class=20)
    out = tmp_path / "purified"
    result = runner.invoke(main, [
        "purify", str(model), "--clean", str(clean), "--trigger", str(tmp_path / "trigger.json"),
        "--max-epochs", "4", "--mask-epochs", "3", "--defense-images", "40", "-o", str(out),
        "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["trigger"]["target"] == 0 and report["asr_before"] is not None
    reloaded = load_model(out)
    assert reloaded.spec.metadata["purified"]["threshold"] == report["threshold"]
    zeroed = sum(int((m.weight == 0).sum()) for _, m in require_batch_norm(reloaded))
    assert zeroed >= report["pruned_channels"]
    for name in ("report.json", "report.md", "sweep.csv", "sweep.png", "masks.png", "masks.csv"):
        assert (out / name).is_file(), name
    bad = runner.invoke(main, ["purify", str(model), "--clean", str(clean), "--trigger", "sig",
                               "--target", "0", "-o", str(tmp_path / "x")])  # fmt: skip
    assert bad.exit_code == 2 and "unknown backdoor" in bad.output


def test_cli_choices_match_the_library() -> None:
    import importlib

    from unlearnable.defenses.detection import READOUTS, SCORES
    from unlearnable.defenses.exposure import EXPOSURES

    cli = importlib.import_module("unlearnable.cli.scan")
    assert set(cli.EXPOSURES) == set(EXPOSURES.names()) and set(cli.SCORES) == set(SCORES)
    assert set(cli.READOUTS) == set(READOUTS)


def prototypes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes of smooth random 16 px prototypes (fixed), scaled and noised per image."""
    g = torch.Generator().manual_seed(123)
    protos = nn.functional.interpolate(torch.rand(10, 3, 4, 4, generator=g), size=(16, 16),
                                       mode="bilinear", align_corners=False)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    scale = 0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    images = protos[labels] * scale + 0.15 * torch.randn(n, 3, 16, 16, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


@pytest.mark.slow
def test_a_tiny_backdoored_model_is_flagged_with_its_target() -> None:
    # Default exposure (RNP: SGD lr 0.01, stop at the automatic accuracy threshold). Tiny clean
    # models trained this way may ALSO collapse into a "sink" class and be flagged (EBYD's
    # false-positive trap; see the report and the benchmark), so only the backdoored side is
    # asserted here.
    train, test, clean = prototypes(300, 1), prototypes(200, 2), prototypes(400, 3)
    config = ScanConfig(exposure=ExposureConfig(batch_size=32), defense_images=100, exposures=1)
    run = train_backdoored(
        *train, *test, BadNets(), PoisonConfig(4, 0.1, 1), TINY,
        TrainConfig(epochs=10, batch_size=32, lr=0.05, augment=False), seed=1,
    )  # fmt: skip
    assert run.clean_accuracy > 0.9 and run.attack_success_rate > 0.9
    bad = scan_model(run.model, CleanSet(*clean, tuple("abcdefghij")), config)
    assert bad.flagged and bad.detection.target == 4, bad.to_report()["epochs"]


def _tiny_subject(rate: float, seed: int, target: int) -> nn.Module:
    train, test = prototypes(300, 1), prototypes(200, 2)
    run = train_backdoored(
        *train, *test, BadNets(), PoisonConfig(target, rate, seed), TINY,
        TrainConfig(epochs=10, batch_size=32, lr=0.05, augment=False), seed=seed,
    )  # fmt: skip
    assert run.clean_accuracy > 0.9 and (rate == 0 or run.attack_success_rate > 0.9)
    return run.model


def test_a_tiny_backdoored_model_is_flagged_and_a_tiny_clean_one_is_not() -> None:
    # Three independent exposures on disjoint thirds of the defense set, each read early
    # (where predictions moved by the first epoch that lost 30 % of the clean accuracy), less
    # the featureless prior: the backdoor's target is the sink of all three, this clean
    # model's sinks move. Not every tiny model behaves so: over seeds 0-3, 2 of 4 clean models
    # had a stable natural sink and were flagged (see the README's EBYD section).
    torch.set_num_threads(1)
    clean = CleanSet(*prototypes(400, 3), tuple("abcdefghij"))
    config = ScanConfig(
        exposure=ExposureConfig(batch_size=32),
        detection=DetectionConfig(readout="early"),
        defense_images=200,
        exposures=3,
    )
    bad = scan_model(_tiny_subject(0.1, seed=1, target=7), clean, config)
    assert bad.flagged and bad.detection.target == 7, bad.detection
    assert bad.detection.tops == (7, 7, 7) and len(bad.exposures) == 3
    calm = scan_model(_tiny_subject(0.0, seed=1, target=7), clean, config)
    assert not calm.flagged and calm.detection.target is None, calm.detection
    assert calm.detection.score < bad.detection.score
