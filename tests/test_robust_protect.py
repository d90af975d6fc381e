"""protect / verify / keygen on faults found by trying them: each test fails without its fix.

Worker pools (real processes): a worker killed while it sends a result must not keep the run
waiting at exit, and the workers must end when the run itself is killed outright.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_stopping_a_pool_with_half_a_result_in_the_pipe_lets_the_process_exit():
    # A worker SIGKILLed while it writes its result leaves a partial message in the result
    # pipe: the pool's manager thread then blocked in read() forever and the process hung at
    # exit after printing "interrupted" (seen with SIGINT mid-run). Here the half message is
    # written by hand, then the pool is stopped as the runner stops it.
    script = """
        import os, struct, time
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        from unlearnable.io.executors import stop_pool

        if __name__ == "__main__":
            pool = ProcessPoolExecutor(2, mp_context=get_context("spawn"))
            pool.submit(time.sleep, 30)
            time.sleep(1.0)
            writer = pool._result_queue._writer
            os.write(writer.fileno(), struct.pack("!i", 100_000) + b"half a message")
            time.sleep(0.3)
            stop_pool(pool)
            print("stopped", flush=True)
    """
    try:
        done = _python(script, timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit after stop_pool (manager thread stuck in read)")
    assert done.returncode == 0, done.stderr
    assert "stopped" in done.stdout


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_workers_end_when_the_run_is_killed_outright(tmp_path: Path):
    # kill -9 (or the OOM killer) on `unlearnable protect` left its worker processes waiting
    # for work forever (~550 MB each), holding the caller's stdout/stderr pipes open.
    script = """
        import sys
        from pathlib import Path
        from unlearnable.io.executors import ProcessExecutor
        from tests.test_robust_protect import report_and_sleep

        if __name__ == "__main__":
            results = ProcessExecutor(2, in_process=False).run(
                report_and_sleep, sys.argv[1], [0, 1], None
            )
            next(results)
    """
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert process.poll() is None, "the pool script ended early"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        orphans = [pid for pid in workers if _alive(pid)]
    finally:
        if process.poll() is None:
            process.kill()
    for pid in orphans:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "worker processes outlived the killed run"


def report_and_sleep(folder: str, item: int) -> int:
    """A work item for the pool above: note this worker's pid, then take a long time."""
    (Path(folder) / f"{os.getpid()}.pid").write_text("")
    time.sleep(60)
    return item


# --------------------------------------------------------------------------- discovery


def test_a_folder_reached_through_a_link_first_is_not_reported_as_a_loop(tmp_path: Path):
    # b/dirlink -> ../a was walked first (the walk pops the last name first), and the real
    # folder "a" was then reported as "symbolic link loop (folder already visited)": a failed
    # entry, its images protected only under b's label, exit code 1.
    from unlearnable.io.discover import discover_images

    from .conftest import random_image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    random_image().save(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "dirlink").symlink_to("../a")
    (tmp_path / "a" / "up").symlink_to("..")  # a real loop stays one
    found = discover_images(tmp_path)
    assert found.files == ["a/x.png", "b/dirlink/x.png"]
    assert set(found.problems) == {"a/up", "b/dirlink/up"}
    assert all("loop" in message for message in found.problems.values())


# --------------------------------------------------------------------------- one run per folder


def test_a_second_run_into_a_busy_output_folder_is_refused(tmp_path: Path, runner, key_file):
    # Two runs into one folder (even with --resume, even with different keys) both wrote
    # there; the manifest of the one that ended last could describe the other one's files.
    from unlearnable.cli import main
    from unlearnable.io.lock import LOCK_NAME, output_lock

    from .conftest import make_labelled_folder

    source = make_labelled_folder(tmp_path / "in", per_class=2)
    out = tmp_path / "out"
    args = ["protect", str(source), "-o", str(out), "--key", str(key_file), "--workers", "1"]
    with output_lock(out):  # another run holds it
        busy = runner.invoke(main, [*args, "--resume", "-q"])
        assert busy.exit_code == 2, busy.output
        assert "another unlearnable protect run" in busy.output
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    done = runner.invoke(main, [*args, "-q"])
    assert done.exit_code == 0, done.output
    assert not (out / LOCK_NAME).exists()
    refused = runner.invoke(
        main,
        [
            *args[:3],
            str(tmp_path / "new" / "out"),
            *args[4:],
            "--labels",
            str(tmp_path / "missing.csv"),
        ],
    )
    assert refused.exit_code == 2 and not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- CLI conventions


@pytest.mark.parametrize("device", ["tpu", "cudafoo", "cuda"])
def test_protect_refuses_a_bad_device_for_every_method(tmp_path: Path, runner, key_file, device):
    # --device was only checked for the surrogate methods: `protect --device cuda` on a
    # machine without CUDA (or --device tpu) ran and exited 0.
    import torch

    from unlearnable.cli import main

    from .conftest import make_labelled_folder

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    source = make_labelled_folder(tmp_path / "in", per_class=1)
    args = ["protect", str(source), "-o", str(tmp_path / "out"), "--key", str(key_file)]
    result = runner.invoke(main, [*args, "--workers", "1", "-q", "--device", device])
    assert result.exit_code == 2, result.output
    assert "device" in result.output and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- verify


