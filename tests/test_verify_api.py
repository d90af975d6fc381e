"""verify as a library call: ``unlearnable.verify_folders`` on a tiny synthetic set."""

from __future__ import annotations

import json

import pytest

import unlearnable as ul
from unlearnable.cli import main

from .conftest import make_labelled_folder


@pytest.fixture
def folders(tmp_path, runner, key_file):
    clean = make_labelled_folder(tmp_path / "clean", classes=("cat", "dog"), per_class=4)
    test = make_labelled_folder(tmp_path / "test", classes=("cat", "dog"), per_class=2)
    result = runner.invoke(main, ["protect", str(clean), "-o", str(tmp_path / "protected"), "--key", str(key_file), "-q"])
    assert result.exit_code == 0, result.output
    return clean, tmp_path / "protected", test


def test_verify_folders_runs_from_python_and_writes_a_run_folder(folders, tmp_path) -> None:
    clean, protected, test = folders
    epochs = []
    options = ul.VerifyOptions(attacks=("erm",), budget="smoke", epochs=1, device="cpu")
    run = ul.verify_folders(
        protected, clean, test, options, output=tmp_path / "run", progress=epochs.append
    )
    assert isinstance(run, ul.VerifyRun) and run.folder == tmp_path / "run"
    assert run.report["verdict"] == run.result.verdict
    assert [a["name"] for a in run.report["attacks"]] == ["erm"]
    assert len(epochs) == 2  # one epoch each for the clean and the protected victim
    config = json.loads((run.folder / "config.json").read_text())
    assert config["run"]["options"]["attacks"] == ["erm"] and config["run"]["options"]["epochs"] == 1
    assert config["seeds"] == [0]
    assert set(config["provenance"]) >= {"unlearnable", "torch", "python", "git_commit"}
    assert (run.folder / "report.md").exists() and run.model_paths == []


def test_verify_folders_raises_typed_errors_before_training(folders, tmp_path) -> None:
    clean, protected, test = folders
    with pytest.raises(ul.InputError, match="not found"):
        ul.verify_folders(protected, clean, tmp_path / "missing", output=tmp_path / "r1")
    with pytest.raises(ul.UsageError, match="unknown attack"):
        ul.verify_folders(protected, clean, test, ul.VerifyOptions(attacks=("nope",)))
    with pytest.raises(ul.UsageError, match="no-such-model"):
        ul.verify_folders(protected, clean, test, ul.VerifyOptions(model="no-such-model"))
    assert not (tmp_path / "r1").exists()


def test_save_models_keeps_victims_that_reproduce_the_reported_accuracy(folders, tmp_path) -> None:
    from unlearnable.verify_inputs import load_verify_folders

    clean, protected, test = folders
    options = ul.VerifyOptions(attacks=("erm",), budget="smoke", epochs=1, device="cpu", save_models=True)
    run = ul.verify_folders(protected, clean, test, options, output=tmp_path / "run")
    assert sorted(p.name for p in run.model_paths) == ["erm-clean-seed0", "erm-protected-seed0"]
    data = load_verify_folders(protected, clean, test).data
    for path, train_set in zip(sorted(run.model_paths), ("clean", "protected"), strict=True):
        loaded = ul.load_model(path)
        assert list(loaded.spec.classes) == ["cat", "dog"]
        assert loaded.spec.metadata["train_set"] == train_set
        predictions = loaded.predict(data.test_images.float() / 255)
        accuracy = float((predictions == data.test_labels).float().mean())
        reported = next(r for r in run.report["attacks"][0]["runs"] if r["train_set"] == train_set)
        assert accuracy == pytest.approx(reported["epochs"][-1]["test_acc"])


def test_input_check_refuses_or_warns_about_changed_clean_files(folders, tmp_path, runner) -> None:
    from .conftest import random_image

    clean, protected, test = folders
    random_image(seed=999).save(clean / "cat" / "img0.png")  # not the image that was protected
    options = ul.VerifyOptions(attacks=("erm",), budget="smoke", epochs=1, device="cpu")
    with pytest.raises(ul.IntegrityError):
        ul.verify_folders(protected, clean, test, options, output=tmp_path / "r1")
    warned = ul.verify_folders(protected, clean, test, ul.VerifyOptions(
        attacks=("erm",), budget="smoke", epochs=1, device="cpu", input_check="warn"),
        output=tmp_path / "r2")
    assert warned.input_mismatches == ["cat/img0.png"]
    args = ["verify", str(protected), "--clean-train", str(clean), "--test", str(test),
            "--attacks", "erm", "--budget", "smoke", "--epochs", "1", "-o", str(tmp_path / "r3")]
    assert runner.invoke(main, args).exit_code == 1
    result = runner.invoke(main, [*args, "--input-check", "warn", "-o", str(tmp_path / "r4")])
    assert result.exit_code == 0 and "differ from the inputs" in result.output
