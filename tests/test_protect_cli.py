import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unlearnable.cli import main
from unlearnable.io.manifest import MANIFEST_NAME, read_manifest

from .conftest import make_labelled_folder, random_image, tree_digest


def protect(runner, *args):
    return runner.invoke(main, ["protect", *map(str, args)], catch_exceptions=False)


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_same_key_gives_bit_identical_outputs_and_input_is_untouched(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    before = tree_digest(source)
    first = protect(runner, source, "-o", tmp_path / "a", "--key", key_file, "-q")
    second = protect(
        runner, source, "-o", tmp_path / "b", "--key", key_file, "-q", "--workers", "2"
    )
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert tree_digest(source) == before
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    a.pop(MANIFEST_NAME), b.pop(MANIFEST_NAME)
    assert a == b and len(a) == 6
    assert all(before[path] != digest for path, digest in a.items())


def test_different_keys_give_different_outputs(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    other_key = tmp_path / "other.bin"
    assert runner.invoke(main, ["keygen", str(other_key)]).exit_code == 0
    protect(runner, source, "-o", tmp_path / "a", "--key", key_file, "-q")
    protect(runner, source, "-o", tmp_path / "b", "--key", other_key, "-q")
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a["cat/img0.png"] != b["cat/img0.png"]


def test_size_mode_and_format_are_preserved(tmp_path, runner, key_file):
    source = tmp_path / "in"
    (source / "x").mkdir(parents=True)
    random_image((31, 17), "RGBA").save(source / "x" / "alpha.png")
    random_image((40, 30), "L").save(source / "x" / "gray.png")
    random_image((40, 30)).save(source / "x" / "photo.jpg", quality=90)
    random_image((20, 20)).save(source / "x" / "pic.webp")
    result = protect(runner, source, "-o", tmp_path / "out", "--key", key_file, "-q")
    assert result.exit_code == 0, result.output
    for name in ("alpha.png", "gray.png", "photo.jpg", "pic.webp"):
        original, protected = (
            Image.open(source / "x" / name),
            Image.open(tmp_path / "out" / "x" / name),
        )
        assert (protected.size, protected.mode, protected.format) == (
            original.size,
            original.mode,
            original.format,
        )
    alpha_in = np.asarray(Image.open(source / "x" / "alpha.png"))[..., 3]
    alpha_out = np.asarray(Image.open(tmp_path / "out" / "x" / "alpha.png"))[..., 3]
    assert np.array_equal(alpha_in, alpha_out)
    assert "lossy" in result.stderr


def test_format_png_changes_extension_and_reports_collisions(tmp_path, runner, key_file):
    source = tmp_path / "in"
    source.mkdir()
    random_image().save(source / "a.jpg")
    random_image(seed=1).save(source / "a.png")
    random_image(seed=2).save(source / "b.jpg")
    result = protect(
        runner, source, "-o", tmp_path / "out", "--key", key_file, "-q", "--format", "png"
    )
    assert result.exit_code == 1
    assert (tmp_path / "out" / "b.png").exists()
    errors = [f for f in manifest_of(tmp_path / "out")["files"] if f["status"] == "error"]
    assert len(errors) == 1 and "also the output" in errors[0]["error"]


def test_bad_inputs_are_reported_and_the_rest_processed(tmp_path, runner, key_file):
    source = tmp_path / "in name"
    (source / "clàss one").mkdir(parents=True)
    good = source / "clàss one" / "my photo.v2.final.png"
    random_image().save(good)
    (source / "clàss one" / "empty.png").write_bytes(b"")
    (source / "clàss one" / "text.jpg").write_text("not an image")
    data = (good).read_bytes()
    (source / "clàss one" / "truncated.png").write_bytes(data[: len(data) // 2])
    random_image((200, 200)).save(source / "clàss one" / "huge.png")
    unreadable = source / "clàss one" / "secret.png"
    random_image().save(unreadable)
    os.chmod(unreadable, 0)
    (source / "clàss one" / "loop.png").symlink_to(source / "clàss one" / "loop.png")
    (source / "clàss one" / "dirloop").symlink_to(source)
    result = protect(
        runner, source, "-o", tmp_path / "out", "--key", key_file, "-q", "--max-pixels", "10000"
    )
    os.chmod(unreadable, 0o644)
    assert result.exit_code == 1
    records = {f["path"]: f for f in manifest_of(tmp_path / "out")["files"]}
    assert records["clàss one/my photo.v2.final.png"]["status"] == "ok"
    assert (tmp_path / "out" / "clàss one" / "my photo.v2.final.png").exists()
    expected_errors = {
        "clàss one/empty.png": "empty",
        "clàss one/text.jpg": "not an image",
        "clàss one/truncated.png": "truncated",
        "clàss one/huge.png": "decompression bomb",
        "clàss one/loop.png": "loop",
        "clàss one/dirloop": "loop",
    }
    if os.geteuid() != 0:  # root can read a mode-000 file
        expected_errors["clàss one/secret.png"] = "cannot read"
    for path, message in expected_errors.items():
        assert records[path]["status"] == "error" and message in records[path]["error"], records[
            path
        ]
    assert "failed" in result.output or result.exit_code == 1


def test_output_inside_or_equal_to_input_is_refused(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    before = tree_digest(source)
    for target in (source, source / "cat" / "out"):
        result = protect(runner, source, "-o", target, "--key", key_file)
        assert result.exit_code == 2 and "inside" in result.output
    assert tree_digest(source) == before


def test_usage_errors_exit_2(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    bad_key = tmp_path / "bad.bin"
    bad_key.write_bytes(b"short")
    assert protect(runner, source, "--key", tmp_path / "missing.bin").exit_code == 2
    assert protect(runner, source, "-o", tmp_path / "o1", "--key", bad_key).exit_code == 2
    assert (
        protect(
            runner, source, "-o", tmp_path / "o2", "--key", key_file, "--kernel-size", "4"
        ).exit_code
        == 2
    )
    assert (
        protect(
            runner, source, "-o", tmp_path / "o3", "--key", key_file, "--labels", tmp_path / "x.csv"
        ).exit_code
        == 2
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert protect(runner, empty, "-o", tmp_path / "o4", "--key", key_file).exit_code == 2


def test_resume_skips_done_files_and_redoes_missing_ones(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    out = tmp_path / "out"
    assert protect(runner, source, "-o", out, "--key", key_file, "-q").exit_code == 0
    first = tree_digest(out)
    (out / "dog" / "img1.png").unlink()
    again = protect(runner, source, "-o", out, "--key", key_file, "-q")
    assert again.exit_code == 2 and "--resume" in again.output
    result = runner.invoke(
        main, ["protect", str(source), "-o", str(out), "--key", str(key_file), "--resume", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["resumed"] == 5 and summary["ok"] == 6
    second = tree_digest(out)
    first.pop(MANIFEST_NAME), second.pop(MANIFEST_NAME)
    assert first == second
    other_key = tmp_path / "other.bin"
    runner.invoke(main, ["keygen", str(other_key)])
    mismatch = protect(runner, source, "-o", out, "--key", other_key, "--resume")
    assert mismatch.exit_code == 2 and "different key" in mismatch.output


def test_csv_and_single_labels(tmp_path, runner, key_file):
    source = tmp_path / "in"
    source.mkdir()
    for i in range(3):
        random_image(seed=i).save(source / f"p{i}.png")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,label\np0.png,alice\n./p1.png,bob\n")
    result = protect(
        runner, source, "-o", tmp_path / "csv", "--key", key_file, "-q", "--labels", csv_file
    )
    assert result.exit_code == 1
    manifest = read_manifest(tmp_path / "csv")
    assert manifest.classes == ["alice", "bob"]
    records = {r.path: r for r in manifest.files}
    assert records["p1.png"].label == "bob" and "no label" in records["p2.png"].error
    single = protect(runner, source, "-o", tmp_path / "single", "--key", key_file, "-q")
    assert single.exit_code == 0 and read_manifest(tmp_path / "single").classes == ["all"]
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b,c\n")
    assert (
        protect(
            runner, source, "-o", tmp_path / "bad", "--key", key_file, "--labels", bad_csv
        ).exit_code
        == 2
    )


def test_key_never_appears_in_any_output(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    material = key_file.read_bytes()
    result = runner.invoke(
        main,
        [
            "protect",
            str(source),
            "-o",
            str(tmp_path / "out"),
            "--key",
            str(key_file),
            "--json",
            "--preview",
            "2",
        ],
    )
    keygen = runner.invoke(main, ["keygen", str(tmp_path / "new.bin")])
    texts = [result.output, keygen.output]
    blobs = [p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    for secret in (material, material.hex().encode(), material.hex().upper().encode()):
        assert all(secret.decode("latin-1") not in t for t in texts)
        assert all(secret not in blob for blob in blobs)
    new_material = (tmp_path / "new.bin").read_bytes()
    assert new_material.hex() not in keygen.output


def test_manifest_records_everything(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    assert protect(runner, source, "-o", tmp_path / "out", "--key", key_file, "-q").exit_code == 0
    data = manifest_of(tmp_path / "out")
    assert data["schema"] == "unlearnable.manifest" and data["schema_version"] == 2
    assert data["method"] == "photo" and data["labels"]["classes"] == {"cat": 0, "dog": 1}
    record = data["files"][0]
    for field in (
        "path",
        "label",
        "input_sha256",
        "output_sha256",
        "width",
        "height",
        "psnr",
        "ssim",
        "visual_cost",
        "params",
    ):
        assert field in record
    assert 5 < record["psnr"] < 60 and -1 <= record["ssim"] <= 1
    assert 0 <= record["visual_cost"] <= 2
    summary = data["summary"]
    assert summary["ok"] == 6 and summary["failed"] == 0
    costs = [r["visual_cost"] for r in data["files"]]
    assert summary["max_visual_cost"] == max(costs)
    assert abs(summary["mean_visual_cost"] - sum(costs) / len(costs)) < 1e-4
    assert summary["over_budget"] == 0 and summary["weakened"] == 0


def test_preview_sheet_is_written(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    protect(runner, source, "-o", tmp_path / "out", "--key", key_file, "-q", "--preview", "3")
    sheet = Image.open(tmp_path / "out" / "unlearnable-preview.png")
    assert sheet.size[0] == 3 * 128 and sheet.size[1] > 3 * 128


def test_keygen_cli(tmp_path, runner):
    path = tmp_path / "k.bin"
    first = runner.invoke(main, ["keygen", str(path)])
    assert first.exit_code == 0 and "fingerprint" in first.output
    assert runner.invoke(main, ["keygen", str(path)]).exit_code == 2


def test_demo_protects_and_verifies(tmp_path, runner):
    result = runner.invoke(
        main,
        ["demo", "--output", str(tmp_path / "demo"), "--per-class", "4", "--epochs", "1", "-q"],
    )
    assert result.exit_code == 0, result.output
    protected = tmp_path / "demo" / "protected-train"
    assert (protected / MANIFEST_NAME).exists()
    assert len(list(protected.glob("*/*.png"))) == 40
    report = json.loads((tmp_path / "demo" / "verify-run" / "report.json").read_text())
    assert report["verdict"] in {"protected", "weak", "not protected", "inconclusive"}
    assert "verdict" in result.output
    again = runner.invoke(main, ["demo", "--output", str(tmp_path / "demo"), "--no-verify", "-q"])
    assert again.exit_code == 2 and "not empty" in again.output


@pytest.mark.parametrize("entry", [["-m", "unlearnable", "--version"]])
def test_python_dash_m(entry):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, *entry], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "unlearnable" in result.stdout


def test_json_tells_what_to_expect_and_the_budget_is_respected(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    out = tmp_path / "out"
    result = protect(
        runner,
        source,
        "-o",
        out,
        "--key",
        key_file,
        "--json",
        "--max-visual-cost",
        "0.001",
        "--method",
        "cuda",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    expectation = summary["expectation"]
    assert expectation["method"] == "cuda" and expectation["size_band"] == "thumbnail"
    assert expectation["image_size"] == [24, 20] and expectation["output"] == "png"
    assert 0 < expectation["per_peak"] <= 1 and "benchmarks/" in expectation["command"]
    assert "verify" in expectation["line"]
    data = manifest_of(out)
    assert data["parameters"]["output"]["max_visual_cost"] == 0.001
    flagged = 0
    for record in data["files"]:
        assert record["visual_cost"] <= 0.001 or record["over_budget"] is True
        flagged += bool(record.get("over_budget"))
    assert summary["over_budget"] == flagged
    # the budget is part of the run's settings: another budget does not resume
    other = protect(
        runner,
        source,
        "-o",
        out,
        "--key",
        key_file,
        "--resume",
        "--max-visual-cost",
        "0.5",
        "--method",
        "cuda",
    )
    assert other.exit_code == 2 and "different" in other.output
    same = protect(
        runner,
        source,
        "-o",
        out,
        "--key",
        key_file,
        "--resume",
        "--json",
        "--max-visual-cost",
        "0.001",
        "--method",
        "cuda",
    )
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["resumed"] == 6


def test_summary_table_shows_visual_cost_and_what_to_expect(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in")
    result = protect(runner, source, "-o", tmp_path / "out", "--key", key_file)
    assert result.exit_code == 0, result.output
    assert "visual cost" in result.output and "what to expect" in result.output
