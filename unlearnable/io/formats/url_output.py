"""Shard and Parquet output to an fsspec URL (``s3://bucket/out/``, ``gs://...``, ``file://...``).

The record runner (:mod:`.run`) writes its containers, journal and manifest through an
:class:`UrlFolder` when the output is a URL, with the same promises as in a local folder as far
as the file system allows:

* **a container appears complete or not at all**: it is written under a temporary name in the
  same folder (``.NAME.PID.N.tmp``, the form :mod:`unlearnable.io.atomic` uses) and then moved
  to its name. On a POSIX file system (``file://``, a mounted share) the move is a rename; on an
  object store (S3, GCS, Azure) it is a server-side copy then a delete: the final object is
  created whole by one request, so a reader never sees part of it, but a run killed between
  the two steps leaves the temporary object behind (removed by ``--resume``, as local temporary
  files are) and the copy costs a second write of the bytes;
* **the journal lives in the URL folder**: ``unlearnable-journal.jsonl`` (its header and the
  earlier run's records, written once at the start, atomically as above) plus numbered parts
  ``unlearnable-journal.jsonl.parts/NNNNNNNN.jsonl``, each a batch of finished records written
  as one whole object (object stores cannot append), at most every :data:`FLUSH_SECONDS` and
  when the run stops. A driver killed without warning (kill -9, a lost machine) loses at most
  the records of that last interval; their containers are then done again by ``--resume``,
  with the same bytes. Records are journalled only after their container was written;
* **the manifest**: ``unlearnable-manifest.json`` in the URL folder, written (temporary name,
  then move) before the journal is deleted, so the folder always holds one of them.

``--resume`` against a URL reads the manifest and the journal there, exactly as in a local
folder. Two runs must not write to the same URL at the same time (nothing locks an object
store).

A file system that lives in one process (``memory://``, for tests) cannot be reached by worker
processes or Ray tasks: there the driver reads the input containers and sends their bytes with
the tasks, and the workers send the protected containers back for the driver to write.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..atomic import is_temporary_name
from ..executors import Executor
from ..journal import JOURNAL_NAME, journal_header, read_journal, record_lines
from ..manifest import (
    MANIFEST_NAME,
    FileRecord,
    Manifest,
    ManifestError,
    manifest_from_json,
    record_text,
)
from ..runner import ProtectRun, ProtectUsageError, RunBook, RunStorageError, run_and_record
from . import FormatUsageError, is_url, url_filesystem

JOURNAL_PARTS = f"{JOURNAL_NAME}.parts"
"""The folder (below the output URL) of the journal's parts."""
FLUSH_SECONDS = 1.0
"""Journalled records are written out as a part at most this often (and when the run stops)."""
PROCESS_LOCAL_PROTOCOLS = frozenset({"memory"})
"""File systems that live in one process: other processes cannot see their files."""

_COUNTER = itertools.count()


