"""The record runner: protect WebDataset shards or Parquet files container by container.

The unit of work is one container (:mod:`unlearnable.io.formats`). A worker reads it, protects
its images with the same per-record code as a folder's files
(:func:`unlearnable.io.work.process_chunk` on in-memory payloads, so equal images, labels, key
and settings give bit-identical protected images and equal manifest records whatever the input
format or engine), rebuilds the container with every other member or column unchanged, and
writes it atomically under the same relative name. The driver appends the container's records
to the run's journal only after that, so:

* a run stopped at any moment resumes per container: a container whose output exists and whose
  every record matches an ``ok`` record (input and output image hashes) is kept, any other is
  done again (with the same result);
* a worker that Ray retries writes the same container again (atomically, the same bytes of
  images) and the driver receives one result per container: no record is lost or duplicated.

The output folder may also be an fsspec URL (``s3://bucket/out/``): containers, journal and
manifest are then written there (:mod:`.url_output`, which says what "atomic" means on an
object store).

Runs on any :class:`~unlearnable.io.executors.Executor`: the local process pool or the Ray
engine (:mod:`unlearnable.engines.ray_engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UsageError
from ...metrics import METRICS_VERSION
from ..executors import Executor
from ..hashing import sha256_bytes
from ..images import EXTENSION_FOR_FORMAT, OUTPUT_FORMATS
from ..manifest import FileRecord
from ..resume import check_same_input, previous_records, resumed_metrics_version
from ..runner import (
    FolderJob,
    ProtectRun,
    RunBook,
    _check_class_names,
    _start_journal,
    default_executor,
    run_and_record,
    run_manifest,
)
from ..work import DEFAULT_OUTPUT, ChunkResult, OutputOptions, Task, WorkContext, process_chunk
from . import is_url, read_container, write_container
from .records import RECORD_SEPARATOR, ParsedContainer, Record, record_path


@dataclass(frozen=True)
class ContainerReader:
    """How to parse a container of one format: ``kind`` (``webdataset`` or ``parquet``) and the
    resolved label source (``cls`` / ``json:FIELD`` / ``none``, or a Parquet label column)."""

    kind: str
    label_source: str | None
    image_column: str = "image"

    def parse(self, data: bytes) -> ParsedContainer:
        if self.kind == "webdataset":
            from .webdataset import read_shard

            return read_shard(data, self.label_source or "none")
        from .parquet import read_parquet

        return read_parquet(data, self.image_column, self.label_source)

    def read_errors(self) -> tuple[type[Exception], ...]:
        if self.kind == "webdataset":
            from .webdataset import ShardError

            return (ShardError,)
        from .parquet import ParquetError

        return (ParquetError,)


@dataclass
class ContainerTask:
    """One container: its relative path, each protectable record's label (by manifest path), the
    earlier run's ``ok`` records of it (resume), and each record's cluster id when there are
    clusters."""

    name: str
    labels: dict[str, str]
    previous: dict[str, FileRecord] = field(default_factory=dict)
    clusters: dict[str, int] = field(default_factory=dict)
    input_data: bytes | None = None
    """The container's bytes, sent by the driver when workers cannot read the input
    (a process-local file system such as ``memory://``); None: the worker reads it."""
    output_data: bytes | None = None
    """The earlier run's output container, sent likewise (resume); None: read by the worker."""


@dataclass
class ContainerResult(ChunkResult):
    """A container's records; ``container`` is ``(name, bytes)`` of the protected container when
    the driver writes it (``RecordContext.driver_writes``), else None."""

    container: tuple[str, bytes] | None = None


@dataclass
class RecordContext:
    """What every container needs; sent once to each worker."""

    input_root: Path | str  # a folder or a URL (read through fsspec)
    output_dir: Path | str  # a folder or a URL (written through fsspec)
    reader: ContainerReader
    protector: object
    options: OutputOptions
    class_index: dict[str, int]
    driver_writes: bool = False  # return each container to the driver instead of writing it
    metrics_version: int = METRICS_VERSION  # a resumed run keeps the earlier run's


def output_extension(options: OutputOptions) -> str | None:
    """The extension of every output image (``.png``), or None when each keeps its format."""
    if options.format == "keep":
        return None
    return EXTENSION_FOR_FORMAT[OUTPUT_FORMATS[options.format]]


def process_container(context: RecordContext, item: ContainerTask) -> ChunkResult:
    """Protect one container (see the module docstring)."""
    try:
        data = item.input_data
        if data is None:
            data = read_container(context.input_root, item.name)
    except OSError as exc:
        return lost_container(item, f"cannot read {item.name}: {exc.strerror or exc}")
    try:
        parsed = context.reader.parse(data)
    except context.reader.read_errors() as exc:
        return lost_container(item, f"{item.name}: {exc}")
    del data
    by_path = {record_path(item.name, r.name): r for r in parsed.records}
    if item.previous and _still_valid(context, item, parsed, by_path):
        return ChunkResult(
            [item.previous[p] for p in sorted(item.previous)], False, len(item.previous)
        )

    extension = output_extension(context.options)
    records: list[FileRecord] = []
    tasks: list[Task] = []
    for path, label in sorted(item.labels.items()):
        record = by_path.get(path)
        if record is None or record.image is None:
            records.append(
                FileRecord(
                    path=path,
                    status="error",
                    label=label,
                    error="record changed since the run started; rerun",
                )
            )
            continue
        output = record_path(item.name, parsed.output_name(record, extension))
        cluster = item.clusters.get(path)
        tasks.append(Task(path, context.class_index[label], label, None, cluster, output))
    work = WorkContext(
        context.input_root,
        context.output_dir,
        context.protector,  # type: ignore[arg-type]
        context.options,
        payloads={task.path: by_path[task.path].image for task in tasks},  # type: ignore[misc]
        outputs={},
    )
    work.metrics_version = context.metrics_version
    result = process_chunk(work, tasks)
    records.extend(result.records)
    ok = {r.path: r for r in result.records if r.status == "ok"}
    images = {by_path[p].name: work.outputs[r.output_path] for p, r in ok.items()}  # type: ignore[index]
    extensions = {name: extension for name in images} if extension else {}
    dropped = {r.name for p, r in by_path.items() if r.image is not None and p not in ok}
    try:
        rebuilt = parsed.rebuild(images, dropped, extensions)
        if context.driver_writes:
            return ContainerResult(records, result.lossy, 0, (item.name, rebuilt))
        write_container(context.output_dir, item.name, rebuilt)
    except OSError as exc:
        return unwritten(
            ChunkResult(records, result.lossy, 0),
            f"cannot write output {item.name}: {exc.strerror or exc}",
        )
    return ChunkResult(records, result.lossy, 0)


def unwritten(result: ChunkResult, message: str) -> ChunkResult:
    """``result`` of a container that could not be written: its ``ok`` records become errors."""
    records = [r if r.status != "ok" else _failed(r, message) for r in result.records]
    return ChunkResult(records, result.lossy, 0)


def _failed(record: FileRecord, message: str) -> FileRecord:
    return FileRecord(
        path=record.path,
        status="error",
        label=record.label,
        input_sha256=record.input_sha256,
        error=message,
    )


def lost_container(item: ContainerTask, message: str) -> ChunkResult:
    """Every record of a container failed with ``message`` (unreadable, or its worker died)."""
    return ChunkResult(
        [
            FileRecord(path=p, status="error", label=label, error=message)
            for p, label in sorted(item.labels.items())
        ],
        False,
        0,
    )


def _still_valid(
    context: RecordContext, item: ContainerTask, parsed: ParsedContainer, by_path: dict[str, Record]
) -> bool:
    """Whether the earlier run's output container holds every record of ``item`` as recorded."""
    if set(item.previous) != set(item.labels):
        return False
    try:
        data = item.output_data
        if data is None:
            data = read_container(context.output_dir, item.name)
        output = context.reader.parse(data)
    except (OSError, *context.reader.read_errors()):
        return False
    written = {r.name: r.image for r in output.records}
    for path, previous in item.previous.items():
        record = by_path.get(path)
        if record is None or record.image is None or previous.output_path is None:
            return False
        if sha256_bytes(record.image) != previous.input_sha256:
            return False
        image = written.get(previous.output_path.split(RECORD_SEPARATOR, 1)[-1])
        if image is None or sha256_bytes(image) != previous.output_sha256:
            return False
    return True


def run_records(
    input_root: Path | str,
    output_dir: Path | str,
    containers: list[str],
    reader: ContainerReader,
    job: FolderJob,
    *,
    key_fingerprint: str,
    options: OutputOptions = DEFAULT_OUTPUT,
    resume: bool = False,
    executor: Executor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ProtectRun:
    """Protect the records ``job.labels`` (manifest paths ``CONTAINER#NAME``) of ``containers``
    (relative to ``input_root``, a folder or a URL) into ``output_dir`` (a folder or a URL), as
    :func:`~unlearnable.io.runner.run_folder` does for files: same manifest, journal, resume,
    errors (see the module docstring). ``job.skipped`` lists records copied unchanged (no
    image); ``job.problems`` failed ones. Every container of ``containers`` is written, even
    one without a record to protect."""
    from .url_output import UrlFolder, is_process_local, previous_url_records

    _check_class_names(job.classes)
    protector = job.protector
    manifest = run_manifest(job, options, key_fingerprint, input_format=reader.kind)
    url = UrlFolder(str(output_dir)) if is_url(output_dir) else None
    if url is not None:
        previous = previous_url_records(url, manifest, resume, job.run_files)
    else:
        previous = previous_records(Path(output_dir), manifest, resume, job.run_files)
        # a resumed local run keeps the earlier run's metrics version (URL outputs: the newest)
        manifest.extra["metrics_version"] = resumed_metrics_version(Path(output_dir), resume)
    check_same_input(previous, [*job.labels, *job.problems], output_dir)
    records: dict[str, FileRecord] = {}
    for path, reason in (job.skipped or {}).items():
        records[path] = FileRecord(path=path, status="skipped", reason=reason)
    for path, message in job.problems.items():
        records[path] = FileRecord(
            path=path, status="error", label=job.labels.get(path), error=message
        )
    items = {name: ContainerTask(name, {}) for name in containers}
    clusters = job.clusters or {}
    for path, label in job.labels.items():
        item = items[path.split(RECORD_SEPARATOR, 1)[0]]
        item.labels[path] = label
        if path in previous:
            item.previous[path] = previous[path]
        if path in clusters:
            item.clusters[path] = clusters[path]
    work = list(items.values())  # also those without protectable records: copied as they are
    driver_writes = url is not None and url.process_local
    _send_bytes(work, input_root, output_dir, is_process_local(input_root), driver_writes)
    executor = executor or default_executor()
    context = RecordContext(
        input_root,
        output_dir,
        reader,
        protector,
        options,
        {name: index for index, name in enumerate(job.classes)},
        driver_writes,
        manifest.extra["metrics_version"],
    )
    if url is not None:
        from .url_output import DriverWrites, run_to_url

        return run_to_url(
            url,
            DriverWrites(executor, url, unwritten) if driver_writes else executor,
            process_container,
            context,
            work,
            lost_container,
            (manifest, records, previous),
            total=len(job.labels),
            progress=progress,
        )
    output_dir = Path(output_dir)
    journal = _start_journal(output_dir, manifest, previous.values())
    return run_and_record(
        executor,
        process_container,
        context,
        work,
        lost_container,
        RunBook(manifest, records, journal, output_dir),
        total=len(job.labels),
        progress=progress,
    )


def _send_bytes(
    work: list[ContainerTask],
    input_root: Path | str,
    output_dir: Path | str,
    inputs: bool,
    outputs: bool,
) -> None:
    """Attach the containers' bytes to the tasks where the workers cannot read them (a
    process-local file system): the inputs, and the earlier outputs that a resume checks."""
    for item in work:
        if inputs:
            try:
                item.input_data = read_container(input_root, item.name)
            except OSError:
                pass  # the worker reports it
        if outputs and item.previous:
            try:
                item.output_data = read_container(output_dir, item.name)
            except OSError:
                pass  # no earlier output: the container is done again


def refuse_folder_labels(source: str) -> None:
    """Shards and Parquet files take their labels from their records, not from folders or CSV."""
    if source not in ("auto", "single"):
        raise UsageError(
            f"--labels {source}: shard and Parquet records carry their own labels (WebDataset: "
            "--wds-label cls|json:FIELD|none; Parquet: --label-column); use --labels auto or single"
        )
