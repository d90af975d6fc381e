"""verify at several scraper resolutions: one row per size, the verdict of the worst size, and
a warning when victims train far from the files' own size."""

from __future__ import annotations

import json

import pytest

import unlearnable as ul
from unlearnable.cli import main
from unlearnable.cli.verify import parse_sizes
from unlearnable.verify_run import resolution_warnings
from unlearnable.verify_schema import validate_report

from .conftest import make_labelled_folder


@pytest.fixture
def folders(tmp_path, runner, key_file):
    clean = make_labelled_folder(tmp_path / "clean", classes=("cat", "dog"), per_class=4)
    test = make_labelled_folder(tmp_path / "test", classes=("cat", "dog"), per_class=2)
    out = tmp_path / "protected"
    result = runner.invoke(
        main, ["protect", str(clean), "-o", str(out), "--key", str(key_file), "-q"]
    )
    assert result.exit_code == 0, result.output
    return clean, out, test


def test_multi_size_verify_gives_one_row_per_size(folders, tmp_path) -> None:
    clean, protected, test = folders
    events = []
    options = ul.VerifyOptions(
        attacks=("erm",),
        budget="smoke",
        epochs=1,
        device="cpu",
        image_size=(16, 24),
        save_models=True,
    )
    run = ul.verify_folders(
        protected, clean, test, options, output=tmp_path / "run", progress=events.append
    )
    report = run.report
    validate_report(report)
    assert run.image_sizes == [16, 24] and run.image_size == 16
    assert [a["name"] for a in report["attacks"]] == ["erm@16px", "erm@24px"]
    assert [a["image_size"] for a in report["attacks"]] == [16, 24]
    rows = report["per_by_size"]
    assert [r["image_size"] for r in rows] == [16, 24]
    for row, name in zip(rows, ("erm@16px", "erm@24px"), strict=True):
        # 1 epoch on 8 images: the clean baseline may not beat chance (PER undefined)
        assert row["worst_attack"] == (name if row["per_peak"] is not None else None)
        assert row["verdict"] in ("protected", "weak", "not protected", "inconclusive")
    # the verdict is that of the worst size
    defined = [r for r in rows if r["per_peak"] is not None]
    if len(defined) == 2:
        worst = min(defined, key=lambda r: r["per_peak"])
        assert report["worst_per"] == worst["per_peak"] and report["verdict"] == worst["verdict"]
    assert report["data"]["image_sizes"] == [16, 24]
    # progress counts runs over both sizes
    assert events[-1].run == events[-1].num_runs == 4
    assert {e.attack for e in events} == {"erm@16px", "erm@24px"}
    # run folder: one row per size in the Markdown, the PER plot, distinct model folders
    markdown = (run.folder / "report.md").read_text()
    assert "## PER per scraper resolution" in markdown
    assert "| 16 px |" in markdown and "| 24 px |" in markdown
    assert (run.folder / "per_by_size.png").read_bytes()[:4] == b"\x89PNG"
    assert len({p.name for p in run.model_paths}) == 4
    stored = json.loads((run.folder / "report.json").read_text())
    assert stored["per_by_size"] == rows


def test_cli_accepts_comma_separated_and_repeated_sizes(folders, tmp_path, runner) -> None:
    clean, protected, test = folders
    base = [
        "verify",
        str(protected),
        "--clean-train",
        str(clean),
        "--test",
        str(test),
        "--attacks",
        "erm",
        "--budget",
        "smoke",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--json",
    ]
    result = runner.invoke(
        main, [*base, "--image-size", "16", "--image-size", "24", "-o", str(tmp_path / "r1")]
    )
    assert result.exit_code in (0, 3), result.output
    report = json.loads(result.output)
    assert [r["image_size"] for r in report["per_by_size"]] == [16, 24]
    bad = runner.invoke(main, [*base, "--image-size", "16,x", "-o", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert parse_sizes(("112,224", "224", "64")) == (112, 224, 64)
    assert parse_sizes(("32",)) == 32 and parse_sizes(()) is None


def test_verify_warns_when_training_far_from_the_files_size(folders, tmp_path) -> None:
    clean, protected, test = folders  # files are 24 x 20: median short side 20
    options = ul.VerifyOptions(
        attacks=("erm",), budget="smoke", epochs=1, device="cpu", image_size=64
    )
    run = ul.verify_folders(protected, clean, test, options, output=tmp_path / "run")
    assert len(run.warnings) == 1 and "64 px" in run.warnings[0] and "20 px" in run.warnings[0]
    assert run.warnings[0] in run.report["notes"]
    near = ul.VerifyOptions(attacks=("erm",), budget="smoke", epochs=1, device="cpu", image_size=24)
    assert ul.verify_folders(protected, clean, test, near, output=tmp_path / "r2").warnings == []


def test_resolution_warnings_use_a_factor_of_two() -> None:
    assert resolution_warnings([112, 224], 224) == []
    assert len(resolution_warnings([100, 224, 500], 224)) == 2
    assert resolution_warnings([32], None) == []


def test_bad_sizes_are_usage_errors() -> None:
    with pytest.raises(ul.UsageError):
        ul.VerifyOptions(image_size=(16, 4))
    with pytest.raises(ul.UsageError):
        ul.VerifyOptions(image_size=())
    assert ul.VerifyOptions(image_size=[32, 32]).image_size == 32
    assert ul.VerifyOptions(image_size=[32, 64]).image_sizes == (32, 64)


def test_combined_verdict_is_that_of_the_worst_size() -> None:
    from unlearnable.verify_run import combine_sizes

    from .test_verify import _attack, _result

    # PER 0.8 at 112 px (protected), 0.4 at 224 px (weak)
    small = _result([_attack("erm", [[0.5, 0.9]], [[0.2, 0.26]])])
    large = _result([_attack("erm", [[0.5, 0.9]], [[0.4, 0.58]])])
    combined = combine_sizes([(112, small), (224, large)], ["a warning"])
    report = combined.to_json()
    validate_report(report)
    rows = report["per_by_size"]
    assert [r["image_size"] for r in rows] == [112, 224]
    assert [r["verdict"] for r in rows] == ["protected", "weak"]
    assert rows[0]["per_peak"] == pytest.approx(0.8) and rows[1]["per_peak"] == pytest.approx(0.4)
    assert report["verdict"] == "weak" and report["worst_attack"] == "erm@224px"
    assert report["notes"][0] == "a warning"
    assert [r.attack for r in combined.attacks[1].runs] == ["erm@224px"] * 2
