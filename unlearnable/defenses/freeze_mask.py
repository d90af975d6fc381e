"""FreezeAsGuard mask files: which tensors (or output channels) of a released model are frozen.

A mask is learned for one released model and names its tensors as in
``model.named_parameters()`` of the masked module (the classifier network itself, or the UNet of
a diffusion pipeline). The file is JSON (schema ``unlearnable.freeze-mask``, version
:data:`MASK_VERSION`)::

    {
      "schema": "unlearnable.freeze-mask", "schema_version": 1,
      "tool_version": "0.1.0", "created": "2026-11-22T04:00:00+00:00",
      "task": "classification",
      "level": "tensor",                      # or "channel" (slices along dim 0)
      "target_ratio": 0.2,
      "model": {"fingerprint": "sha256:...",  # names, shapes and dtypes of every parameter
                "release_digest": "sha256:...",  # the values of the frozen tensors / slices
                "tensors": 18, "parameters": 390000},
      "frozen": {"3.weight": null, ...},      # name -> null (whole tensor) or channel indices
      "excluded": ["13.weight", "13.bias"],   # never masked (e.g. the classifier head)
      "share": {"tensors": 0.22, "parameters": 0.41, "groups": 0.2},
      "tensors": [{"name": ..., "shape": [...], "numel": ..., "frozen": 1.0,
                   "score": [...]}, ...],     # every parameter, in model order
      "metadata": {...}                       # how it was learned (config, losses)
    }

``share.tensors`` is the frozen fraction of all parameter tensors (a tensor with half its
channels frozen counts one half), ``share.parameters`` the frozen fraction of all parameter
elements, ``share.groups`` the frozen fraction of the maskable groups (what the target ratio
constrains). :meth:`FreezeMask.check` refuses a model whose parameter names, shapes or dtypes
differ from the fingerprint (another architecture, a renamed model), naming what differs;
:meth:`FreezeMask.check_release` refuses frozen values that are not the release's (someone
already changed them: the protection would not hold). Enforced fine-tuning never changes
frozen values, so a model fine-tuned under its mask still passes both checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..errors import InputError, IntegrityError, UsageError

MASK_SCHEMA = "unlearnable.freeze-mask"
MASK_VERSION = 1
MASK_FILE = "mask.json"
LEVELS = ("tensor", "channel")
_LISTED = 5


class MaskFileError(InputError):
    """A mask file cannot be read, or does not belong to the model it is used with (exit 2)."""


@dataclass(frozen=True)
class TensorInfo:
    """One parameter of the masked module: its name, shape and element count."""

    name: str
    shape: tuple[int, ...]
    numel: int


def parameter_infos(root: nn.Module) -> tuple[TensorInfo, ...]:
    """Every parameter of ``root`` in ``named_parameters()`` order."""
    return tuple(
        TensorInfo(name, tuple(int(s) for s in p.shape), int(p.numel()))
        for name, p in root.named_parameters()
    )


def architecture_fingerprint(root: nn.Module) -> str:
    """``sha256:<hex>`` of the parameter names, shapes and dtypes of ``root`` (not the values):
    another architecture, or the same one with renamed or reshaped tensors, gets another one."""
    digest = hashlib.sha256()
    for name, p in root.named_parameters():
        digest.update(f"{name}|{tuple(p.shape)}|{p.dtype}\n".encode())
    return "sha256:" + digest.hexdigest()


def _slices(p: Tensor, channels: tuple[int, ...] | None) -> Tensor:
    if channels is None:
        return p.detach()
    return p.detach()[list(channels)]


def release_digest(root: nn.Module, frozen: Mapping[str, tuple[int, ...] | None]) -> str:
    """``sha256:<hex>`` of the values of the frozen tensors (or channel slices) of ``root``, in
    name order (float32 bytes on the CPU)."""
    params = dict(root.named_parameters())
    digest = hashlib.sha256()
    for name in sorted(frozen):
        values = _slices(params[name], frozen[name]).to("cpu", torch.float32).contiguous()
        digest.update(name.encode() + b"\0")
        digest.update(values.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def resolve_excluded(root: nn.Module, patterns: Iterable[str]) -> tuple[str, ...]:
    """Parameter names of ``root`` matched by ``patterns`` (an exact name, or a module prefix
    such as ``fc`` or ``fc.`` matching ``fc.weight`` and ``fc.bias``). ``UsageError`` for a
    pattern that matches nothing (a typo must not silently mask the head)."""
    names = [name for name, _ in root.named_parameters()]
    chosen: dict[str, None] = {}
    for pattern in patterns:
        prefix = pattern.rstrip(".") + "."
        hits = [n for n in names if n == pattern or n.startswith(prefix)]
        if not hits:
            raise UsageError(
                f"--exclude {pattern!r} matches no parameter; names look like "
                f"{', '.join(names[:4])}"
            )
        chosen.update(dict.fromkeys(hits))
    return tuple(n for n in names if n in chosen)


@dataclass(frozen=True)
class FreezeMask:
    """A binary freezing mask for one released model (see the module docstring).

    ``frozen``: tensor name -> ``None`` (the whole tensor) or the frozen indices along dim 0
    (``level="channel"``). ``tensors``: every parameter of the masked module, in order.
    ``scores``: the learned mask scores per tensor (one value per group), for inspection.
    """

    level: str
    target_ratio: float
    frozen: Mapping[str, tuple[int, ...] | None]
    tensors: tuple[TensorInfo, ...]
    fingerprint: str
    release_digest: str
    excluded: tuple[str, ...] = ()
    task: str = "classification"
    scores: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tool_version: str = __version__
    created: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise UsageError(f"mask level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if not self.created:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            object.__setattr__(self, "created", stamp)
        known = {t.name for t in self.tensors}
        unknown = sorted(set(self.frozen) - known)
        if unknown:
            raise MaskFileError(f"the mask freezes tensors it does not list: {_names(unknown)}")
        both = sorted(set(self.frozen) & set(self.excluded))
        if both:
            raise MaskFileError(f"the mask freezes tensors it also excludes: {_names(both)}")
        infos = {t.name: t for t in self.tensors}
        for name, channels in self.frozen.items():
            if channels is not None:
                self._check_channels(infos[name], channels)

    def _check_channels(self, info: TensorInfo, channels: tuple[int, ...]) -> None:
        """Channel entries only in channel-level masks, unique, within the tensor's dim 0."""
        if self.level != "channel":
            raise MaskFileError(
                f"the {self.level}-level mask lists channels of {info.name}; only channel-level "
                "masks freeze single channels"
            )
        size = info.shape[0] if info.shape else 1
        if not channels:
            raise MaskFileError(f"the mask freezes an empty channel list of {info.name}")
        if len(set(channels)) != len(channels):
            raise MaskFileError(f"the mask lists a channel of {info.name} twice")
        bad = [c for c in channels if not 0 <= c < size]
        if bad:
            raise MaskFileError(
                f"the mask freezes channel(s) {bad[:_LISTED]} of {info.name}, which has "
                f"{size} (dim 0 of shape {list(info.shape)}); it was learned for another model"
            )

    # ------------------------------------------------------------------ shares

    @property
    def frozen_names(self) -> list[str]:
        """Names of the tensors with anything frozen, in model order."""
        return [t.name for t in self.tensors if t.name in self.frozen]

    def frozen_fraction(self, info: TensorInfo) -> float:
        """The frozen fraction of one tensor: 0, 1, or frozen channels / channels."""
        if info.name not in self.frozen:
            return 0.0
        channels = self.frozen[info.name]
        if channels is None:
            return 1.0
        return len(channels) / max(info.shape[0] if info.shape else 1, 1)

    @property
    def share(self) -> dict[str, float]:
        """``{"tensors", "parameters", "groups"}`` frozen shares (see the module docstring)."""
        infos = self.tensors
        fractions = [self.frozen_fraction(t) for t in infos]
        total = sum(t.numel for t in infos) or 1
        excluded = set(self.excluded)
        maskable = [t for t in infos if t.name not in excluded]
        if self.level == "tensor":
            groups = len(maskable)
            frozen_groups = sum(1 for t in maskable if t.name in self.frozen)
        else:
            groups = sum(t.shape[0] if t.shape else 1 for t in maskable)
            frozen_groups = sum(
                (t.shape[0] if t.shape else 1) * self.frozen_fraction(t) for t in maskable
            )
        return {
            "tensors": sum(fractions) / max(len(infos), 1),
            "parameters": sum(f * t.numel for f, t in zip(fractions, infos, strict=True)) / total,
            "groups": frozen_groups / max(groups, 1),
        }

    @property
    def frozen_parameter_count(self) -> int:
        return round(sum(self.frozen_fraction(t) * t.numel for t in self.tensors))

    # ------------------------------------------------------------------ checks

    def check(self, root: nn.Module) -> None:
        """Refuse (``MaskFileError``) a module this mask was not learned for: unknown or missing
        tensor names, other shapes or dtypes (another architecture)."""
        infos = {t.name: t for t in parameter_infos(root)}
        unknown = sorted(n for n in self.frozen if n not in infos)
        if unknown:
            raise MaskFileError(
                f"the mask freezes tensors this model does not have: {_names(unknown)} "
                f"(the model has {len(infos)} tensors, e.g. {_names(list(infos)[:3])}); "
                "it was learned for another model"
            )
        if architecture_fingerprint(root) == self.fingerprint:
            return
        recorded = {t.name: t for t in self.tensors}
        missing = sorted(set(recorded) - set(infos))
        extra = sorted(set(infos) - set(recorded))
        reshaped = sorted(
            n for n in set(recorded) & set(infos) if recorded[n].shape != infos[n].shape
        )
        parts = []
        if missing:
            parts.append(f"missing tensors {_names(missing)}")
        if extra:
            parts.append(f"unexpected tensors {_names(extra)}")
        if reshaped:
            parts.append(
                "other shapes for "
                + _names([f"{n} {list(infos[n].shape)} (mask: {list(recorded[n].shape)})"
                          for n in reshaped])
            )  # fmt: skip
        detail = "; ".join(parts) or "the parameter dtypes differ"
        raise MaskFileError(
            f"the mask does not fit this model (architecture fingerprint differs: {detail}); "
            "a mask only applies to the model it was learned for"
        )

    def check_release(self, root: nn.Module) -> None:
        """``IntegrityError`` when the frozen values of ``root`` are not the release's."""
        if release_digest(root, self.frozen) != self.release_digest:
            raise IntegrityError(
                "the frozen tensors of this model differ from the release the mask was learned "
                "for (someone changed them already), so the mask cannot protect it"
            )

    def frozen_parameters(self, root: nn.Module) -> list[tuple[str, nn.Parameter, Any]]:
        """``(name, parameter, channels or None)`` for every frozen tensor of ``root``."""
        self.check(root)
        params = dict(root.named_parameters())
        return [(n, params[n], self.frozen[n]) for n in self.frozen_names]

    # ------------------------------------------------------------------ JSON

    def to_json_dict(self) -> dict[str, Any]:
        share = self.share
        return {
            "schema": MASK_SCHEMA,
            "schema_version": MASK_VERSION,
            "tool_version": self.tool_version,
            "created": self.created,
            "task": self.task,
            "level": self.level,
            "target_ratio": self.target_ratio,
            "model": {
                "fingerprint": self.fingerprint,
                "release_digest": self.release_digest,
                "tensors": len(self.tensors),
                "parameters": sum(t.numel for t in self.tensors),
            },
            "frozen": {
                n: None if self.frozen[n] is None else list(self.frozen[n])
                for n in self.frozen_names
            },
            "excluded": list(self.excluded),
            "share": share,
            "frozen_tensors": len(self.frozen),
            "frozen_parameters": self.frozen_parameter_count,
            "tensors": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "numel": t.numel,
                    "frozen": self.frozen_fraction(t),
                    "excluded": t.name in self.excluded,
                    "score": list(self.scores.get(t.name, ())),
                }
                for t in self.tensors
            ],
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], source: str = "mask") -> FreezeMask:
        if data.get("schema") != MASK_SCHEMA:
            raise MaskFileError(f"{source} is not a FreezeAsGuard mask (schema {MASK_SCHEMA})")
        version = data.get("schema_version")
        if not isinstance(version, int) or version > MASK_VERSION:
            raise MaskFileError(
                f"{source} has mask schema version {version}; this unlearnable reads up to "
                f"{MASK_VERSION} (upgrade unlearnable)"
            )
        try:
            tensors = tuple(
                TensorInfo(str(t["name"]), tuple(int(s) for s in t["shape"]), int(t["numel"]))
                for t in data["tensors"]
            )
            frozen = {
                str(n): None if c is None else tuple(int(i) for i in c)
                for n, c in data["frozen"].items()
            }
            scores = {
                str(t["name"]): tuple(float(s) for s in t.get("score", ())) for t in data["tensors"]
            }
            model = data["model"]
            return cls(
                level=str(data["level"]),
                target_ratio=float(data["target_ratio"]),
                frozen=frozen,
                tensors=tensors,
                fingerprint=str(model["fingerprint"]),
                release_digest=str(model["release_digest"]),
                excluded=tuple(str(n) for n in data.get("excluded", ())),
                task=str(data.get("task", "classification")),
                scores=scores,
                metadata=dict(data.get("metadata", {})),
                tool_version=str(data.get("tool_version", "")),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, MaskFileError):
                raise
            raise MaskFileError(f"{source} is damaged: {type(exc).__name__}: {exc}") from None


