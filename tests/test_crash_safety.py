"""A protect run stopped at any moment resumes to the files and records of an uninterrupted run.

The interruptions are real: the CLI runs in a subprocess that is killed (SIGKILL, SIGINT,
SIGTERM) at chosen points, found through a small wrapper that counts chunks and writes. Disk
full and read-only folders are injected errors (``OSError`` with ``ENOSPC`` / ``EROFS``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from unlearnable.cli import main
from unlearnable.io import journal as journal_module
from unlearnable.io import work as work_module
from unlearnable.io.atomic import is_temporary_name, temporary_name
from unlearnable.io.journal import JOURNAL_NAME, read_journal
from unlearnable.io.manifest import MANIFEST_NAME, Manifest

from .conftest import make_labelled_folder, tree_digest

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI with 2 files per chunk and, with --workers 1, sends itself SIGNAL at a point
# ("none:0": never): "chunk:N" before the N-th chunk (0: before any file), "written:N" after
# the N-th output file is in place but before its record reached the journal, "renaming:N"
# between writing the N-th temporary file and renaming it. With worker processes, "submit:N"
# sends SIGNAL to the whole process group (as a terminal's Ctrl-C does) while the N-th chunk is
# handed to the pool, that is while the pool starts its workers, and a thread idles beside the
# main one (as a progress bar's does; the kernel may deliver the signal to it); "worker:0" sends
# it from each worker as it starts (before the pool's initializer runs there). The environment
# variable CHUNK_SECONDS slows every chunk by that many seconds, in the workers too (test only).
WRAPPER = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from concurrent.futures import ProcessPoolExecutor
    import unlearnable.io.runner as runner
    import unlearnable.io.work as work

    counts = {"chunk": 0, "written": 0, "renaming": 0, "submit": 0}
    CHUNK_SECONDS = float(os.environ.get("CHUNK_SECONDS", "0"))

    def slow_chunk(context, chunk):  # module level: the spawned workers find it by name
        time.sleep(CHUNK_SECONDS)
        return work.process_chunk(context, chunk)

    if __name__ == "__mp_main__" and sys.argv[1] == "worker:0":  # a worker, before it starts
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))  # its own first: a worker that does
        os.killpg(0, getattr(signal, sys.argv[2]))  # not hold it stops here with a traceback

    def submit(self, *args, **kwargs):
        if counts["submit"] == number:
            os.killpg(0, sig)  # the signal is in flight while the pool starts
        counts["submit"] += 1
        return real_submit(self, *args, **kwargs)

    def hit(kind):
        if kind == point:
            if counts[kind] == number:
                os.kill(os.getpid(), sig)
                if sig != signal.SIGKILL:
                    import time; time.sleep(30)  # the handler raises in here
            counts[kind] += 1

    def process_chunk(context, chunk):
        hit("chunk")
        return real_chunk(context, chunk)

    def atomic_write_bytes(path, data, *args, **kwargs):
        real_replace = os.replace
        def replace(src, dst):
            hit("renaming")
            real_replace(src, dst)
        os.replace = replace
        try:
            real_write(path, data, *args, **kwargs)
        finally:
            os.replace = real_replace
        hit("written")

    if __name__ == "__main__":  # spawned workers import this file too
        # a command started from a terminal has Ctrl-C's default handler; one started under
        # `nohup ... &` (a CI script, say) inherits SIGINT ignored, and would not stop
        signal.signal(signal.SIGINT, signal.default_int_handler)
        point, number = sys.argv[1].split(":")
        number, sig = int(number), getattr(signal, sys.argv[2])
        runner.CHUNK_FILES = 2
        if CHUNK_SECONDS:
            runner.process_chunk = slow_chunk
        if point == "submit":
            real_submit, ProcessPoolExecutor.submit = ProcessPoolExecutor.submit, submit
            threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
        elif point != "none":  # the hooks run in this process: --workers 1
            real_chunk, runner.process_chunk = runner.process_chunk, process_chunk
            real_write, work.atomic_write_bytes = work.atomic_write_bytes, atomic_write_bytes
        from unlearnable.cli import main
        main(sys.argv[3:], prog_name="unlearnable")
    """
)


