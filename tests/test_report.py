"""report: the run folder (JSON, CSV, PNG curves, Markdown)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from unlearnable.attacks.training import TrainConfig, TrainHistory
from unlearnable.report import (
    CLEAN_COLOUR,
    EPOCH_COLUMNS,
    PROTECTED_COLOUR,
    markdown_report,
    plot_accuracy,
    plot_filenames,
    write_run_folder,
)
from unlearnable.verify import AttackResult, RunRecord, Thresholds, VerifyResult
from unlearnable.verify_schema import validate_report

EPOCHS = 5
SEEDS = [0, 1]


def _history(start: float, end: float, seed: int) -> TrainHistory:
    rows = []
    for i in range(EPOCHS):
        acc = start + (end - start) * i / (EPOCHS - 1) + 0.01 * seed
        rows.append(
            {
                "epoch": i + 1,
                "train_loss": 2.0 / (i + 1),
                "train_acc": min(1.0, acc + 0.1),
                "test_acc": acc,
                "lr": 0.1 / (i + 1),
                "seconds": 0.5,
            }
        )
    return TrainHistory(rows)


def _attack(name: str, protected_end: float) -> AttackResult:
    result = AttackResult(name, {"name": name, "summary": f"{name} attack", "eps": 0.03}, 0.1)
    for seed in SEEDS:
        result.runs.append(RunRecord(name, "clean", seed, _history(0.2, 0.8, seed)))
        result.runs.append(RunRecord(name, "protected", seed, _history(0.15, protected_end, seed)))
    return result


@pytest.fixture()
def result() -> VerifyResult:
    return VerifyResult(
        model="small-cnn",
        config=TrainConfig(epochs=EPOCHS),
        seeds=SEEDS,
        thresholds=Thresholds(),
        attacks=[_attack("erm", 0.12), _attack("at-linf-8", 0.35)],
        data={
            "num_train": 100,
            "num_test": 50,
            "image_shape": [3, 16, 16],
            "num_classes": 10,
            "class_names": [str(i) for i in range(10)],
            "scraper_labels": False,
            "chance": 0.1,
        },
    )


def test_write_run_folder_writes_everything(result: VerifyResult, tmp_path: Path) -> None:
    folder = write_run_folder(result, tmp_path / "run", extra_config={"budget": "quick"})
    assert folder == tmp_path / "run"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "accuracy_at-linf-8.png",
        "accuracy_erm.png",
        "config.json",
        "epochs.csv",
        "report.json",
        "report.md",
    ], "unexpected or leftover temporary files"

    report = json.loads((folder / "report.json").read_text())
    validate_report(report)
    assert report["verdict"] == "weak" and report["worst_attack"] == "at-linf-8"

    config = json.loads((folder / "config.json").read_text())
    assert config["run"] == {"budget": "quick"}
    assert config["model"] == "small-cnn" and config["seeds"] == SEEDS
    assert [a["name"] for a in config["attacks"]] == ["erm", "at-linf-8"]

    rows = list(csv.DictReader(io.StringIO((folder / "epochs.csv").read_text())))
    assert len(rows) == 2 * 2 * len(SEEDS) * EPOCHS  # attacks x train sets x seeds x epochs
    assert list(rows[0]) == EPOCH_COLUMNS
    assert {r["train_set"] for r in rows} == {"clean", "protected"}
    assert float(rows[0]["test_acc"]) == pytest.approx(0.2)

    md = (folder / "report.md").read_text()
    assert "Verdict: WEAK" in md
    assert "worst attack: `at-linf-8`" in md
    assert "![Test accuracy per epoch under erm](accuracy_erm.png)" in md
    assert "| erm |" in md and "**at-linf-8** (worst)" in md
    assert "What it does not show" in md
    assert "0.70" in md and "0.30" in md  # the thresholds are named


def test_plot_is_a_png_with_both_curves(result: VerifyResult) -> None:
    png = plot_accuracy(result.to_json()["attacks"][0], backend="pillow")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (720, 440)
    colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 16)}
    assert CLEAN_COLOUR in colours and PROTECTED_COLOUR in colours


def test_plot_with_matplotlib(result: VerifyResult) -> None:
    pytest.importorskip("matplotlib")
    png = plot_accuracy(result.to_json()["attacks"][0], backend="matplotlib")
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_single_epoch_single_seed_plot() -> None:
    attack = AttackResult("erm", {"name": "erm"}, 0.5)
    row = {
        "epoch": 1,
        "train_loss": 1.0,
        "train_acc": None,
        "test_acc": 0.7,
        "lr": 0.1,
        "seconds": 1,
    }
    attack.runs.append(RunRecord("erm", "clean", 0, TrainHistory([row])))
    attack.runs.append(RunRecord("erm", "protected", 0, TrainHistory([{**row, "test_acc": 0.5}])))
    png = plot_accuracy(attack.to_json(), backend="pillow")
    assert Image.open(io.BytesIO(png)).size == (720, 440)


def test_broken_report_writes_nothing(result: VerifyResult, tmp_path: Path) -> None:
    report = result.to_json()
    del report["verdict"]
    with pytest.raises(ValueError, match="verdict"):
        write_run_folder(report, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_rewrite_from_report_dict(result: VerifyResult, tmp_path: Path) -> None:
    first = write_run_folder(result, tmp_path / "a")
    report = json.loads((first / "report.json").read_text())
    second = write_run_folder(report, tmp_path / "b")
    assert (second / "report.md").read_text() == (first / "report.md").read_text()


def test_plot_filenames_are_safe_and_unique() -> None:
    report = {"attacks": [{"name": "a/b"}, {"name": "a b"}, {"name": "at-l2-0.5"}]}
    names = plot_filenames(report)
    assert names["a/b"] == "accuracy_a_b.png"
    assert names["a b"] == "accuracy_a_b_2.png"
    assert names["at-l2-0.5"] == "accuracy_at-l2-0.5.png"


def test_inconclusive_markdown(result: VerifyResult) -> None:
    failed = AttackResult("at-l2-0.5", {"name": "at-l2-0.5"}, 0.1)
    for train_set in ("clean", "protected"):
        failed.runs.append(RunRecord("at-l2-0.5", train_set, 0, _history(0.1, 0.05, 0)))
    result.attacks.append(failed)
    report = result.to_json()
    md = markdown_report(report)
    assert "Verdict: INCONCLUSIVE" in md
    assert "n/a" in md
    assert "did not learn" in md