def build_mask(
    root: nn.Module,
    frozen: Mapping[str, tuple[int, ...] | None] | Iterable[str],
    *,
    level: str = "tensor",
    target_ratio: float | None = None,
    excluded: Iterable[str] = (),
    task: str = "classification",
    scores: Mapping[str, tuple[float, ...]] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> FreezeMask:
    """A :class:`FreezeMask` of ``root`` (the module the mask names, with its released values)
    that freezes ``frozen``: tensor names, or name -> channel indices (``None``: the whole
    tensor). ``target_ratio`` defaults to the frozen share of the maskable groups. Use it for
    hand-made masks and baselines (random masks, the largest-change heuristic)."""
    if not isinstance(frozen, Mapping):
        frozen = dict.fromkeys(frozen)
    frozen = {n: None if c is None else tuple(sorted(int(i) for i in c)) for n, c in frozen.items()}
    params = dict(root.named_parameters())
    unknown = sorted(set(frozen) - set(params))
    if unknown:
        raise UsageError(f"no parameters named {_names(unknown)} in the model")
    excluded = tuple(n for n in params if n in set(excluded))
    mask = FreezeMask(
        level=level,
        target_ratio=0.0 if target_ratio is None else float(target_ratio),
        frozen=frozen,
        tensors=parameter_infos(root),
        fingerprint=architecture_fingerprint(root),
        release_digest=release_digest(root, frozen),
        excluded=excluded,
        task=task,
        scores=dict(scores or {}),
        metadata=dict(metadata or {}),
    )
    if target_ratio is None:
        object.__setattr__(mask, "target_ratio", mask.share["groups"])
    return mask


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    more = len(items) - _LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def mask_path(path: str | Path) -> Path:
    """A mask file, or a folder holding :data:`MASK_FILE` (a ``freeze`` run folder)."""
    path = Path(path)
    return path / MASK_FILE if path.is_dir() else path


def save_mask(mask: FreezeMask, path: str | Path) -> Path:
    """Write ``mask`` as JSON to ``path`` (a ``.json`` file, or a folder: ``path/mask.json``),
    atomically. Returns the file written."""
    from ..io.atomic import atomic_write_text
    from ..run_folder import strict_json

    target = Path(path)
    if target.suffix.lower() != ".json":
        target = target / MASK_FILE
    atomic_write_text(target, strict_json(mask.to_json_dict()))
    return target


def load_mask(path: str | Path) -> FreezeMask:
    """Read a mask file written by :func:`save_mask` (or the ``mask.json`` of a folder).
    ``MaskFileError`` for a missing, damaged, foreign or too new file."""
    target = mask_path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MaskFileError(f"mask file not found: {target}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MaskFileError(f"cannot read mask file {target}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MaskFileError(f"mask file {target} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MaskFileError(f"mask file {target} is not a FreezeAsGuard mask")
    return FreezeMask.from_json_dict(data, str(target))


__all__ = [
    "LEVELS",
    "MASK_FILE",
    "MASK_SCHEMA",
    "MASK_VERSION",
    "FreezeMask",
    "MaskFileError",
    "TensorInfo",
    "architecture_fingerprint",
    "build_mask",
    "load_mask",
    "mask_path",
    "parameter_infos",
    "release_digest",
    "resolve_excluded",
    "save_mask",
]
