"""``protect_dataset``: protect a folder of images, WebDataset shards or Parquet files.

The library function behind ``unlearnable protect``. The input's format is detected (or given
in :class:`~unlearnable.io.formats.FormatOptions`): a folder of images goes to
:func:`~unlearnable.protect.api.protect_directory`; shards and Parquet files go to the record
runner (:func:`unlearnable.io.formats.run.run_records`), container by container, with the same
methods, manifest, resume and engines (``RunOptions.executor``: the local process pool or
:class:`~unlearnable.engines.ray_engine.RayExecutor`).

Methods that cluster with a surrogate (``uc``, ``cluster-cuda``) read the records through a
:class:`~unlearnable.io.formats.source.RecordSource`: the surrogate's features are computed
over every record (on Ray actors with the Ray engine, one surrogate per actor), k-means runs on
the gathered features, and the records are then protected container by container as for the
other methods. Records in the same order as a folder's files (sorted manifest paths against
sorted relative paths) get the same clusters and the same protected pixels.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ..datasets import SINGLE_LABEL, LabelAssignment
from ..io.formats import DEFAULT_FORMATS, FormatOptions, detect_format, is_url, list_containers
from ..io.formats.records import NO_IMAGE_REASON, Record, record_path
from ..io.runner import ProtectRun, ProtectUsageError, check_folders, default_executor
from ..keys import SecretKey
from .api import DEFAULT_RUN, locked_output, protect_directory
from .feature_pass import StageProgress
from .methods import DEFAULT_METHOD, MethodContext, RunOptions, resolve_method


def protect_dataset(
    input_path: str | Path,
    output_dir: str | Path,
    key: SecretKey,
    method: Any = DEFAULT_METHOD,
    run: RunOptions = DEFAULT_RUN,
    formats: FormatOptions = DEFAULT_FORMATS,
    *,
    progress: Callable[[int, int], None] | None = None,
    stage_progress: StageProgress | None = None,
) -> ProtectRun:
    """Protect ``input_path`` (a folder of images, a folder of ``.tar`` shards or ``.parquet``
    files, or one such file; shards and Parquet files may be a URL read through fsspec, such as
    ``s3://bucket/shards/``) into ``output_dir`` (a folder; for shards and Parquet files also a
    URL written through fsspec, which then holds the journal and the manifest: see
    :mod:`unlearnable.io.formats.url_output`).

    ``method`` and ``run`` as for :func:`~unlearnable.protect.api.protect_directory`;
    ``formats`` says how records are found (format, Parquet columns, WebDataset label source).
    Shards and Parquet files come out under the same relative names with every other member or
    column unchanged; the manifest has one record per image (``SHARD.tar#MEMBER``,
    ``FILE.parquet#ROW``). Methods that cluster with a surrogate (``uc``, ``cluster-cuda``)
    work on records too (see the module docstring); with a URL output their feature cache and
    cluster state are kept in a temporary local folder, so a resume computes the clusters again
    (the same ones: same key, surrogate and records).
    """
    source: Path | str = input_path if is_url(input_path) else Path(input_path)
    target: Path | str = str(output_dir) if is_url(output_dir) else Path(output_dir)
    kind = detect_format(source, formats)
    if kind == "folder":
        if isinstance(target, str):
            raise ProtectUsageError(
                f"output {target} is a URL: a folder of images is written to a local folder; "
                "URL outputs take WebDataset shards and Parquet files"
            )
        assert isinstance(source, Path)  # a URL is never a folder of images
        return protect_directory(
            source, target, key, method, run, progress=progress, stage_progress=stage_progress
        )
    entry, config = resolve_method(method)
    exclude = _check_output(source, target, run.resume)
    root, containers = list_containers(source, kind, exclude=exclude)
    reader = _reader(root, containers, kind, formats)
    scanned, failed = _scan(root, containers, reader, stage_progress)
    files = sorted(p for p, r in scanned.items() if r.image is not None)
    skipped = {p: NO_IMAGE_REASON for p, r in scanned.items() if r.image is None}
    from ..io.formats.run import run_records
    from ..io.formats.source import RecordSource

    with locked_output(target) if isinstance(target, Path) else nullcontext():
        with _method_folder(target) as method_folder:
            context = MethodContext(
                RecordSource(root, reader),  # type: ignore[arg-type]
                method_folder,
                files,
                key,
                run,
                stage_progress,
                labeller=_labeller(scanned, files, reader),
            )
            job = entry.prepare(config, context)
        job = dataclasses.replace(job, problems={**failed, **job.problems}, skipped=skipped)
        return run_records(
            root,
            target,
            [name for name in containers if name not in failed],
            reader,
            job,
            key_fingerprint=key.fingerprint,
            options=run.output,
            resume=run.resume,
            executor=run.executor or default_executor(run.workers),
            progress=progress,
        )


def _check_output(source: Path | str, target: Path | str, resume: bool) -> Path | None:
    """Refuse an output that is the input or inside it (or, for a URL, whose protocol cannot
    be used, or that holds files without ``resume``); returns the local output folder to
    leave out when listing the input."""
    if isinstance(target, str):
        from ..io.formats.url_output import check_url_folder, check_url_output

        check_url_folder(check_url_output(target, source), resume)  # before any long work
        return None
    if isinstance(source, str):
        return target  # a URL input: a local output cannot overwrite it
    if source.is_file():
        if target.resolve() == source.parent.resolve():
            raise ProtectUsageError(
                f"output folder {target} holds the input {source.name}; choose a separate folder"
            )
    else:
        check_folders(source, target)
    return target


@contextmanager
def _method_folder(target: Path | str) -> Iterator[Path]:
    """The folder a method's ``prepare`` may write its caches to: the output folder, or for a
    URL output a temporary local folder (removed afterwards)."""
    if isinstance(target, Path):
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="unlearnable-clusters-") as folder:
        yield Path(folder)


def _reader(root: Path | str, containers: list[str], kind: str, formats: FormatOptions):
    from ..io.formats.run import ContainerReader

    if not containers:
        raise ProtectUsageError(f"no {kind} files found in {root}")
    if kind == "webdataset":
        label = formats.wds_label
        if label is None:
            from ..io.formats.webdataset import shard_has_cls

            label = "cls" if shard_has_cls(root, containers[0]) else "none"
        return ContainerReader(kind, label)
    from ..io.formats.parquet import resolve_label_column

    column = resolve_label_column(root, containers[0], formats.image_column, formats.label_column)
    return ContainerReader(kind, column, formats.image_column)


def _scan(
    root: Path | str, containers: list[str], reader, progress: StageProgress | None
) -> tuple[dict[str, Record], dict[str, str]]:
    """Every record of every container (by manifest path) and the containers that cannot be
    read (name -> message); ``progress("scanning", done, total)`` follows the containers."""
    from ..io.formats.parquet import ParquetError, scan_parquet
    from ..io.formats.webdataset import ShardError, scan_shard

    scanned: dict[str, Record] = {}
    failed: dict[str, str] = {}
    for done, name in enumerate(containers, start=1):
        if progress is not None:
            progress("scanning", done, len(containers))
        try:
            if reader.kind == "webdataset":
                records = scan_shard(root, name, reader.label_source or "none")
            else:
                records = scan_parquet(root, name, reader.image_column, reader.label_source)
        except (ShardError, ParquetError) as exc:
            failed[name] = str(exc)  # recorded under the name: no need to repeat it
            continue
        for record in records:
            scanned[record_path(name, record.name)] = record
    return scanned, failed


def _labeller(
    scanned: dict[str, Record], files: list[str], reader
) -> Callable[[str], LabelAssignment]:
    def assign(source: str) -> LabelAssignment:
        from ..io.formats.run import refuse_folder_labels

        refuse_folder_labels(source)
        if source == "single" or reader.label_source in (None, "none"):
            return LabelAssignment("single", {path: SINGLE_LABEL for path in files})
        assignment = LabelAssignment(f"{reader.kind}:{reader.label_source}")
        for path in files:
            record = scanned[path]
            if record.label is None:
                assignment.problems[path] = record.problem or "no label"
            else:
                assignment.labels[path] = record.label
        return assignment

    return assign
