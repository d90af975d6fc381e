"""What an earlier run left in an output folder, for ``--resume``: the checks that refuse a
folder, the earlier run's identity and its finished records, and the metrics version a
resumed run keeps. Used by the folder runner (:mod:`.runner`) and the record runner
(:mod:`.formats.run`)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from ..errors import ProtectUsageError
from ..metrics import METRICS_VERSION, METRICS_VERSIONS
from .atomic import is_temporary_name
from .journal import JOURNAL_NAME, read_journal
from .lock import LOCK_NAME
from .manifest import (
    MANIFEST_NAME,
    FileRecord,
    Manifest,
    ManifestError,
    display_name,
    read_manifest,
)

RUN_NAMES = (MANIFEST_NAME, JOURNAL_NAME)
"""The files a run keeps in the output folder besides the images."""


def resumed_metrics_version(output_dir: Path, resume: bool) -> int:
    """The metrics version of a run: on ``resume``, the one the earlier run in ``output_dir``
    recorded (1 when it recorded none: it predates the versions), else the newest, so that
    every record of a folder is measured the same way."""
    earlier = earlier_run(output_dir) if resume else None
    if earlier is None:
        return METRICS_VERSION
    version = earlier.extra.get("metrics_version", 1)
    return version if version in METRICS_VERSIONS else METRICS_VERSION


def check_output_folder(output_dir: Path, resume: bool, run_files: Collection[str] = ()) -> None:
    """Refuse a non-empty output folder without ``resume``, and one with files but neither a
    manifest nor a journal with it. Top-level entries named in ``run_files`` (this run's own
    sidecar files), the run's lock file and temporary files of killed writes are ignored."""
    if not output_dir.exists():
        return
    try:
        names = [entry.name for entry in output_dir.iterdir()]
    except OSError as exc:
        raise ProtectUsageError(f"cannot read output folder {output_dir}: {exc.strerror}") from None
    occupied = any(
        n not in run_files and n != LOCK_NAME and not is_temporary_name(n) for n in names
    )
    if not occupied:
        return
    if not resume:
        raise ProtectUsageError(
            f"output folder {output_dir} is not empty; use --resume to continue a run there, "
            "or choose another folder"
        )
    if not any(name in names for name in RUN_NAMES):
        raise ProtectUsageError(
            f"--resume: {output_dir} has files but no {MANIFEST_NAME} or {JOURNAL_NAME}; "
            "refusing to write there"
        )


def previous_records(
    output_dir: Path, manifest: Manifest, resume: bool, run_files: Collection[str] = ()
) -> dict[str, FileRecord]:
    """The ``ok`` records of an earlier run in ``output_dir``: its manifest, then its journal
    (later records win)."""
    check_output_folder(output_dir, resume, run_files)
    if not resume:
        return {}
    found: dict[str, FileRecord] = {}
    for name in RUN_NAMES:
        path = output_dir / name
        if not path.exists():
            continue
        try:
            if name == MANIFEST_NAME:
                earlier = read_manifest(path)
                records = earlier.files
            else:
                earlier, records = read_journal(path)
        except ManifestError as exc:
            raise ProtectUsageError(
                f"--resume: {exc}; the run there cannot be continued: protect into a new "
                "output folder (or remove this one) to start again"
            ) from None
        if not manifest.same_protection(earlier):
            raise ProtectUsageError(
                "--resume: the output folder was made with a different key, method or "
                "parameters; use the same ones, or another output folder"
            )
        for record in records:
            found[record.path] = record
    return {path: r for path, r in found.items() if r.status == "ok"}


def check_same_input(previous: Collection[str], paths: Collection[str], output: object) -> None:
    """On a resume, refuse an input that has none of the files the earlier run in ``output``
    finished (``previous``; ``paths``: the files found now): the wrong INPUT folder, whose
    outputs would be mixed with the earlier run's, which the manifest would then no longer
    list."""
    if previous and not any(path in previous for path in paths):
        example = display_name(sorted(previous)[0])
        raise ProtectUsageError(
            f"--resume: none of the {len(previous)} files the earlier run in {output} protected "
            f"(e.g. {example}) is in this INPUT; give the input folder of that run, or another "
            "output folder"
        )


def earlier_run(output_dir: Path) -> Manifest | None:
    """The identity (method, parameters, ...) of the run recorded in ``output_dir``: its
    manifest, else its journal's header; None when there is none or it cannot be read."""
    for name in RUN_NAMES:
        path = output_dir / name
        if not path.exists():
            continue
        try:
            return read_manifest(path) if name == MANIFEST_NAME else read_journal(path)[0]
        except ManifestError:
            return None
    return None


__all__ = [
    "RUN_NAMES",
    "check_output_folder",
    "check_same_input",
    "earlier_run",
    "previous_records",
    "resumed_metrics_version",
]
