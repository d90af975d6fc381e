"""The run manifest: ``unlearnable-manifest.json`` in the output folder (versioned schema).

It records the tool version, the method and its parameters, the key *fingerprint* (never the
key), the label mapping, and per input file: relative path, label, status (``ok`` or
``error``), input and output sha256, sizes, the protection parameters used, PSNR and SSIM, or
the error message. ``--resume`` reads it to skip files already done with the same key and
parameters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import InputError
from .atomic import atomic_write_text

MANIFEST_NAME = "unlearnable-manifest.json"
SCHEMA = "unlearnable.manifest"
SCHEMA_VERSION = 1


class ManifestError(InputError):
    """A manifest is unreadable or does not follow the schema."""


@dataclass
class FileRecord:
    """What happened to one input file. ``status`` is ``ok`` or ``error``."""

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
    cluster: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if v is not None}
        if "psnr" in data and not math.isfinite(data["psnr"]):
            data["psnr"] = None  # identical images: infinite PSNR is not JSON
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        known = {k: data.get(k) for k in cls.__dataclass_fields__}
        if not isinstance(known["path"], str) or known["status"] not in {"ok", "error"}:
            raise ManifestError(f"malformed file record: {data!r:.200}")
        return cls(**known)


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
                "classes": {name: index for index, name in enumerate(self.classes)},
            },
            **self.extra,
            "summary": self.summary,
            "files": [record.to_json() for record in self.files],
        }

    def write(self, folder: Path) -> Path:
        target = folder / MANIFEST_NAME
        atomic_write_text(target, json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")
        return target

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
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ManifestError(f"{path} is not an unlearnable manifest")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema version {data.get('schema_version')}; this tool reads {SCHEMA_VERSION}"
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
            files=[FileRecord.from_json(item) for item in data["files"]],
            summary=data.get("summary", {}),
            tool_version=data["tool"]["version"],
            created=data["created"],
            extra={k: v for k, v in data.items() if k not in standard},
        )
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path} does not follow the manifest schema: missing {exc}") from None
