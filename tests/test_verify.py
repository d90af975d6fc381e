"""verify: clean vs protected victims, scores, verdict and the report schema."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from unlearnable.attacks.base import Attack
from unlearnable.attacks.training import TrainConfig, TrainHistory
from unlearnable.verify import (
    SCHEMA,
    AttackResult,
    RunRecord,
    Thresholds,
    VerifyData,
    VerifyProgress,
    VerifyResult,
    protection_score,
    run_verification,
    verdict_for,
)
from unlearnable.verify_schema import validate_report

SIZE = 16
CLASSES = 4
EPOCHS = 4


def grating_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, 16, 16) grey gratings: class = orientation (0/90 deg) x period (3.5/8 px),
    random phase, plus noise. Learnable from the spatial pattern only (colour carries nothing),
    and unchanged in meaning by crops and horizontal flips."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    vertical = (labels % 2).bool()[:, None, None]
    period = torch.where(labels // 2 == 0, 3.5, 8.0)[:, None, None]
    phase = torch.rand(n, generator=g)[:, None, None] * 2 * math.pi
    wave = torch.sin(2 * math.pi * torch.where(vertical, yy, xx) / period + phase)
    images = 0.5 + 0.1 * wave[:, None] + 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def tint_shortcut(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A class-wise colour tint (+-0.3 per channel): an easy shortcut absent from the test set."""
    g = torch.Generator().manual_seed(1)
    tint = (torch.rand(CLASSES, 3, generator=g) * 2 - 1) * 0.3
    out = images.float() / 255 + tint[labels][:, :, None, None]
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


class LeakedCleanData(Attack):
    """The scraper has the clean images too (the worst case for any protection)."""

    name = "leak"
    summary = "trains on the clean copy"

    def prepare_train(self, images, clean_images, generator):  # noqa: D102
        return clean_images.clone()


@pytest.fixture(scope="module")
def verified() -> dict:
    train, labels = grating_data(256, 0)
    test, test_labels = grating_data(128, 5)
    data = VerifyData(
        protected_train=tint_shortcut(train, labels),
        clean_train=train,
        train_labels=labels,
        test_images=test,
        test_labels=test_labels,
        class_names=["h-fine", "v-fine", "h-coarse", "v-coarse"],
    )
    before = {
        k: getattr(data, k).clone() for k in ("protected_train", "clean_train", "test_images")
    }
    events: list[VerifyProgress] = []
    result = run_verification(
        data,
        ["erm", LeakedCleanData()],
        model="small-cnn",
        config=TrainConfig(epochs=EPOCHS, batch_size=32, lr=0.05),
        seeds=[0],
        progress=events.append,
    )
    return {"data": data, "before": before, "events": events, "result": result}


def test_clean_learns_and_shortcut_protects(verified) -> None:
    result: VerifyResult = verified["result"]
    erm = result.attacks[0]
    assert erm.name == "erm"
    clean, protected = erm.summary("clean"), erm.summary("protected")
    assert clean.peak_mean >= 0.9, "the clean baseline must learn the synthetic task"
    assert protected.peak_mean <= clean.peak_mean - 0.3
    assert erm.per_peak is not None and erm.per_peak > 0.5
    assert erm.per_last is not None and erm.per_last > 0.5
    assert erm.chance == pytest.approx(0.25)


def test_worst_attack_decides(verified) -> None:
    result: VerifyResult = verified["result"]
    leak = result.attacks[1]
    # both victims of the leak attack saw the same clean images with the same seed
    assert leak.summary("clean").peak == leak.summary("protected").peak
    assert leak.per_peak == 0.0
    assert result.worst is leak
    assert result.verdict == "not protected"
    report = result.to_json()
    assert report["worst_attack"] == "leak" and report["worst_per"] == 0.0


def test_inputs_unchanged_and_progress(verified) -> None:
    data: VerifyData = verified["data"]
    for key, tensor in verified["before"].items():
        assert torch.equal(getattr(data, key), tensor), key
    events: list[VerifyProgress] = verified["events"]
    assert len(events) == 2 * 2 * EPOCHS  # attacks x train sets x epochs
    assert events[-1].run == events[-1].num_runs == 4
    assert {(e.attack, e.train_set) for e in events} == {
        ("erm", "clean"),
        ("erm", "protected"),
        ("leak", "clean"),
        ("leak", "protected"),
    }