class UrlFolder:
    """A folder at an fsspec URL; picklable (only the URL travels: each process opens its own
    file system, with credentials as the protocol's package finds them)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _fs(self) -> tuple[Any, str]:
        fs, base = url_filesystem(self.url)
        return fs, base.rstrip("/")

    @property
    def process_local(self) -> bool:
        """Whether the file system lives in this process only (``memory://``)."""
        return is_process_local(self.url)

    def write(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name`` (relative POSIX path): a temporary name, then a move (see
        the module docstring). ``OSError`` when it cannot be written (the temporary is removed
        when it can be)."""
        fs, base = self._fs()
        target = f"{base}/{name}"
        parent, _, leaf = target.rpartition("/")
        temp = f"{parent}/.{leaf}.{os.getpid()}.{next(_COUNTER)}.tmp"
        if "file" in _protocols(fs):  # object stores have no folders to make
            fs.makedirs(parent, exist_ok=True)
        try:
            fs.pipe_file(temp, data)
            fs.mv(temp, target)
        except BaseException:
            try:
                fs.rm_file(temp)
            except Exception:  # noqa: BLE001 - best effort; a leftover is removed on resume
                pass
            raise

    def read(self, name: str) -> bytes:
        """The bytes of ``name`` (``OSError``, e.g. ``FileNotFoundError``, when unreadable)."""
        fs, base = self._fs()
        return fs.cat_file(f"{base}/{name}")

    def names(self, folder: str = "") -> list[str]:
        """The names directly in ``folder`` (relative; "" for the top), sorted; [] when none."""
        fs, base = self._fs()
        where = f"{base}/{folder}".rstrip("/")
        try:
            found = fs.ls(where, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(path).rstrip("/").rsplit("/", 1)[-1] for path in found)

    def remove(self, name: str) -> None:
        """Delete ``name`` (a file, or a folder with what it holds); nothing when absent."""
        fs, base = self._fs()
        try:
            fs.rm(f"{base}/{name}", recursive=True)
        except FileNotFoundError:
            return

    def remove_temporaries(self) -> None:
        """Delete the temporary objects of killed writes below the folder."""
        fs, base = self._fs()
        try:
            found = fs.find(base)
        except FileNotFoundError:
            return
        for path in found:
            if is_temporary_name(str(path).rsplit("/", 1)[-1]):
                try:
                    fs.rm_file(path)
                except FileNotFoundError:
                    pass


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def is_process_local(root: object) -> bool:
    """Whether ``root`` is a URL of a file system that lives in this process (``memory://``)."""
    if not is_url(root):
        return False
    fs, _ = url_filesystem(str(root))
    return bool(PROCESS_LOCAL_PROTOCOLS.intersection(_protocols(fs)))


def check_url_output(url: str, source: Path | str) -> UrlFolder:
    """The output folder at ``url``; :class:`FormatUsageError` when its protocol is unknown or
    its package (``s3fs``, ``gcsfs``, ...) is not installed, :class:`ProtectUsageError` when it
    is the input or inside it."""
    import fsspec

    try:
        fs, base = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise FormatUsageError(f"cannot write to {url}: {exc}") from None
    folder = UrlFolder(url)
    inside = False
    if "file" in _protocols(fs) and isinstance(source, Path):
        here, there = source.resolve(), Path(base).resolve()
        inside = there == here or here in there.parents
    elif is_url(source):
        inside = f"{folder.url}/".startswith(f"{str(source).rstrip('/')}/")
    if inside:
        raise ProtectUsageError(f"output {url} is the input or inside it; choose a separate folder")
    return folder


class UrlJournal:
    """The run's journal in the URL folder (see the module docstring); it fits what
    :func:`~unlearnable.io.runner.run_and_record` needs of a journal (``append``, ``close``,
    ``remove``). ``run_and_record`` writes the manifest into the local ``staging`` folder and
    then removes the journal: :meth:`remove` first publishes that manifest to the URL folder,
    then deletes the journal, so the folder always holds the one or the other."""

    def __init__(self, folder: UrlFolder, staging: Path) -> None:
        self.folder = folder
        self.staging = staging
        self._pending: list[bytes] = []
        self._part = 0
        self._flushed = time.monotonic()

    @classmethod
    def start(
        cls, folder: UrlFolder, staging: Path, manifest: Manifest, records: Iterable[FileRecord]
    ) -> UrlJournal:
        """Write the journal's header (and the earlier run's ``records``) and delete the parts of
        an earlier journal (their records are in ``records``); ``OSError`` when it fails."""
        lines = record_lines([record_text(r) for r in records])
        folder.write(JOURNAL_NAME, journal_header(manifest) + lines)
        folder.remove(JOURNAL_PARTS)
        return cls(folder, staging)

    def append(self, records: Iterable[FileRecord]) -> list[str]:
        """Queue ``records`` for the next part (written within :data:`FLUSH_SECONDS`) and
        return their texts, as :meth:`Journal.append <unlearnable.io.journal.Journal.append>`."""
        texts = [record_text(record) for record in records]
        if texts:
            self._pending.append(record_lines(texts))
        if time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()
        return texts

    def flush(self) -> None:
        """Write the records appended since the last part as a new part (``OSError``)."""
        self._flushed = time.monotonic()
        if not self._pending:
            return
        self.folder.write(f"{JOURNAL_PARTS}/{self._part:08d}.jsonl", b"".join(self._pending))
        self._pending = []
        self._part += 1

    def close(self) -> None:
        """Flush (best effort: records not written are done again on resume)."""
        try:
            self.flush()
        except OSError:
            pass

    def remove(self) -> None:
        """Publish the staged manifest, then delete the journal (``OSError`` when either fails;
        the journal is then kept)."""
        self.close()
        self.folder.write(MANIFEST_NAME, (self.staging / MANIFEST_NAME).read_bytes())
        self.folder.remove(JOURNAL_NAME)
        self.folder.remove(JOURNAL_PARTS)


def previous_url_records(
    folder: UrlFolder, manifest: Manifest, resume: bool, run_files: Sequence[str] = ()
) -> dict[str, FileRecord]:
    """The ``ok`` records of an earlier run at the URL (its manifest, then its journal; later
    records win), with the checks of a local folder: a folder that is not empty needs
    ``resume``, and then a manifest or a journal made with the same protection."""
    names = check_url_folder(folder, resume, run_files)
    if not names:
        return {}
    found: dict[str, FileRecord] = {}
    for earlier, records in _earlier_runs(folder, names):
        if not manifest.same_protection(earlier):
            raise ProtectUsageError(
                "--resume: the output folder was made with a different key, method or "
                "parameters; use the same ones, or another output folder"
            )
        if _assignments(earlier) != _assignments(manifest):
            raise ProtectUsageError(
                f"--resume: the clusters differ from those of the earlier run at {folder.url} (the "
                "records or the library versions changed); use a new output folder"
            )
        for record in records:
            found[record.path] = record
    return {path: r for path, r in found.items() if r.status == "ok"}


def _assignments(manifest: Manifest) -> str | None:
    """The digest of a run's cluster assignment (methods with clusters), else None."""
    clustering = manifest.extra.get("clustering")
    return clustering.get("assignments_sha256") if isinstance(clustering, dict) else None


def check_url_folder(folder: UrlFolder, resume: bool, run_files: Sequence[str] = ()) -> list[str]:
    """The names at the top of the output folder when it holds an earlier run ([] when it is
    empty); :class:`ProtectUsageError` when it holds files and ``resume`` was not given, or
    files but neither a manifest nor a journal."""
    url = folder.url
    try:
        names = folder.names()
    except OSError as exc:
        raise ProtectUsageError(f"cannot read output folder {url}: {exc}") from None
    if not [n for n in names if n not in run_files and not is_temporary_name(n)]:
        return []
    if not resume:
        raise ProtectUsageError(
            f"output folder {url} is not empty; use --resume to continue a run there, "
            "or choose another folder"
        )
    if MANIFEST_NAME not in names and JOURNAL_NAME not in names:
        raise ProtectUsageError(
            f"--resume: {url} has files but no {MANIFEST_NAME} or {JOURNAL_NAME}; "
            "refusing to write there"
        )
    return names


def _earlier_runs(folder: UrlFolder, names: list[str]) -> Iterator[tuple[Manifest, list]]:
    url = folder.url
    try:
        if MANIFEST_NAME in names:
            where = f"{url}/{MANIFEST_NAME}"
            try:
                data = json.loads(folder.read(MANIFEST_NAME).decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ManifestError(f"cannot read manifest {where}: {exc}") from None
            earlier = manifest_from_json(data, where)
            yield earlier, earlier.files
        if JOURNAL_NAME in names:
            raw = folder.read(JOURNAL_NAME)
            for part in folder.names(JOURNAL_PARTS):
                raw += b"\n" + folder.read(f"{JOURNAL_PARTS}/{part}")
            yield _parse_journal(raw, f"{url}/{JOURNAL_NAME}")
    except ManifestError as exc:
        raise ProtectUsageError(f"--resume: {exc}") from None
    except OSError as exc:
        raise ProtectUsageError(f"--resume: cannot read the earlier run at {url}: {exc}") from None


def _parse_journal(raw: bytes, where: str) -> tuple[Manifest, list[FileRecord]]:
    """A journal's bytes, read as a local journal is
    (:func:`unlearnable.io.journal.read_journal`)."""
    with tempfile.TemporaryDirectory(prefix="unlearnable-journal-") as folder:
        path = Path(folder) / JOURNAL_NAME
        path.write_bytes(raw)
        try:
            return read_journal(path)
        except ManifestError as exc:
            raise ManifestError(str(exc).replace(str(path), where)) from None


class DriverWrites:
    """An executor that runs ``inner`` and writes each result's ``container`` bytes to
    ``folder`` in this process before passing the result on (for a process-local file system;
    see the module docstring). A container that cannot be written turns its ``ok`` records
    into errors, as a worker's failed write does."""

    def __init__(self, inner: Executor, folder: UrlFolder, failed: Callable[[Any, str], Any]):
        self.inner = inner
        self.folder = folder
        self.failed = failed

    def run(self, function, context, items, lost):
        runs = self.inner.run(function, context, items, lost)
        try:
            for result in runs:
                name, data = getattr(result, "container", None) or (None, None)
                if name is not None:
                    result.container = None
                    try:
                        self.folder.write(name, data)
                    except OSError as exc:
                        result = self.failed(result, f"cannot write output {name}: {exc}")
                yield result
        finally:
            close = getattr(runs, "close", None)
            if close is not None:
                close()


def run_to_url(
    folder: UrlFolder,
    executor: Executor,
    function: Callable[[Any, Any], Any],
    context: Any,
    items: list[Any],
    lost: Callable[[Any, str], Any],
    book: tuple[Manifest, dict[str, FileRecord], dict[str, FileRecord]],
    *,
    total: int,
    progress: Callable[[int, int], None] | None = None,
) -> ProtectRun:
    """:func:`~unlearnable.io.runner.run_and_record` with the journal and the manifest in the
    URL folder (``book``: the manifest, the records so far and the earlier run's ``ok``
    records). Raises :class:`RunStorageError` (naming the URL) when the folder stops taking
    the run's records."""
    manifest, records, previous = book
    url = folder.url
    with tempfile.TemporaryDirectory(prefix="unlearnable-run-") as staging_name:
        staging = Path(staging_name)
        try:
            folder.remove_temporaries()
            journal = UrlJournal.start(folder, staging, manifest, previous.values())
        except OSError as exc:
            raise RunStorageError(
                f"cannot write to the output folder {url}: {exc}; nothing was protected"
            ) from None
        try:
            run = run_and_record(
                executor,
                function,
                context,
                items,
                lost,
                RunBook(manifest, records, journal, staging),  # type: ignore[arg-type]
                total=total,
                progress=progress,
            )
        except RunStorageError as exc:
            moved = _at_url(exc.run, url) if exc.run is not None else None
            raise RunStorageError(str(exc).replace(str(staging), url), moved) from None
        except OSError as exc:  # publishing the manifest (UrlJournal.remove)
            run = ProtectRun(manifest, staging, staging / MANIFEST_NAME, False)
            raise RunStorageError(
                f"cannot write {MANIFEST_NAME} to {url}: {exc}. The outputs and the journal "
                "are kept; rerun the same command with --resume to finish.",
                _at_url(run, url),
            ) from None
    return _at_url(run, url)


def _at_url(run: ProtectRun, url: str) -> ProtectRun:
    """``run`` with its folder and manifest named by the URL (they are printed as text)."""
    return dataclasses.replace(
        run,
        output_dir=url,  # type: ignore[arg-type]
        manifest_path=f"{url}/{MANIFEST_NAME}",  # type: ignore[arg-type]
    )