def test_verify_notes_protected_files_changed_after_protection_and_unfinished_runs(
    tmp_path: Path, runner, key_file
):
    # A protected file replaced by its clean original (or re-saved) after protection was
    # verified as if it were protected, without a word; a folder with the journal of an
    # unfinished run too; a protected file gone from the folder gave "cannot read ...".
    from unlearnable.cli import main
    from unlearnable.io.journal import JOURNAL_NAME
    from unlearnable.verify_inputs import VerifyInputError, load_verify_folders

    from .conftest import make_labelled_folder

    clean = make_labelled_folder(tmp_path / "clean", per_class=2)
    test = make_labelled_folder(tmp_path / "test", per_class=1)
    protected = tmp_path / "protected"
    args = ["protect", str(clean), "-o", str(protected), "--key", str(key_file), "-q"]
    assert runner.invoke(main, [*args, "--workers", "1"]).exit_code == 0
    assert load_verify_folders(protected, clean, test).notes == []
    (protected / "cat" / "img0.png").write_bytes((clean / "cat" / "img0.png").read_bytes())
    notes = load_verify_folders(protected, clean, test).notes
    assert len(notes) == 1 and "1 of 4 protected files differ" in notes[0]
    assert "cat/img0.png" in notes[0]
    assert load_verify_folders(protected, clean, test, input_check="off").notes == []
    (protected / JOURNAL_NAME).write_text("{}\n")
    notes = load_verify_folders(protected, clean, test).notes
    assert any("did not finish" in note for note in notes)
    (protected / "dog" / "img1.png").unlink()
    with pytest.raises(VerifyInputError, match="protected files of the manifest are missing"):
        load_verify_folders(protected, clean, test)


def test_photos_in_formats_that_are_not_protected_are_reported_as_skipped(tmp_path: Path):
    # An iPhone folder (HEIC) or AVIF / JPEG 2000 / raw files were left out without a word:
    # "files 2, protected 2", exit 0, while most photos were not protected at all.
    from unlearnable.io.discover import discover_images

    from .conftest import random_image

    random_image().save(tmp_path / "a.png")
    for name in ("IMG_0001.HEIC", "b.avif", "c.jp2", "d.CR2"):
        (tmp_path / name).write_bytes(b"\0" * 64)
    (tmp_path / "notes.txt").write_text("not an image")
    found = discover_images(tmp_path)
    assert found.files == ["a.png"]
    assert sorted(found.skipped) == ["IMG_0001.HEIC", "b.avif", "c.jp2", "d.CR2"]
    assert "HEIC" in found.skipped["IMG_0001.HEIC"] and "convert" in found.skipped["b.avif"]
    assert found.ignored == 1


def test_demo_refuses_a_bad_device_before_writing_anything(tmp_path: Path, runner):
    # `demo --device tpu` wrote and protected the example first and failed (or, with
    # --no-verify, exited 0) without a word about the device.
    from unlearnable.cli import main

    folder = tmp_path / "demo"
    result = runner.invoke(main, ["demo", "--no-verify", "--device", "tpu", "-o", str(folder)])
    assert result.exit_code == 2 and "device" in result.output
    assert not folder.exists()


# --------------------------------------------------------------------------- memory


def test_a_huge_file_with_an_image_extension_is_refused_unread(tmp_path: Path, runner, key_file):
    # A 6 GB video named .jpg was read whole by a worker; under a memory limit the run ended
    # with "internal error: MemoryError ... This is a bug" and no manifest, every time.
    import json

    from unlearnable.cli import main

    from .conftest import random_image

    source = tmp_path / "in"
    source.mkdir()
    random_image().save(source / "a.png")
    with open(source / "video.jpg", "wb") as handle:  # sparse: no disk space used
        handle.truncate(70 * 1024 * 1024)
    out = tmp_path / "out"
    args = ["protect", str(source), "-o", str(out), "--key", str(key_file), "--workers", "1"]
    result = runner.invoke(main, [*args, "-q", "--max-pixels", "1000"])
    assert result.exit_code == 1, result.output
    records = {
        r["path"]: r for r in json.loads((out / "unlearnable-manifest.json").read_text())["files"]
    }
    assert records["a.png"]["status"] == "ok"
    assert records["video.jpg"]["status"] == "error" and "not read" in records["video.jpg"]["error"]


