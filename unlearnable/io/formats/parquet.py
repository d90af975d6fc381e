"""Parquet files with image bytes (the Hugging Face ``datasets`` layout), through ``pyarrow``.

A row is a record: its image is the ``image_column`` value, either raw bytes (binary) or a
struct with a ``bytes`` field (and usually ``path``), as ``datasets.Image`` stores it; its label
is ``str`` of the ``label_column`` value (a class index or a name). The output file has the
same schema and schema metadata (so ``datasets`` still knows its features), the same rows,
columns and values, the image bytes replaced, written with the input's compression. A row whose
image failed keeps its place (row numbers stay aligned with the input) with a null image: it is
never released unprotected. ``pyarrow`` is a well-kept reader and writer of the format (nested types,
compression, metadata), which no hand-written code should replace; it is an optional extra
(``pip install "unlearnable[parquet]"``), imported only when a Parquet input is used.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...datasets import SINGLE_LABEL
from . import FormatUsageError, open_container
from .records import Record

ROW_DIGITS = 9
DEFAULT_LABEL_COLUMN = "label"


class ParquetError(Exception):
    """A Parquet file cannot be read, or lacks the image column."""


def require_pyarrow() -> Any:
    """The ``pyarrow`` module, or a :class:`FormatUsageError` saying how to install it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise FormatUsageError(
            "Parquet input needs pyarrow, which is not installed: "
            'pip install "unlearnable[parquet]" (or pip install pyarrow)'
        ) from None
    return pyarrow


def row_name(row: int) -> str:
    return f"{row:0{ROW_DIGITS}d}"


def resolve_label_column(
    root: Path | str, name: str, image_column: str, label_column: str | None
) -> str | None:
    """The label column to use for the schema of file ``name`` below ``root`` (a folder or a
    URL): the one named (``FormatUsageError`` when missing), else ``label`` when present, else
    None (one label for all). ``FormatUsageError`` when the file has no ``image_column`` or
    cannot be read."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with open_container(root, name) as handle:
            names = pq.read_schema(handle).names
    except (pa.ArrowException, OSError) as exc:
        raise FormatUsageError(f"cannot read {name} as Parquet: {exc}") from None
    if image_column not in names:
        raise FormatUsageError(
            f"{name} has no image column {image_column!r} (columns: {', '.join(names)}); "
            "name it with --image-column"
        )
    if label_column is not None:
        if label_column not in names:
            raise FormatUsageError(
                f"{name} has no label column {label_column!r}; its columns: {', '.join(names)}"
            )
        return label_column
    return DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in names else None


@dataclass
class ParquetFile:
    """A Parquet file read into memory (see :class:`~.records.ParsedContainer`)."""

    table: Any  # pyarrow.Table
    image_column: str
    compression: str | None
    records: list[Record] = field(default_factory=list)

    def output_name(self, record: Record, extension: str | None) -> str:
        return record.name

    def rebuild(
        self, images: Mapping[str, bytes], dropped: set[str], extensions: Mapping[str, str]
    ) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = self.table
        column = table.column(self.image_column).combine_chunks()
        values = column.to_pylist()
        for record_index, record in enumerate(self.records):
            if record.name in dropped:
                values[record_index] = None  # never released unprotected; rows stay aligned
            elif record.name in images:
                new = images[record.name]
                value = values[record_index]
                values[record_index] = {**value, "bytes": new} if isinstance(value, dict) else new
        position = table.schema.get_field_index(self.image_column)
        table = table.set_column(
            position, table.schema.field(position), pa.array(values, type=column.type)
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression=self.compression or "none")
        return buffer.getvalue()


def read_parquet(data: bytes, image_column: str, label_column: str | None) -> ParquetFile:
    """Parse a Parquet file's bytes into records. ``ParquetError`` when it cannot be read or has
    no ``image_column``."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(io.BytesIO(data))
        table = handle.read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ParquetError(f"not a readable Parquet file: {exc}") from None
    if image_column not in table.column_names:
        raise ParquetError(
            f"no image column {image_column!r} (columns: {', '.join(table.column_names)}); "
            "name it with --image-column"
        )
    compression = None
    if handle.metadata.num_row_groups and handle.metadata.num_columns:
        compression = handle.metadata.row_group(0).column(0).compression.lower()
    parsed = ParquetFile(table, image_column, compression)
    images = table.column(image_column).to_pylist()
    labels = _labels(table, label_column)
    for row, value in enumerate(images):
        raw = value.get("bytes") if isinstance(value, dict) else value
        label, problem = labels[row]
        parsed.records.append(Record(row_name(row), raw if raw else None, label, problem))
    return parsed


def scan_parquet(
    root: Path | str, name: str, image_column: str, label_column: str | None
) -> list[Record]:
    """The records of Parquet file ``name`` below ``root`` (a folder or a URL) with their
    labels, reading only the label column (images are marked present without being read)."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with open_container(root, name) as stream:
            handle = pq.ParquetFile(stream)
            names = handle.schema_arrow.names
            if image_column not in names:
                raise ParquetError(
                    f"no image column {image_column!r} (columns: {', '.join(names)}); "
                    "name it with --image-column"
                )
            rows = handle.metadata.num_rows
            table = handle.read(columns=[label_column]) if label_column else None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ParquetError(f"not a readable Parquet file: {exc}") from None
    labels = _labels(table, label_column) if table is not None else [(SINGLE_LABEL, None)] * rows
    return [Record(row_name(row), b"", *labels[row]) for row in range(rows)]


def _labels(table: Any, label_column: str | None) -> list[tuple[str | None, str | None]]:
    if label_column is None:
        return [(SINGLE_LABEL, None)] * table.num_rows
    if label_column not in table.column_names:
        return [(None, f"no label column {label_column!r}")] * table.num_rows
    return [
        (str(value), None) if value is not None else (None, "empty label")
        for value in table.column(label_column).to_pylist()
    ]


def write_parquet(columns: dict[str, list[Any]]) -> bytes:
    """A Parquet file from column lists (for examples and tests)."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()
