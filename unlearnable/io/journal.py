"""The run journal: an append-only, fsynced log of finished file records, from the first file on.

``unlearnable-journal.jsonl`` in the output folder holds one JSON object per line: first a header
(``{"schema": "unlearnable.journal", "schema_version": 1, "manifest": {...}}`` with the
manifest's identity: method, parameters, key fingerprint, labels), then one
:class:`~unlearnable.io.manifest.FileRecord` per line (its text in the manifest,
:func:`~unlearnable.io.manifest.record_text`), in the order the files finished. The
header is written (and fsynced) before any output file, and every batch of records is appended
after its files were renamed into place, so whatever stops the process (kill -9, Ctrl-C, a full
disk) the journal lists every finished file, and ``--resume`` continues from there. Appends are
fsynced at most every :data:`FSYNC_SECONDS` and when the journal is closed, so a power cut loses
at most the last second of records: their files are then protected again on resume, with the
same result (a resume checks every kept output against its recorded hash). When the same path
appears twice, the later record wins; a line that cannot be read (cut short by a crash) is
ignored, which again only means its file is done again.

At the end of a run the records are folded into ``unlearnable-manifest.json`` and the journal is
removed; a resume folds the manifest and the journal of the earlier run into a fresh journal
before it starts.

Appending a line costs microseconds, whatever the number of files, where rewriting the whole
manifest JSON cost O(files) per checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

from .atomic import atomic_write_bytes, fsync_folder
from .manifest import FileRecord, Manifest, ManifestError, manifest_from_json, record_text

JOURNAL_NAME = "unlearnable-journal.jsonl"
JOURNAL_SCHEMA = "unlearnable.journal"
JOURNAL_VERSION = 1
FSYNC_SECONDS = 1.0


def journal_header(manifest: Manifest) -> bytes:
    """A journal's first line: the header naming ``manifest``'s identity."""
    header = {
        "schema": JOURNAL_SCHEMA,
        "schema_version": JOURNAL_VERSION,
        "manifest": manifest.identity_json(),
    }
    return (json.dumps(header, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def record_lines(texts: list[str]) -> bytes:
    """Journal lines of records given as their :func:`~unlearnable.io.manifest.record_text`."""
    return ("\n".join(texts) + "\n").encode("utf-8") if texts else b""


class Journal:
    """An open journal (see the module docstring). Use :meth:`start` to create one."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._synced = time.monotonic()
        self._dirty = False

    @classmethod
    def start(cls, folder: Path, manifest: Manifest, records: Iterable[FileRecord] = ()) -> Journal:
        """Write a new journal in ``folder`` (replacing any earlier one atomically) holding the
        header of ``manifest`` and ``records`` (the earlier run's, when resuming), fsynced;
        return it open for appending. ``OSError`` when it cannot be written."""
        path = folder / JOURNAL_NAME
        data = journal_header(manifest) + record_lines([record_text(r) for r in records])
        atomic_write_bytes(path, data, durable=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(path, fd)

    def append(self, records: Iterable[FileRecord]) -> list[str]:
        """Append ``records`` (fsynced within :data:`FSYNC_SECONDS`) and return their texts
        (:func:`~unlearnable.io.manifest.record_text`, for the manifest); ``OSError`` on a
        full disk or a write error."""
        texts = [record_text(record) for record in records]
        if not texts:
            return texts
        view = memoryview(record_lines(texts))
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._dirty = True
        if time.monotonic() - self._synced >= FSYNC_SECONDS:
            self.sync()
        return texts

    def sync(self) -> None:
        """fsync what was appended."""
        if self._dirty and self._fd >= 0:
            os.fsync(self._fd)
            self._dirty = False
        self._synced = time.monotonic()

    def close(self) -> None:
        """fsync (best effort) and close."""
        if self._fd >= 0:
            try:
                self.sync()
            except OSError:
                pass
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        """Close and delete the journal (after its records reached the manifest)."""
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        fsync_folder(self.path.parent)


def read_journal(path: Path) -> tuple[Manifest, list[FileRecord]]:
    """The manifest identity of a journal's header and its records (later records of a path
    win; a last line cut short is ignored). ``ManifestError`` when the header is unreadable."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read journal {path}: {exc.strerror or exc}") from None
    lines = raw.split(b"\n")
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ManifestError(f"{path} is not an unlearnable journal (bad header)") from None
    if not isinstance(header, dict) or header.get("schema") != JOURNAL_SCHEMA:
        raise ManifestError(f"{path} is not an unlearnable journal")
    if header.get("schema_version") != JOURNAL_VERSION:
        raise ManifestError(
            f"{path} has journal version {header.get('schema_version')}; "
            f"this tool reads {JOURNAL_VERSION}"
        )
    identity = manifest_from_json({**header.get("manifest", {}), "files": []}, path, files=False)
    records: dict[str, FileRecord] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            record = FileRecord.from_json(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError, ManifestError, TypeError):
            continue  # cut short (or zeroed) by a crash: the file is simply done again
        records[record.path] = record
    return identity, list(records.values())