def test_running_out_of_memory_on_one_file_fails_that_file_only(
    tmp_path: Path, runner, key_file, monkeypatch
):
    # A MemoryError while decoding one file escaped the runner: "internal error", no manifest.
    import json

    from unlearnable.cli import main
    from unlearnable.io import work

    from .conftest import make_labelled_folder

    source = make_labelled_folder(tmp_path / "in", per_class=2)
    real_decode = work.decode_image

    def decode(data, max_pixels):
        if data == (source / "cat" / "img1.png").read_bytes():
            raise MemoryError
        return real_decode(data, max_pixels)

    monkeypatch.setattr(work, "decode_image", decode)
    out = tmp_path / "out"
    args = ["protect", str(source), "-o", str(out), "--key", str(key_file), "--workers", "1"]
    result = runner.invoke(main, [*args, "-q"])
    assert result.exit_code == 1, result.output
    records = {
        r["path"]: r for r in json.loads((out / "unlearnable-manifest.json").read_text())["files"]
    }
    assert records["cat/img1.png"]["status"] == "error"
    assert "out of memory" in records["cat/img1.png"]["error"]
    assert sum(r["status"] == "ok" for r in records.values()) == 3


def test_verify_quiet_prints_no_table_and_a_file_as_run_folder_is_refused_first(
    tmp_path: Path, runner, key_file
):
    # `verify -q` printed the verdict table; `verify -o FILE` trained every victim and then
    # ended with "internal error: FileExistsError ... This is a bug".
    from unlearnable.cli import main

    from .conftest import make_labelled_folder

    clean = make_labelled_folder(tmp_path / "clean", per_class=2)
    test = make_labelled_folder(tmp_path / "test", per_class=1)
    protected = tmp_path / "protected"
    args = ["protect", str(clean), "-o", str(protected), "--key", str(key_file), "-q"]
    assert runner.invoke(main, [*args, "--workers", "1"]).exit_code == 0
    verify = ["verify", str(protected), "--clean-train", str(clean), "--test", str(test)]
    verify += ["--attacks", "erm", "--budget", "smoke", "--epochs", "1"]
    quiet = runner.invoke(main, [*verify, "-o", str(tmp_path / "run"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == "" and (tmp_path / "run" / "report.md").exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    refused = runner.invoke(main, [*verify, "-o", str(a_file)])
    assert refused.exit_code == 2 and "is a file" in refused.output
    assert a_file.read_text() == "mine"


def test_resume_with_another_input_folder_is_refused(tmp_path: Path, runner, key_file):
    # `--resume` with the wrong INPUT wrote its files beside the earlier run's, and the new
    # manifest no longer listed the earlier run's outputs that stayed in the folder.
    from unlearnable.cli import main

    from .conftest import make_labelled_folder, tree_digest

    first = make_labelled_folder(tmp_path / "first", classes=("a", "b"), per_class=2)
    other = make_labelled_folder(tmp_path / "other", classes=("c", "d"), per_class=2)
    out = tmp_path / "out"
    common = ["-o", str(out), "--key", str(key_file), "--workers", "1", "-q"]
    assert runner.invoke(main, ["protect", str(first), *common]).exit_code == 0
    before = tree_digest(out)
    refused = runner.invoke(main, ["protect", str(other), *common, "--resume"])
    assert refused.exit_code == 2 and "none of the 4 files" in refused.output
    assert tree_digest(out) == before
    again = runner.invoke(main, ["protect", str(first), *common, "--resume"])
    assert again.exit_code == 0, again.output


# --------------------------------------------------------------------------- keys


def test_a_key_written_as_hex_text_gets_a_hint_that_does_not_show_it(tmp_path: Path):
    # `openssl rand -hex 32 > key` gave only "this one has 65 bytes".
    from unlearnable.keys import KeyFileError, load_key_file

    secret = bytes(range(32)).hex()
    path = tmp_path / "key.txt"
    path.write_text(secret + "\n")
    with pytest.raises(KeyFileError, match="64 hex digits") as caught:
        load_key_file(path)
    assert secret not in str(caught.value) and secret[:16] not in str(caught.value)


def test_the_contact_sheet_is_named_with_a_warning_that_it_shows_originals(
    tmp_path: Path, runner, key_file
):
    # --preview wrote unlearnable-preview.png (originals, unprotected) into the folder a user
    # publishes, without saying where or what it holds.
    from unlearnable.cli import main

    from .conftest import make_labelled_folder

    source = make_labelled_folder(tmp_path / "in", per_class=1)
    out = tmp_path / "out"
    args = ["protect", str(source), "-o", str(out), "--key", str(key_file), "--workers", "1"]
    result = runner.invoke(main, [*args, "-q", "--preview", "2"])
    assert result.exit_code == 0, result.output
    assert "unlearnable-preview.png" in result.stderr and "originals" in result.stderr


def test_the_contact_sheet_leaves_out_files_that_are_gone(tmp_path: Path):
    # An input moved away between protection and the contact sheet ended the finished run
    # with "internal error: FileNotFoundError".
    from unlearnable.io.preview import write_preview
    from unlearnable.protect import RunOptions, protect_directory

    from .conftest import FIXED_KEY, make_labelled_folder

    source = make_labelled_folder(tmp_path / "in", per_class=2)
    run = protect_directory(source, tmp_path / "out", FIXED_KEY, "photo", RunOptions(workers=1))
    (source / run.succeeded[0].path).unlink()
    sheet = write_preview(source, run, 2)
    assert sheet is not None and sheet.exists()