def test_report_json(verified) -> None:
    report = verified["result"].to_json()
    validate_report(report)
    json.dumps(report, allow_nan=False)
    assert report["schema"] == SCHEMA and report["schema_version"] == 2
    assert set(report["versions"]) == {"unlearnable", "torch", "python"}
    assert report["thresholds"] == {"protected": 0.7, "weak": 0.3, "score": "per_peak"}
    assert report["config"]["epochs"] == EPOCHS
    runs = report["attacks"][0]["runs"]
    assert [r["train_set"] for r in runs] == ["clean", "protected"]
    assert len(runs[0]["epochs"]) == EPOCHS
    assert report["data"]["image_shape"] == [3, SIZE, SIZE]
    assert report["data"]["image_sizes"] == [SIZE]
    assert all(a["image_size"] == SIZE for a in report["attacks"])
    (row,) = report["per_by_size"]
    assert row["image_size"] == SIZE and row["worst_attack"] == report["worst_attack"]
    assert row["per_peak"] == report["worst_per"] and row["verdict"] == report["verdict"]


def test_version_1_reports_still_validate(verified) -> None:
    report = copy.deepcopy(verified["result"].to_json())
    report["schema_version"] = 1
    del report["per_by_size"]
    for attack in report["attacks"]:
        del attack["image_size"]
    validate_report(report)


def _mutations() -> list[tuple[str, object]]:
    def drop(*path):
        def f(d):
            for key in path[:-1]:
                d = d[key]
            del d[path[-1]]

        return f

    def put(value, *path):
        def f(d):
            for key in path[:-1]:
                d = d[key]
            d[path[-1]] = value

        return f

    return [
        ("schema", put("something-else", "schema")),
        ("schema_version", put(3, "schema_version")),
        ("per_by_size", drop("per_by_size")),
        ("image_size", put("big", "attacks", 0, "image_size")),
        ("per_by_size", put("nope", "per_by_size", 0, "worst_attack")),
        ("verdict", put("great", "verdict")),
        ("worst_attack", put("nope", "worst_attack")),
        ("seeds", put([], "seeds")),
        ("attacks", put([], "attacks")),
        ("config", drop("config")),
        ("per_peak", put("high", "attacks", 0, "per_peak")),
        ("test_acc", drop("attacks", 0, "runs", 1, "epochs", 2, "test_acc")),
        ("train_set", put("dirty", "attacks", 0, "runs", 0, "train_set")),
        ("peak_mean", put(True, "attacks", 0, "clean", "peak_mean")),
    ]


