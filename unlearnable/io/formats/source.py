"""Record images by manifest path, for passes that read records one by one (the surrogate's
feature pass of Unlearnable Clusters and CUDA on clusters).

:class:`RecordSource` reads ``CONTAINER#NAME`` (:func:`.records.record_path`) from the
containers below a folder or a URL. It fits
:class:`unlearnable.protect.feature_pass.ImageSource`, so the feature pass, the hashing and the
Ray feature actors read shard and Parquet records as they read the files of a folder. A
container is parsed once and its images kept while its records are read (the last
:data:`CACHED_CONTAINERS` per process, shared by threads), so a pass over records in manifest
order reads each container about once. It is picklable (the cache stays behind): each Ray actor
or worker process keeps its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from . import read_container
from .records import RECORD_SEPARATOR

CACHED_CONTAINERS = 2
"""Parsed containers kept per process (two: threads reading across a container boundary)."""


class RecordSource:
    """Images of the records of ``root``'s containers read by ``reader`` (a
    :class:`~.run.ContainerReader`); see the module docstring."""

    def __init__(self, root: Path | str, reader: Any) -> None:
        self.root = root
        self.reader = reader
        self._cache: OrderedDict[str, dict[str, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "reader": self.reader}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["reader"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"RecordSource({str(self.root)!r}, {self.reader.kind})"

    @property
    def process_local(self) -> bool:
        """Whether the containers live in a file system of this process only (``memory://``),
        which Ray actors cannot read."""
        from .url_output import is_process_local

        return is_process_local(self.root)

    def read(self, path: str) -> bytes:
        """The image bytes of record ``path`` (``CONTAINER#NAME``); ``OSError`` when its
        container cannot be read or parsed, or the record has no image."""
        container, separator, name = path.partition(RECORD_SEPARATOR)
        if not separator:
            raise FileNotFoundError(f"{path} names no record (CONTAINER#NAME)")
        with self._lock:
            images = self._cache.get(container)
            if images is None:
                images = self._load(container)
                self._cache[container] = images
                while len(self._cache) > CACHED_CONTAINERS:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(container)
        image = images.get(name)
        if image is None:
            raise FileNotFoundError(f"{path}: no such record with an image")
        return image

    def _load(self, container: str) -> dict[str, bytes | None]:
        data = read_container(self.root, container)
        try:
            parsed = self.reader.parse(data)
        except self.reader.read_errors() as exc:
            raise OSError(f"{container}: {exc}") from None
        return {record.name: record.image for record in parsed.records}
