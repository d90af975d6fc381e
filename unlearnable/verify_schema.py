"""The ``unlearnable.verify-report`` schema (version 2; version 1 reports still validate):
:func:`validate_report` checks a report dict (e.g. read back from a ``report.json``) before it
is written or plotted. Version 2 added ``per_by_size`` (one row per scraper resolution) and each
attack's ``image_size``."""

from __future__ import annotations

from typing import Any

from .verify import SCHEMA, SCHEMA_VERSION, TRAIN_SETS, VERDICTS

READABLE_VERSIONS = (1, SCHEMA_VERSION)


def _fail(path: str, message: str) -> None:
    raise ValueError(f"invalid verify report at {path}: {message}")


def _require(
    d: Any, path: str, key: str, types: type | tuple[type, ...], nullable: bool = False
) -> Any:
    if not isinstance(d, dict):
        _fail(path, f"expected an object, got {type(d).__name__}")
    if key not in d:
        _fail(path, f"missing key {key!r}")
    value = d[key]
    if value is None and nullable:
        return value
    number = types in (float, (int, float))
    if number and isinstance(value, bool):
        _fail(f"{path}.{key}", f"expected a number, got {value!r}")
    if not isinstance(value, types):
        expected = (
            types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        )
        _fail(
            f"{path}.{key}",
            f"expected {expected}{' or null' if nullable else ''}, got {type(value).__name__}",
        )
    return value


_NUM = (int, float)


def validate_report(d: dict) -> None:
    """Check that ``d`` follows the ``unlearnable.verify-report`` schema (version 1 or 2).

    Raises ``ValueError`` naming the first offending path (e.g. ``report.attacks[0].runs[1]``)
    and what is wrong with it; returns ``None`` for a valid report.
    """
    r = "report"
    if not isinstance(d, dict):
        _fail(r, f"expected an object, got {type(d).__name__}")
    if _require(d, r, "schema", str) != SCHEMA:
        _fail(f"{r}.schema", f"expected {SCHEMA!r}, got {d['schema']!r}")
    version = _require(d, r, "schema_version", int)
    if version not in READABLE_VERSIONS:
        _fail(
            f"{r}.schema_version",
            f"this version reads versions {', '.join(map(str, READABLE_VERSIONS))}, got {version}",
        )
    _require(d, r, "created", str)
    vers = _require(d, r, "versions", dict)
    for key in ("unlearnable", "torch", "python"):
        _require(vers, f"{r}.versions", key, str)
    _require(d, r, "model", str)
    config = _require(d, r, "config", dict)
    for key in ("epochs", "batch_size"):
        _require(config, f"{r}.config", key, int)
    for key in ("lr", "momentum", "weight_decay"):
        _require(config, f"{r}.config", key, _NUM)
    _require(config, f"{r}.config", "schedule", str)
    seeds = _require(d, r, "seeds", list)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _fail(f"{r}.seeds", "expected a non-empty list of integers")
    data = _require(d, r, "data", dict)
    for key in ("num_train", "num_test", "num_classes"):
        _require(data, f"{r}.data", key, int)
    _require(data, f"{r}.data", "image_shape", list)
    _require(data, f"{r}.data", "class_names", list)
    th = _require(d, r, "thresholds", dict)
    _require(th, f"{r}.thresholds", "protected", _NUM)
    _require(th, f"{r}.thresholds", "weak", _NUM)
    verdict = _require(d, r, "verdict", str)
    if verdict not in VERDICTS:
        _fail(f"{r}.verdict", f"expected one of {VERDICTS}, got {verdict!r}")
    worst = _require(d, r, "worst_attack", str, nullable=True)
    _require(d, r, "worst_per", _NUM, nullable=True)
    notes = _require(d, r, "notes", list)
    if not all(isinstance(n, str) for n in notes):
        _fail(f"{r}.notes", "expected a list of strings")
    attacks = _require(d, r, "attacks", list)
    if not attacks:
        _fail(f"{r}.attacks", "expected at least one attack")
    names = [_validate_attack(a, f"{r}.attacks[{i}]", version) for i, a in enumerate(attacks)]
    if worst is not None and worst not in names:
        _fail(f"{r}.worst_attack", f"{worst!r} is not one of the attacks {names}")
    if version >= 2:
        _validate_sizes(d, r, names)
    if verdict != "inconclusive" and worst is None:
        _fail(f"{r}.worst_attack", f"verdict {verdict!r} needs a worst attack")


def _validate_sizes(d: dict, r: str, names: list[str]) -> None:
    rows = _require(d, r, "per_by_size", list)
    if not rows:
        _fail(f"{r}.per_by_size", "expected at least one row")
    for i, row in enumerate(rows):
        rp = f"{r}.per_by_size[{i}]"
        _require(row, rp, "image_size", int, nullable=True)
        worst = _require(row, rp, "worst_attack", str, nullable=True)
        if worst is not None and worst not in names:
            _fail(f"{rp}.worst_attack", f"{worst!r} is not one of the attacks {names}")
        _require(row, rp, "per_peak", _NUM, nullable=True)
        _require(row, rp, "per_last", _NUM, nullable=True)
        if _require(row, rp, "verdict", str) not in VERDICTS:
            _fail(f"{rp}.verdict", f"expected one of {VERDICTS}, got {row['verdict']!r}")


def _validate_attack(a: Any, path: str, version: int = SCHEMA_VERSION) -> str:
    name = _require(a, path, "name", str)
    if version >= 2:
        _require(a, path, "image_size", int, nullable=True)
    _require(a, path, "params", dict)
    _require(a, path, "chance", _NUM)
    for train_set in TRAIN_SETS:
        s = _require(a, path, train_set, dict)
        sp = f"{path}.{train_set}"
        for key in ("peak_mean", "last_mean"):
            _require(s, sp, key, _NUM)
        for key in ("peak_std", "last_std"):
            _require(s, sp, key, _NUM, nullable=True)
        for key in ("peak", "last"):
            _require(s, sp, key, list)
    for key in ("per_peak", "per_last", "per_peak_raw", "per_last_raw"):
        _require(a, path, key, _NUM, nullable=True)
    _require(a, path, "notes", list)
    runs = _require(a, path, "runs", list)
    if not runs:
        _fail(f"{path}.runs", "expected at least one run")
    for i, run in enumerate(runs):
        rp = f"{path}.runs[{i}]"
        ts = _require(run, rp, "train_set", str)
        if ts not in TRAIN_SETS:
            _fail(f"{rp}.train_set", f"expected one of {TRAIN_SETS}, got {ts!r}")
        _require(run, rp, "seed", int)
        _require(run, rp, "peak_test_acc", _NUM)
        _require(run, rp, "last_test_acc", _NUM)
        _require(run, rp, "peak_epoch", int)
        epochs = _require(run, rp, "epochs", list)
        if not epochs:
            _fail(f"{rp}.epochs", "expected at least one epoch")
        for j, row in enumerate(epochs):
            ep = f"{rp}.epochs[{j}]"
            _require(row, ep, "epoch", int)
            _require(row, ep, "test_acc", _NUM)
            _require(row, ep, "lr", _NUM)
            _require(row, ep, "seconds", _NUM)
            _require(row, ep, "train_loss", _NUM, nullable=True)
            _require(row, ep, "train_acc", _NUM, nullable=True)
    return name


__all__ = ["validate_report"]
