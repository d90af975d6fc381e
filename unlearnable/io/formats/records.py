"""What the format readers give the record runner: records, and a way to rebuild the container.

A reader (:mod:`.webdataset`, :mod:`.parquet`) turns a container's bytes into a
:class:`ParsedContainer`: its :class:`Record` s in order, and :meth:`ParsedContainer.rebuild`,
which writes the container again with some images replaced and some records left out, every
other byte of information (members, columns, metadata) unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ...datasets import SINGLE_LABEL

RECORD_SEPARATOR = "#"
"""Between a container's relative path and a record's name in the manifest (``a.tar#001.jpg``)."""
NO_IMAGE_REASON = "no image in this record; copied unchanged"


@dataclass
class Record:
    """One record of a container: ``name`` (a WebDataset image member's name, or a Parquet row
    number), its image bytes (None: the record has no image), its label name (None: the label
    source has none for it; ``problem`` says why)."""

    name: str
    image: bytes | None
    label: str | None
    problem: str | None = None


class ParsedContainer(Protocol):
    """A container read into memory."""

    records: list[Record]

    def output_name(self, record: Record, extension: str | None) -> str:
        """The record's name in the output for an image written with ``extension`` (``.png``;
        None: the input's own format)."""
        ...

    def rebuild(
        self, images: Mapping[str, bytes], dropped: set[str], extensions: Mapping[str, str]
    ) -> bytes:
        """The container again: the image of each record named in ``images`` replaced by its
        bytes (with the extension of ``extensions`` where given), the records in ``dropped``
        left out, everything else unchanged."""
        ...


def record_path(container: str, name: str) -> str:
    """The manifest path of record ``name`` of ``container``."""
    return f"{container}{RECORD_SEPARATOR}{name}"


def single_label(records: list[Record]) -> list[Record]:
    """Every record labelled with the one label ``all``."""
    for record in records:
        record.label, record.problem = SINGLE_LABEL, None
    return records
