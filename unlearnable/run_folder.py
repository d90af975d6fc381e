"""Run folders for every command that trains or tests models (verify, scan, freeze, audit).

One layout, written atomically, so every report can be traced and compared::

    folder/
      config.json     schema "unlearnable.<kind>-config": the full config, seeds, provenance
      report.json     schema "unlearnable.<kind>-report" with its version: the results
      <name>.csv      per-epoch / per-step rows (``write_rows``, as ``training.rows_to_csv``)
      <name>.png      plots (``write_plot``, see :mod:`unlearnable.plots`)
      report.md       the human-readable report

Usage::

    run = RunFolder(output, kind="scan")
    run.write_config({"exposure": asdict(config)}, seeds=[0])
    run.write_rows("epochs.csv", history.rows)
    run.write_plot("histogram.png", line_plot(...))
    run.write_report(report_dict, version=1)
    run.write_markdown(text)

``verify`` writes the same files through :mod:`unlearnable.report`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .io.atomic import atomic_write_bytes, atomic_write_text
from .provenance import provenance
from .training.callbacks import rows_to_csv


def finite(obj: Any) -> Any:
    """A copy of ``obj`` with non-finite floats (NaN, inf) replaced by ``None`` (strict JSON);
    dicts, lists and tuples are copied recursively (tuples become lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def strict_json(obj: Any) -> str:
    """Indented JSON text of :func:`finite` ``(obj)``, UTF-8 kept."""
    return json.dumps(finite(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def fresh_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... whichever does not exist yet."""
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def default_run_folder(kind: str, base: Path = Path("unlearnable-runs")) -> Path:
    """A new ``base/<kind>-YYYYMMDDTHHMMSS`` folder path (UTC; ``-2``, ``-3``... if taken): the
    default output of every command that writes a run folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return fresh_folder(base / f"{kind}-{stamp}")


class RunFolder:
    """A run folder of one ``kind`` (``"scan"``, ``"freeze"``, ``"audit"``...), created on use."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind
        self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def _target(self, name: str) -> Path:
        if Path(name).name != name:
            raise ValueError(f"run-folder file names are plain names, got {name!r}")
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path / name

    def write_config(self, config: Mapping[str, Any], seeds: Iterable[int] = ()) -> Path:
        """``config.json``: ``config`` plus the seeds, the creation time and provenance."""
        data = {
            "schema": f"unlearnable.{self.kind}-config",
            "schema_version": 1,
            "created": self.created,
            "provenance": provenance(),
            "seeds": [int(s) for s in seeds],
            "config": dict(config),
        }
        target = self._target("config.json")
        atomic_write_text(target, strict_json(data))
        return target

    def write_report(self, report: Mapping[str, Any], version: int) -> Path:
        """``report.json`` with ``schema`` ``unlearnable.<kind>-report`` and ``version``."""
        data = {
            "schema": f"unlearnable.{self.kind}-report",
            "schema_version": version,
            "created": self.created,
            **dict(report),
        }
        target = self._target("report.json")
        atomic_write_text(target, strict_json(data))
        return target

    def write_rows(self, name: str, rows: Sequence[Mapping[str, Any]], columns=None) -> Path:
        target = self._target(name)
        atomic_write_text(target, rows_to_csv(rows, columns))
        return target

    def write_plot(self, name: str, png: bytes) -> Path:
        target = self._target(name)
        atomic_write_bytes(target, png)
        return target

    def write_markdown(self, text: str, name: str = "report.md") -> Path:
        target = self._target(name)
        atomic_write_text(target, text if text.endswith("\n") else text + "\n")
        return target


__all__ = ["RunFolder", "default_run_folder", "finite", "fresh_folder", "strict_json"]
