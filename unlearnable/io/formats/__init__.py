"""Publisher formats: WebDataset tar shards and Parquet files with image bytes.

A *container* (one ``.tar`` shard or one ``.parquet`` file) holds many *records* (one image with
its label and whatever else comes with it: captions, JSON metadata, other columns). The record
runner (:mod:`.run`) protects container by container: each container is read, its images go
through the same per-record code as the files of a folder
(:func:`unlearnable.io.work.process_chunk`), and the protected container is written atomically
under the same name in the output folder, with every other member or column unchanged. A record
whose image cannot be decoded is a per-record ``error`` in the manifest and is left out of the
output container (as a bad file is left out of a protected folder); a record without an image is
copied unchanged and recorded as ``skipped``.

Record names in the manifest: ``SHARD.tar#MEMBER`` for a WebDataset image member (e.g.
``train-0001.tar#000042.jpg``), ``FILE.parquet#ROW`` (row number, 9 digits) for a Parquet row.

Formats (:class:`FormatOptions`): ``auto`` detects the input (a ``.tar`` / ``.parquet`` file, or a
folder holding such files and no images); ``folder``, ``webdataset`` or ``parquet`` force one.
Parquet needs ``pyarrow`` (``pip install "unlearnable[parquet]"``), imported only when used.

Shard and Parquet inputs and outputs may also be URLs (``s3://bucket/shards/``, ``gs://...``,
``file:///...``), read and written through ``fsspec`` (the matching package, e.g. ``s3fs``, must
be installed, with credentials as that package finds them); an output URL holds the journal and
the manifest too (:mod:`.url_output` says what "atomic" means on an object store). A folder of
images is read from and written to local folders only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ...errors import UsageError
from ..images import IMAGE_EXTENSIONS

INPUT_FORMATS = ("auto", "folder", "webdataset", "parquet")
CONTAINER_SUFFIX = {"webdataset": ".tar", "parquet": ".parquet"}


class FormatUsageError(UsageError):
    """The input's format cannot be used as asked (nothing was written)."""


@dataclass(frozen=True)
class FormatOptions:
    """How records are found in shards and Parquet files.

    ``input_format``: ``auto``, ``folder``, ``webdataset`` or ``parquet``. ``image_column``: the
    Parquet column of image bytes (binary, or a struct with a ``bytes`` field as Hugging Face
    ``datasets`` writes it). ``label_column``: the Parquet label column (values become label
    names with ``str``; None: ``label`` when there is one, else one label for all).
    ``wds_label``: where a WebDataset sample's label is: ``cls`` (the ``.cls`` member's text),
    ``json:FIELD`` (a field of the ``.json`` member) or ``none`` (one label for all); None:
    ``cls`` when the shards have ``.cls`` members, else ``none``.
    """

    input_format: str = "auto"
    image_column: str = "image"
    label_column: str | None = None
    wds_label: str | None = None

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise FormatUsageError(
                f"input format must be one of {', '.join(INPUT_FORMATS)}, got {self.input_format!r}"
            )
        label = self.wds_label
        if (
            label is not None
            and label not in ("cls", "none")
            and not (label.startswith("json:") and len(label) > 5)
        ):
            raise FormatUsageError(
                f"WebDataset label must be cls, json:FIELD or none, got {label!r}"
            )


DEFAULT_FORMATS = FormatOptions()


def is_url(path: object) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and "://" in path


def url_filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec file system, path)`` of ``url``; ``FormatUsageError`` when its protocol is
    unknown or its package (``s3fs``, ``gcsfs``, ...) is not installed."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise FormatUsageError(f"cannot read {url}: {exc}") from None


@contextmanager
def open_container(root: str | Path, name: str) -> Iterator[IO[bytes]]:
    """Open container ``name`` (relative POSIX path) below ``root`` (a folder or a URL) for
    reading; ``OSError`` when it cannot be opened."""
    if is_url(root):
        fs, base = url_filesystem(str(root))
        with fs.open(f"{base.rstrip('/')}/{name}", "rb") as handle:
            yield handle
    else:
        with open(Path(root) / name, "rb") as handle:
            yield handle


def read_container(root: str | Path, name: str) -> bytes:
    """The bytes of container ``name`` below ``root`` (``OSError`` when unreadable)."""
    with open_container(root, name) as handle:
        return handle.read()


def write_container(root: str | Path, name: str, data: bytes) -> None:
    """Write container ``name`` below ``root`` (a folder or a URL) so that it appears complete or
    not at all (:func:`unlearnable.io.atomic.atomic_write_bytes`, or
    :meth:`.url_output.UrlFolder.write`); ``OSError`` when it cannot be written."""
    if is_url(root):
        from .url_output import UrlFolder

        UrlFolder(str(root)).write(name, data)
        return
    from ..atomic import atomic_write_bytes

    atomic_write_bytes(Path(root) / name, data)


