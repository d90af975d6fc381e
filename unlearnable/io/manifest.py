"""The run manifest: ``unlearnable-manifest.json`` in the output folder (versioned schema).

It records the tool version, the method and its parameters, the key *fingerprint* (never the
key), the label mapping, and per input file: relative path, label, status (``ok`` or
``error``; ``skipped`` for files deliberately left out, such as hidden files), input and output
sha256, sizes, the protection parameters used, PSNR, SSIM and the visual cost (all at
viewing size, :mod:`unlearnable.metrics`; under a visual-cost budget also how often the plan
was weakened and whether the file is still over the budget), or the error message.
``--resume`` reads it (and the run's journal, :mod:`unlearnable.io.journal`) to skip files
already done with the same key and parameters.

File names are recorded losslessly: a name that is not valid UTF-8 (e.g. the bytes
``caf\xe9.png`` on Linux) is written as ``path`` with U+FFFD for the bad bytes (for people) plus
``path_bytes``, the name's bytes in hex (for programs); :meth:`FileRecord.from_json` restores the
original name (``os.fsdecode`` of the bytes). The same holds for ``output_path``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import InputError
from .atomic import atomic_write_text

MANIFEST_NAME = "unlearnable-manifest.json"
SCHEMA = "unlearnable.manifest"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 added each file's ``visual_cost`` (and ``weakened``/``over_budget`` under a
budget) and the summary's visual-cost entries; version 1 manifests read as they are (their
records have no visual cost)."""
STATUSES = frozenset({"ok", "error", "skipped"})
_PATH_FIELDS = ("path", "output_path")


class ManifestError(InputError):
    """A manifest is unreadable or does not follow the schema."""


@dataclass
class FileRecord:
    """What happened to one input file. ``status`` is ``ok``, ``error`` or ``skipped``."""

    path: str
    status: str
    label: str | None = None
    output_path: str | None = None
    input_sha256: str | None = None
    output_sha256: str | None = None
    width: int | None = None
    height: int | None = None
    input_bytes: int | None = None
    output_bytes: int | None = None
    params: dict[str, Any] | None = None
    psnr: float | None = None
    ssim: float | None = None
    visual_cost: float | None = None  # shift-tolerant 1 - SSIM (schema version 2 on)
    weakened: int | None = None  # times the plan was weakened to meet the visual-cost budget
    over_budget: bool | None = None  # True: over the budget even at the weakest plan
    cluster: int | None = None
    error: str | None = None
    reason: str | None = None  # why a ``skipped`` file was left out

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if v is not None}
        if "psnr" in data and not math.isfinite(data["psnr"]):
            data["psnr"] = None  # identical images: infinite PSNR is not JSON
        for name in _PATH_FIELDS:
            value = data.get(name)
            if value is not None and not is_utf8(value):
                data[name] = display_name(value)
                data[f"{name}_bytes"] = os.fsencode(value).hex()
        for name in ("label", "error", "reason"):
            if name in data and not is_utf8(data[name]):
                data[name] = display_name(data[name])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        known = {k: data.get(k) for k in cls.__dataclass_fields__}
        if not isinstance(known["path"], str) or known["status"] not in STATUSES:
            raise ManifestError(f"malformed file record: {data!r:.200}")
        for name in _PATH_FIELDS:
            raw = data.get(f"{name}_bytes")
            if isinstance(raw, str):
                try:
                    known[name] = os.fsdecode(bytes.fromhex(raw))
                except ValueError:
                    raise ManifestError(f"malformed {name}_bytes in record {data!r:.200}") from None
        return cls(**known)


_RECORD_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


def record_text(record: FileRecord) -> str:
    """A file record's JSON on one line, as the manifest and the journal write it."""
    return _RECORD_ENCODE(record.to_json())


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a name decoded from bad bytes holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(text: str) -> str:
    """``text`` for people: the bytes of a name that is not valid UTF-8 shown as U+FFFD."""
    if is_utf8(text):
        return text
    return os.fsencode(text).decode("utf-8", errors="replace")


@dataclass
class Manifest:
    """Everything a protect run records; see the module docstring."""

    method: str
    parameters: dict[str, Any]
    key_fingerprint: str
    label_mode: str
    classes: list[str]
    files: list[FileRecord] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    tool_version: str = __version__
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self._head_json(), "files": [record.to_json() for record in self.files]}

    def _head_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "unlearnable", "version": self.tool_version},
            "created": self.created,
            "method": self.method,
            "parameters": self.parameters,
            "key_fingerprint": self.key_fingerprint,
            "labels": {
                "mode": self.label_mode,
                "classes": {display_name(name): index for index, name in enumerate(self.classes)},
            },
            **self.extra,
            "summary": self.summary,
        }

    def identity_json(self) -> dict[str, Any]:
        """Everything but the files and the summary (a journal's header)."""
        data = self._head_json()
        del data["summary"]
        return data

    def write(self, folder: Path, texts: Mapping[str, str] | None = None) -> Path:
        """Write ``unlearnable-manifest.json`` into ``folder`` atomically and durably (fsync);
        ``OSError`` when it cannot be written (the previous manifest, if any, is kept).
        ``texts``: see :meth:`to_text`."""
        target = folder / MANIFEST_NAME
        atomic_write_text(target, self.to_text(texts), durable=True)
        return target

    def to_text(self, texts: Mapping[str, str] | None = None) -> str:
        """The manifest as JSON text: the header indented, then one file record per line
        (:func:`record_text`). ``texts``: path -> :func:`record_text` of the record of
        ``files`` with that path, where the caller has it already (the run's journal made
        it), so that a 50,000-file run does not encode its records twice."""
        head = json.dumps(self._head_json(), indent=1, ensure_ascii=False)
        if not self.files:
            return head[:-2] + ',\n "files": []\n}\n'
        texts = texts or {}
        lines = ",\n  ".join(texts.get(r.path) or record_text(r) for r in self.files)
        return f'{head[:-2]},\n "files": [\n  {lines}\n ]\n}}\n'

    def same_protection(self, other: Manifest) -> bool:
        """True when ``other`` was made with the same method, parameters and key."""
        return (
            self.method == other.method
            and self.parameters == other.parameters
            and self.key_fingerprint == other.key_fingerprint
        )


def read_manifest(path: Path) -> Manifest:
    """Load a manifest file (or the manifest inside a folder) and check its schema."""
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    return manifest_from_json(data, path)


def manifest_from_json(data: Any, path: Path | str, files: bool = True) -> Manifest:
    """A :class:`Manifest` from its JSON (``files=False``: a journal header, no files)."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ManifestError(f"{path} is not an unlearnable manifest")
    if data.get("schema_version") not in READABLE_VERSIONS:
        raise ManifestError(
            f"{path} has schema version {data.get('schema_version')}; this tool reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        classes_map = data["labels"]["classes"]
        classes = sorted(classes_map, key=classes_map.get)
        standard = {
            "schema",
            "schema_version",
            "tool",
            "created",
            "method",
            "parameters",
            "key_fingerprint",
            "labels",
            "summary",
            "files",
        }
        return Manifest(
            method=data["method"],
            parameters=data["parameters"],
            key_fingerprint=data["key_fingerprint"],
            label_mode=data["labels"]["mode"],
            classes=classes,
            files=[FileRecord.from_json(item) for item in data["files"]] if files else [],
            summary=data.get("summary", {}),
            tool_version=data["tool"]["version"],
            created=data["created"],
            extra={k: v for k, v in data.items() if k not in standard},
        )
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path} does not follow the manifest schema: missing {exc}") from None