def _cli(*args) -> list[str]:
    return [str(a) for a in args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An input folder, a key, and the output of an uninterrupted run."""
    from click.testing import CliRunner

    from unlearnable.keys import write_key_file

    root = tmp_path_factory.mktemp("crash")
    source = make_labelled_folder(root / "in", per_class=5, size=(20, 16))
    key = root / "secret.bin"
    write_key_file(key)
    out = root / "reference"
    result = CliRunner().invoke(main, _cli("protect", source, "-o", out, "--key", key, "-q"))
    assert result.exit_code == 0, result.output
    return source, key, out


def _records(folder: Path) -> list[dict]:
    return json.loads((folder / MANIFEST_NAME).read_text())["files"]


def _outputs(folder: Path) -> dict[str, str]:
    digests = tree_digest(folder)
    digests.pop(MANIFEST_NAME, None)
    return digests


def _run_wrapper(tmp_path: Path, point: str, sig: str, source, key, out, *extra):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    command = [sys.executable, str(script), point, sig, "protect", str(source), "-o", str(out)]
    command += ["--key", str(key), "-q", "--workers", "1", *map(str, extra)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def _resume(source, key, out):
    from click.testing import CliRunner

    return CliRunner().invoke(
        main, _cli("protect", source, "-o", out, "--key", key, "--resume", "--json")
    )


def _assert_same_as_reference(out: Path, reference_out: Path) -> None:
    assert _outputs(out) == _outputs(reference_out)
    assert _records(out) == _records(reference_out)
    assert not (out / JOURNAL_NAME).exists()


@pytest.mark.parametrize(
    ("point", "sig"),
    [
        ("chunk:0", "SIGKILL"),  # journal started, no file written yet
        ("written:0", "SIGKILL"),  # the first output exists, its record is not journaled
        ("renaming:3", "SIGKILL"),  # a temporary file is left behind
        ("chunk:2", "SIGKILL"),  # two chunks journaled
        ("written:4", "SIGINT"),  # Ctrl-C
        ("chunk:3", "SIGTERM"),
    ],
)
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, reference, point, sig):
    source, key, reference_out = reference
    out = tmp_path / "out"
    stopped = _run_wrapper(tmp_path, point, sig, source, key, out)
    if sig == "SIGKILL":
        assert stopped.returncode == -signal.SIGKILL
    else:
        assert stopped.returncode == 130, stopped.stderr
        assert "Traceback" not in stopped.stderr
        lines = [line for line in stopped.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "--resume" in lines[0], stopped.stderr
    assert (out / JOURNAL_NAME).exists() and not (out / MANIFEST_NAME).exists()
    if point.startswith("renaming"):
        assert any(is_temporary_name(p.name) for p in out.rglob("*"))
    again = _resume(source, key, out)
    assert again.exit_code == 0, again.output
    assert not any(is_temporary_name(p.name) for p in out.rglob("*"))
    _assert_same_as_reference(out, reference_out)


def _stop_with_workers(tmp_path: Path, source, key, out, point: str, sig: str) -> tuple[int, str]:
    """Run with 2 worker processes and slow chunks; send ``sig`` to the whole process group at
    ``point`` ("submit:N" or "worker:0" from inside, "journal": SIGINT from here once the
    journal exists)."""
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    hook = "none:0" if point == "journal" else point
    command = [sys.executable, str(script), hook, sig, "protect", str(source)]
    command += ["-o", str(out), "--key", str(key), "-q", "--workers", "2"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # its own process group, as a terminal gives a command
        env={**os.environ, "CHUNK_SECONDS": "5"},  # 5 chunks: the run outlasts the signal
    )
    if point == "journal":
        deadline = time.monotonic() + 60
        while not (out / JOURNAL_NAME).exists() and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.mark.parametrize(
    ("point", "sig"),
    [
        ("journal", "SIGINT"),  # the journal is written; the pool starts now or soon
        ("submit:0", "SIGINT"),  # while the pool is being started, before any worker exists
        ("submit:1", "SIGINT"),  # while the pool is being started, its first worker starting
        ("worker:0", "SIGINT"),  # while a worker imports, before it was told to ignore Ctrl-C
        ("submit:1", "SIGTERM"),  # SIGTERM stops the run as Ctrl-C does
    ],
)
def test_ctrl_c_with_worker_processes_stops_quietly_and_resumes(tmp_path, reference, point, sig):
    """SIGINT to the whole process group (as a terminal sends it), workers included, at any
    moment of the pool's life: exit 130, one line, and a folder that resumes."""
    source, key, reference_out = reference
    out = tmp_path / "out"
    returncode, stderr = _stop_with_workers(tmp_path, source, key, out, point, sig)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--resume" in lines[0], stderr
    assert (out / JOURNAL_NAME).exists() and not (out / MANIFEST_NAME).exists()
    again = _resume(source, key, out)
    assert again.exit_code == 0, again.output
    _assert_same_as_reference(out, reference_out)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_on_the_journal_is_one_message_and_resumable(
    tmp_path, reference, runner, monkeypatch
):
    source, key, reference_out = reference
    out = tmp_path / "out"
    calls = {"n": 0}
    real_append = journal_module.Journal.append

    def append(self, records):
        calls["n"] += 1
        if calls["n"] > 1:
            _enospc()
        return real_append(self, records)

    monkeypatch.setattr(journal_module.Journal, "append", append)
    monkeypatch.setattr("unlearnable.io.runner.CHUNK_FILES", 2)
    result = runner.invoke(main, _cli("protect", source, "-o", out, "--key", key, "--workers", 1))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "No space left on device" in result.output and "--resume" in result.output
    _, journaled = read_journal(out / JOURNAL_NAME)
    assert len(journaled) == 2  # the first chunk's records are kept
    monkeypatch.undo()
    again = _resume(source, key, out)
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["resumed"] >= 2
    _assert_same_as_reference(out, reference_out)


def test_disk_full_on_image_writes_lists_the_failures(tmp_path, reference, runner, monkeypatch):
    source, key, reference_out = reference
    out = tmp_path / "out"
    real_write = work_module.atomic_write_bytes

    def write(path, data, *args, **kwargs):
        if Path(path).name == "img3.png":
            _enospc()
        real_write(path, data, *args, **kwargs)

    monkeypatch.setattr(work_module, "atomic_write_bytes", write)
    result = runner.invoke(main, _cli("protect", source, "-o", out, "--key", key, "--workers", 1))
    assert result.exit_code == 1
    assert result.output.count("No space left on device") == 2  # cat/img3.png, dog/img3.png
    records = {r["path"]: r for r in _records(out)}
    assert records["cat/img3.png"]["status"] == "error"
    monkeypatch.undo()
    again = _resume(source, key, out)
    assert again.exit_code == 0 and json.loads(again.output)["resumed"] == 8
    _assert_same_as_reference(out, reference_out)


def test_manifest_write_error_keeps_the_journal(tmp_path, reference, runner, monkeypatch):
    source, key, reference_out = reference
    out = tmp_path / "out"
    monkeypatch.setattr(Manifest, "write", _enospc)
    result = runner.invoke(main, _cli("protect", source, "-o", out, "--key", key, "--workers", 1))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert MANIFEST_NAME in result.output and "--resume" in result.output
    assert len(read_journal(out / JOURNAL_NAME)[1]) == 10
    monkeypatch.undo()
    again = _resume(source, key, out)
    assert again.exit_code == 0 and json.loads(again.output)["resumed"] == 10
    _assert_same_as_reference(out, reference_out)


def test_read_only_output_folder_is_one_message(tmp_path, reference, runner, monkeypatch):
    source, key, _ = reference
    out = tmp_path / "out"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(journal_module, "atomic_write_bytes", read_only)
    result = runner.invoke(main, _cli("protect", source, "-o", out, "--key", key))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Read-only file system" in result.output
    assert not any(p.is_file() for p in out.rglob("*"))


def test_stale_temporary_files_are_removed_on_resume(tmp_path, reference):
    source, key, reference_out = reference
    out = tmp_path / "out"
    assert _resume(source, key, out).exit_code == 0
    stale = out / "cat" / temporary_name(out / "cat" / "img0.png")
    stale.write_bytes(b"half a file")
    again = _resume(source, key, out)
    assert again.exit_code == 0 and not stale.exists()
    _assert_same_as_reference(out, reference_out)


def test_journal_ignores_a_last_line_cut_short(tmp_path, reference):
    source, key, reference_out = reference
    out = tmp_path / "out"
    stopped = _run_wrapper(tmp_path, "chunk:3", "SIGKILL", source, key, out)
    assert stopped.returncode == -signal.SIGKILL
    with open(out / JOURNAL_NAME, "ab") as handle:
        handle.write(b'{"path": "cat/img4.png", "sta')
    _, records = read_journal(out / JOURNAL_NAME)
    assert len(records) == 6
    assert _resume(source, key, out).exit_code == 0
    _assert_same_as_reference(out, reference_out)


def test_resume_refuses_a_journal_of_another_key(tmp_path, reference, runner):
    source, key, _ = reference
    out = tmp_path / "out"
    _run_wrapper(tmp_path, "chunk:2", "SIGKILL", source, key, out)
    other = tmp_path / "other.bin"
    assert runner.invoke(main, ["keygen", str(other)]).exit_code == 0
    result = runner.invoke(main, _cli("protect", source, "-o", out, "--key", other, "--resume"))
    assert result.exit_code == 2 and "different key" in result.output