def detect_format(path: Path | str, options: FormatOptions = DEFAULT_FORMATS) -> str:
    """``folder``, ``webdataset`` or ``parquet`` for ``path`` (a local path or a URL; see the
    module docstring).

    ``FormatUsageError`` when ``path`` does not exist, when a forced format finds no container,
    or when a folder holds both kinds of containers (then ``--input-format`` must choose).
    """
    if is_url(path):
        return _detect_url(str(path), options)
    path = Path(path)
    if not path.exists():
        raise FormatUsageError(f"input not found: {path}")
    wanted = options.input_format
    if path.is_file():
        kind = _kind_of(path.name)
        if kind is None:
            raise FormatUsageError(
                f"input file {path} is neither a WebDataset .tar shard nor a .parquet file; "
                "give a folder of images, shards or Parquet files"
            )
        if wanted not in ("auto", kind):
            raise FormatUsageError(f"--input-format {wanted}: {path} is a {kind} file")
        return kind
    if wanted == "folder":
        return "folder"
    kinds = {kind for name in _walk_names(path) if (kind := _kind_of(name)) is not None}
    if wanted != "auto" or len(kinds) > 1:
        return _chosen_kind(kinds, wanted, f"below {path}", str(path))
    if kinds and not _has_images(path):
        return kinds.pop()
    return "folder"


def _chosen_kind(kinds: set[str], wanted: str, where: str, place: str) -> str:
    """The container kind of ``kinds`` (found ``where``, in ``place``) that ``wanted``
    (``--input-format``) names, or the only one with ``auto``; FormatUsageError otherwise."""
    if wanted != "auto":
        if wanted not in kinds:
            raise FormatUsageError(
                f"--input-format {wanted}: no {CONTAINER_SUFFIX[wanted]} files {where}"
            )
        return wanted
    if len(kinds) > 1:
        raise FormatUsageError(
            f"{place} holds both .tar shards and .parquet files; choose with --input-format"
        )
    return next(iter(kinds))


def _detect_url(url: str, options: FormatOptions) -> str:
    fs, base = url_filesystem(url)
    try:
        if fs.isfile(base):
            names = [base.rstrip("/").rsplit("/", 1)[-1]]
        else:
            names = _url_names(fs, base)
    except OSError as exc:
        raise FormatUsageError(f"cannot read {url}: {exc}") from None
    kinds = {kind for name in names if (kind := _kind_of(name)) is not None}
    wanted = options.input_format
    if wanted == "folder" or not kinds:
        raise FormatUsageError(
            f"{url}: URLs are read for WebDataset shards and Parquet files only, and none "
            "was found there"
        )
    return _chosen_kind(kinds, wanted, f"at {url}", url)


def _url_names(fs: Any, base: str) -> list[str]:
    """Relative POSIX paths of the files below ``base`` (hidden ones left out)."""
    prefix = base.rstrip("/") + "/"
    names = []
    for found in fs.find(base):
        relative = found[len(prefix) :] if found.startswith(prefix) else found.rsplit("/", 1)[-1]
        if not any(part.startswith(".") for part in relative.split("/")):
            names.append(relative)
    return sorted(names)


def list_containers(
    path: Path | str, kind: str, exclude: Path | None = None
) -> tuple[Path | str, list[str]]:
    """``(root, names)``: the folder (or URL) the containers are relative to and their relative
    POSIX paths (sorted). A single file is its own container (root = its folder). Hidden files
    and folders and ``exclude`` (the output folder) are not entered."""
    if is_url(path):
        url = str(path).rstrip("/")
        fs, base = url_filesystem(url)
        if fs.isfile(base):
            parent, _, name = url.rpartition("/")
            return parent, [name]
        return url, [name for name in _url_names(fs, base) if _kind_of(name) == kind]
    path = Path(path)
    if path.is_file():
        return path.parent, [path.name]
    skip = exclude.resolve() if exclude is not None and exclude.exists() else None
    names: list[str] = []
    for folder, subfolders, files in os.walk(path):
        here = Path(folder)
        subfolders[:] = sorted(
            d for d in subfolders if not d.startswith(".") and (here / d).resolve() != skip
        )
        for name in files:
            if not name.startswith(".") and _kind_of(name) == kind:
                names.append((here / name).relative_to(path).as_posix())
    return path, sorted(names)


def _kind_of(name: str) -> str | None:
    lower = name.lower()
    for kind, suffix in CONTAINER_SUFFIX.items():
        if lower.endswith(suffix):
            return kind
    return None


def _walk_names(path: Path):
    for _, subfolders, files in os.walk(path):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        yield from (name for name in files if not name.startswith("."))


def _has_images(path: Path) -> bool:
    return any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in _walk_names(path))


__all__ = [
    "DEFAULT_FORMATS",
    "INPUT_FORMATS",
    "FormatOptions",
    "FormatUsageError",
    "detect_format",
    "is_url",
    "list_containers",
    "open_container",
    "read_container",
    "write_container",
]
