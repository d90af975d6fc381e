"""What the folder runner sends to its workers: per-file data travels with the chunks, not in the
context every worker gets before it starts (a large context made each worker's start wait for
the one before); each record is encoded once, for the journal and the manifest; the manifest
stays complete."""

from __future__ import annotations

import json
import pickle

import unlearnable as ul
from unlearnable.io.executors import SerialExecutor
from unlearnable.io.journal import JOURNAL_NAME, Journal, read_journal
from unlearnable.io.manifest import FileRecord, Manifest, record_text

from .conftest import FIXED_KEY, make_labelled_folder


class CapturingExecutor(SerialExecutor):
    """A serial executor that keeps the context and the chunks it was given."""

    def __init__(self) -> None:
        self.contexts: list = []
        self.chunks: list = []

    def run(self, function, context, items, lost):
        self.contexts.append(context)
        self.chunks.extend(items)
        return super().run(function, context, self.chunks, lost)


def test_output_names_travel_in_the_tasks_and_the_context_stays_small(tmp_path):
    source = make_labelled_folder(tmp_path / "in", per_class=40, size=(12, 10), fmt="JPEG")
    executor = CapturingExecutor()
    run = ul.protect_directory(
        source,
        tmp_path / "out",
        FIXED_KEY,
        "photo",
        ul.RunOptions(output=ul.OutputOptions(format="png"), executor=executor),
    )
    (context,) = executor.contexts
    tasks = [task for chunk in executor.chunks for task in chunk]
    assert len(tasks) == 80
    assert all(task.output == task.path[: -len(".jpg")] + ".png" for task in tasks)
    sent = pickle.dumps(context)  # what every worker gets before it starts: no file's name
    assert not any(task.output.encode() in sent or task.path.encode() in sent for task in tasks)
    small = ul.protect_directory(
        make_labelled_folder(tmp_path / "in2", per_class=1, size=(12, 10), fmt="JPEG"),
        tmp_path / "out2",
        FIXED_KEY,
        "photo",
        ul.RunOptions(
            output=ul.OutputOptions(format="png"), executor=(capture := CapturingExecutor())
        ),
    )
    assert not small.failed  # the context does not grow with the number of files
    assert abs(len(pickle.dumps(context)) - len(pickle.dumps(capture.contexts[0]))) < 256
    # the manifest is complete: every input once, ok, measured, with its .png output
    records = {r.path: r for r in run.manifest.files}
    assert sorted(records) == sorted(t.path for t in tasks)
    for record in records.values():
        assert record.status == "ok" and record.output_path.endswith(".png")
        assert (tmp_path / "out" / record.output_path).is_file()
        assert None not in (record.psnr, record.ssim, record.visual_cost, record.output_sha256)
    written = json.loads((tmp_path / "out" / "unlearnable-manifest.json").read_text())
    assert len(written["files"]) == 80 and written["summary"]["ok"] == 80
    assert not (tmp_path / "out" / JOURNAL_NAME).exists()


def test_a_kept_format_sends_no_output_names(tmp_path):
    source = make_labelled_folder(tmp_path / "in", per_class=2, size=(12, 10))
    executor = CapturingExecutor()
    run = ul.protect_directory(
        source, tmp_path / "out", FIXED_KEY, "photo", ul.RunOptions(executor=executor)
    )
    assert not run.failed
    assert all(task.output is None for chunk in executor.chunks for task in chunk)
    assert all(r.output_path == r.path for r in run.manifest.files)


def test_journal_lines_are_the_manifest_texts_of_the_records(tmp_path):
    records = [
        FileRecord(path="caf\udce9/x.png", status="ok", label="café", psnr=float("inf")),
        FileRecord(path="a\nb.png", status="error", label="cat", error="line\nbreak"),
    ]
    manifest = Manifest("photo", {}, "fp", "folders", ["cat", "café"])
    journal = Journal.start(tmp_path, manifest)
    texts = journal.append(records)
    journal.close()
    assert texts == [record_text(r) for r in records]
    lines = (tmp_path / JOURNAL_NAME).read_bytes().split(b"\n")
    assert lines[1:] == [t.encode("utf-8") for t in texts] + [b""]  # one line per record
    _, back = read_journal(tmp_path / JOURNAL_NAME)
    assert back == [FileRecord(path="caf\udce9/x.png", status="ok", label="café"), records[1]]
    manifest.files = records
    assert manifest.to_text(dict(zip(["caf\udce9/x.png", "a\nb.png"], texts, strict=True))) == (
        manifest.to_text()
    )
    assert json.loads(manifest.to_text())["files"][1]["error"] == "line\nbreak"
