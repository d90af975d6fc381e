"""WebDataset tar shards (the img2dataset / LAION layout), read and written with ``tarfile``.

A shard is a plain tar file; its members are grouped into samples by *key*: the member name up
to the first dot of its basename (``dir/000042.jpg`` and ``dir/000042.txt`` are the sample
``dir/000042``, with extensions ``jpg`` and ``txt``). A sample's image is its first member whose
extension is an image format (``jpg``, ``jpeg``, ``png``, ``webp``, ``bmp``, ``tif``,
``tiff``); every other member (captions ``.txt``, metadata ``.json``, a ``.cls`` label, a second
image such as ``seg.png``) is copied unchanged. The label comes from the ``.cls`` member's text
(``cls``), a field of the ``.json`` member (``json:FIELD``), or is one label for all (``none``).

The ``webdataset`` package is not needed: the format is only this grouping convention, and the
standard library reads and writes tar files; its streaming loaders are for training, not for
rewriting shards member by member. The output shard keeps the member order and each member's
header (name, mode, owner, mtime); a replaced image gets its new size (and, with ``--format``,
its new extension).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import open_container
from .records import Record

IMAGE_MEMBER_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "png", "webp", "bmp", "tif", "tiff"})


class ShardError(Exception):
    """A shard cannot be read as a tar file."""


def split_member(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name: ``a/b/000042.seg.png`` -> ``(a/b/000042, seg.png)``."""
    folder, slash, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return f"{folder}{slash}{stem}", extension if dot else ""


@dataclass
class WebDatasetShard:
    """A shard read into memory (see :class:`~.records.ParsedContainer`)."""

    members: list[tuple[tarfile.TarInfo, bytes | None]]
    records: list[Record] = field(default_factory=list)
    image_member: dict[str, int] = field(default_factory=dict)  # record name -> member index
    sample_of: list[str] = field(default_factory=list)  # member index -> key

    def output_name(self, record: Record, extension: str | None) -> str:
        if extension is None:
            return record.name
        key, _ = split_member(record.name)
        return f"{key}{extension}"

    def rebuild(
        self, images: Mapping[str, bytes], dropped: set[str], extensions: Mapping[str, str]
    ) -> bytes:
        dropped_keys = {split_member(name)[0] for name in dropped}
        replaced = {self.image_member[name]: name for name in images}
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for index, (info, data) in enumerate(self.members):
                if self.sample_of[index] in dropped_keys:
                    continue
                header = _copy_info(info)
                if index in replaced:
                    name = replaced[index]
                    data = images[name]
                    if name in extensions:
                        key, _ = split_member(info.name)
                        header.name = f"{key}{extensions[name]}"
                if data is None:
                    tar.addfile(header)
                else:
                    header.size = len(data)
                    tar.addfile(header, io.BytesIO(data))
        return buffer.getvalue()


def _copy_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    header = tarfile.TarInfo(info.name)
    for name in ("size", "mtime", "mode", "type", "linkname", "uid", "gid", "uname", "gname"):
        setattr(header, name, getattr(info, name))
    header.pax_headers = dict(info.pax_headers)
    return header


def read_shard(data: bytes, label_source: str) -> WebDatasetShard:
    """Parse a shard's bytes; ``label_source`` is ``cls``, ``json:FIELD`` or ``none``.
    ``ShardError`` when the bytes are not a readable tar file."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                content = None
                if info.isfile():
                    handle = tar.extractfile(info)
                    content = handle.read() if handle is not None else b""
                members.append((info, content))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardError(f"not a readable tar shard: {exc}") from None
    return _index(members, label_source)


def scan_shard(root: Path | str, name: str, label_source: str) -> list[Record]:
    """The records of shard ``name`` below ``root`` (a folder or a URL) with their labels,
    without keeping the image bytes (the ``.cls`` / ``.json`` members are read; image data is
    skipped over)."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    try:
        with open_container(root, name) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                content = None
                if info.isfile() and split_member(info.name)[1].lower() in ("cls", "json"):
                    handle = tar.extractfile(info)
                    content = handle.read() if handle is not None else b""
                elif info.isfile():
                    content = b""  # present; the bytes are not needed for the scan
                members.append((info, content))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardError(f"not a readable tar shard: {exc}") from None
    return _index(members, label_source).records


def _index(
    members: list[tuple[tarfile.TarInfo, bytes | None]], label_source: str
) -> WebDatasetShard:
    shard = WebDatasetShard(members)
    samples: dict[str, dict[str, int]] = {}
    order: list[str] = []
    for index, (info, _) in enumerate(members):
        key, extension = split_member(info.name)
        shard.sample_of.append(key)
        if key not in samples:
            samples[key] = {}
            order.append(key)
        if info.isfile():
            samples[key].setdefault(extension.lower(), index)
    for key in order:
        found = samples[key]
        image_index = next((i for ext, i in found.items() if ext in IMAGE_MEMBER_EXTENSIONS), None)
        if image_index is None:  # no image: the sample is copied unchanged (recorded as such)
            shard.records.append(Record(key, None, None))
            continue
        info, data = members[image_index]
        label, problem = _label(found, members, label_source)
        record = Record(info.name, data, label, problem)
        shard.records.append(record)
        shard.image_member[info.name] = image_index
    return shard


def _label(
    found: dict[str, int], members: list[tuple[tarfile.TarInfo, bytes | None]], source: str
) -> tuple[str | None, str | None]:
    from ...datasets import SINGLE_LABEL

    if source == "none":
        return SINGLE_LABEL, None
    if source == "cls":
        if "cls" not in found:
            return None, "no .cls member, so it has no label"
        raw = members[found["cls"]][1] or b""
        text = raw.decode("utf-8", errors="replace").strip()
        return (text, None) if text else (None, "empty .cls member, so it has no label")
    field_name = source.split(":", 1)[1]
    if "json" not in found:
        return None, "no .json member, so it has no label"
    try:
        meta = json.loads(members[found["json"]][1] or b"")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "its .json member is not valid JSON, so it has no label"
    if not isinstance(meta, dict) or meta.get(field_name) is None:
        return None, f"its .json member has no {field_name!r} field, so it has no label"
    return str(meta[field_name]), None


def shard_has_cls(root: Path | str, name: str) -> bool:
    """Whether the shard has at least one ``.cls`` member (for the default label source)."""
    try:
        with open_container(root, name) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            return any(split_member(info.name)[1].lower() == "cls" for info in tar)
    except (tarfile.TarError, EOFError, OSError):
        return False


def write_shard(samples: list[dict[str, bytes]], keys: list[str] | None = None) -> bytes:
    """A shard from samples (``{extension: bytes}`` each; keys ``000000``, ``000001``, ... unless
    given), with fixed member headers (mtime 0, mode 0644): for examples and tests."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for index, sample in enumerate(samples):
            key = keys[index] if keys is not None else f"{index:06d}"
            for extension, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