@pytest.mark.parametrize(("what", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_broken_reports_raise(verified, what: str, mutate) -> None:
    report = copy.deepcopy(verified["result"].to_json())
    mutate(report)
    with pytest.raises(ValueError, match=what):
        validate_report(report)


def test_not_a_dict_raises() -> None:
    with pytest.raises(ValueError, match="object"):
        validate_report([])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- scores


def _history(accs: list[float]) -> TrainHistory:
    return TrainHistory(
        [
            {
                "epoch": i + 1,
                "train_loss": 1.0,
                "train_acc": 0.5,
                "test_acc": a,
                "lr": 0.1,
                "seconds": 0.1,
            }
            for i, a in enumerate(accs)
        ]
    )


def _attack(
    name: str, clean: list[list[float]], protected: list[list[float]], chance=0.1
) -> AttackResult:
    result = AttackResult(name, {"name": name}, chance)
    for seed, (c, p) in enumerate(zip(clean, protected, strict=True)):
        result.runs.append(RunRecord(name, "clean", seed, _history(c)))
        result.runs.append(RunRecord(name, "protected", seed, _history(p)))
    return result


def _result(attacks: list[AttackResult], thresholds: Thresholds | None = None) -> VerifyResult:
    return VerifyResult(
        "small-cnn",
        TrainConfig(epochs=3),
        [0, 1],
        thresholds or Thresholds(),
        attacks,
        {
            "num_train": 10,
            "num_test": 10,
            "image_shape": [3, 8, 8],
            "num_classes": 10,
            "class_names": [],
        },
    )


def test_protection_score() -> None:
    assert protection_score(0.9, 0.1, 0.1) == pytest.approx(1.0)
    assert protection_score(0.9, 0.9, 0.1) == pytest.approx(0.0)
    assert protection_score(0.9, 0.5, 0.1) == pytest.approx(0.5)
    assert protection_score(0.1, 0.05, 0.1) is None
    assert protection_score(0.05, 0.05, 0.1) is None


def test_scores_statistics_and_clipping() -> None:
    a = _attack("erm", [[0.5, 0.9, 0.8], [0.6, 0.7, 0.7]], [[0.05, 0.0, 0.0], [0.05, 0.0, 0.0]])
    clean = a.summary("clean")
    assert clean.peak == [0.9, 0.7] and clean.last == [0.8, 0.7]
    assert clean.peak_mean == pytest.approx(0.8)
    assert clean.peak_std == pytest.approx(math.sqrt(0.02))
    assert a.per_peak_raw == pytest.approx((0.8 - 0.05) / 0.7)
    assert a.per_peak == 1.0  # clipped: the protected model is worse than chance
    single = _attack("erm", [[0.5, 0.9]], [[0.2, 0.3]])
    assert single.summary("clean").peak_std is None


def test_verdict_thresholds_and_override() -> None:
    t = Thresholds()
    assert verdict_for(0.7, t) == "protected"
    assert verdict_for(0.69, t) == "weak"
    assert verdict_for(0.3, t) == "weak"
    assert verdict_for(0.29, t) == "not protected"
    strong = _attack("erm", [[0.9]], [[0.2]])  # PER 0.875
    medium = _attack("at-linf-8", [[0.9]], [[0.5]])  # PER 0.5
    result = _result([strong, medium])
    assert result.worst is medium and result.verdict == "weak"
    lenient = _result([strong, medium], Thresholds(protected=0.5, weak=0.2))
    assert lenient.verdict == "protected"
    assert lenient.to_json()["thresholds"]["protected"] == 0.5
    with pytest.raises(ValueError):
        Thresholds(protected=0.2, weak=0.5)


def test_clean_baseline_did_not_learn_is_inconclusive() -> None:
    learned = _attack("erm", [[0.9]], [[0.2]])
    failed = _attack("at-linf-8", [[0.1, 0.08]], [[0.1, 0.1]])  # clean at chance
    result = _result([learned, failed])
    assert failed.per_peak is None and failed.per_last is None
    assert any("did not learn" in n for n in failed.notes)
    assert result.verdict == "inconclusive"
    report = result.to_json()
    validate_report(report)
    assert report["worst_attack"] == "erm"
    assert any("inconclusive" in n for n in report["notes"])


# --------------------------------------------------------------------------- inputs


def test_verify_data_checks() -> None:
    x, y = grating_data(8, 0)
    with pytest.raises(ValueError, match="same shape"):
        VerifyData(x, x[:4], y, x, y, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="class names"):
        VerifyData(x, x, y, x, y, ["a", "b"])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        VerifyData(x, x, y, x[:, :1], y, ["a", "b", "c", "d"])
    with pytest.raises(TypeError, match="integers"):
        VerifyData(x, x, y.float(), x, y, ["a", "b", "c", "d"])


def test_chance_and_scraper_labels() -> None:
    x, y = grating_data(8, 0)
    test_labels = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3])  # majority class 5/8
    data = VerifyData(x, x, y, x, test_labels, ["a", "b", "c", "d"])
    assert data.num_classes == 4 and data.chance == pytest.approx(5 / 8)
    scraper = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    data = VerifyData(x, x, y, x, scraper, ["a", "b", "c", "d"], scraper_labels=scraper)
    assert data.num_classes == 2
    assert torch.equal(data.labels_for_training, scraper)
    assert data.chance == pytest.approx(0.5)


def test_bad_arguments_fail_before_training() -> None:
    x, y = grating_data(8, 0)
    data = VerifyData(x, x, y, x, y, ["a", "b", "c", "d"])
    cfg = TrainConfig(epochs=1)
    with pytest.raises(ValueError, match="small-cnn"):
        run_verification(data, ["erm"], "no-such-model", cfg, [0])
    with pytest.raises(KeyError, match="no-such-attack"):
        run_verification(data, ["no-such-attack"], "small-cnn", cfg, [0])
    with pytest.raises(ValueError, match="seed"):
        run_verification(data, ["erm"], "small-cnn", cfg, [])
