"""What a model file says about its model: :class:`ModelSpec` and the ``model.json`` schema.

``model.json`` (schema ``unlearnable.model``, version :data:`SCHEMA_VERSION`)::

    {
      "schema": "unlearnable.model",
      "schema_version": 1,
      "tool_version": "0.1.0",
      "builder": {"name": "resnet20",
                  "args": {"num_classes": 10, "image_size": 32, "in_channels": 3}},
      "weights": {"file": "model.safetensors", "format": "safetensors", "sha256": "..."},
      "classes": ["airplane", "automobile", ...],            # names in output order
      "input": {"size": 32, "channels": 3, "value_range": [0.0, 1.0],
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                "normalized_by_model": true},
      "metadata": {...}                                     # free-form, e.g. how it was trained
    }

``builder.name`` is a victim name of :func:`unlearnable.models.build_victim` (a ``VICTIMS``
entry or ``tv:NAME``), called as ``build_victim(name, **args)``. ``input.normalized_by_model``
says whether the network applies ``mean``/``std`` itself (our victims do, with a fixed
:class:`~unlearnable.models.Normalize` layer first) or the caller has to, before the forward.
Readers refuse a ``schema_version`` newer than theirs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__
from ..errors import ModelFileError

SCHEMA_NAME = "unlearnable.model"
SCHEMA_VERSION = 1
"""The ``model.json`` schema version this package writes and the newest it reads."""

#: Key of the spec (the ``model.json`` text without the weights entry) in the safetensors header
#: metadata, so a ``model.safetensors`` copied on its own still describes its model.
SAFETENSORS_SPEC_KEY = "unlearnable.model"

#: Builder arguments that ``model.json`` may carry (those of ``build_victim`` besides the name).
BUILDER_ARGS = ("num_classes", "image_size", "in_channels")


@dataclass(frozen=True)
class ModelSpec:
    """A classifier's description: how to rebuild it and how to feed it.

    ``classes``: class names in output order (logit ``i`` is ``classes[i]``); at least 2, unique.
    ``input_size``: the square side S in pixels the network takes; images ``(B, C, H, W)`` are
    centre-cropped and resized to ``S x S`` before the forward.
    ``arch``: the builder name (``"resnet20"``, ``"tv:resnet50"``, see
    :func:`unlearnable.models.build_victim`); ``None`` for archives that carry their own code
    (TorchScript, ``torch.export``). ``in_channels``: 1 or 3 typically.
    ``mean``/``std``: per-channel input normalisation (1 or ``in_channels`` values each), or
    ``None`` when none is known or needed. ``normalized_by_model``: ``True`` when the network
    applies it itself and takes raw [0, 1] pixels (our victims); ``False`` when the caller must
    apply ``(x - mean) / std`` first (then ``mean`` and ``std`` are required).
    ``metadata``: free-form JSON-serialisable facts (training data, epochs, seed, ...).
    ``tool_version``: the ``unlearnable`` version that wrote the file.
    """

    classes: tuple[str, ...]
    input_size: int
    arch: str | None = None
    in_channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    normalized_by_model: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tool_version: str = __version__

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the field types once, here
        if isinstance(self.classes, str):
            raise ValueError("classes must be a sequence of names, not one string")
        set_(self, "classes", tuple(str(name) for name in self.classes))
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {len(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        if int(self.input_size) < 1 or int(self.in_channels) < 1:
            raise ValueError(
                f"input_size and in_channels must be >= 1, got {self.input_size}, "
                f"{self.in_channels}"
            )
        set_(self, "input_size", int(self.input_size))
        set_(self, "in_channels", int(self.in_channels))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _channel_values(name, value, self.in_channels))
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        if not self.normalized_by_model and self.mean is None:
            raise ValueError("normalized_by_model=False needs the mean and std to apply")
        set_(self, "metadata", dict(self.metadata))
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json_dict(self, weights: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``model.json`` content; ``weights`` is the ``{"file", "format", "sha256"}`` entry."""
        data: dict[str, Any] = {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "builder": None
            if self.arch is None
            else {
                "name": self.arch,
                "args": {
                    "num_classes": self.num_classes,
                    "image_size": self.input_size,
                    "in_channels": self.in_channels,
                },
            },
        }
        if weights is not None:
            data["weights"] = dict(weights)
        data["classes"] = list(self.classes)
        data["input"] = {
            "size": self.input_size,
            "channels": self.in_channels,
            "value_range": [0.0, 1.0],
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "normalized_by_model": self.normalized_by_model,
        }
        data["metadata"] = dict(self.metadata)
        return data

    @classmethod
    def from_json_dict(cls, data: object, source: str) -> ModelSpec:
        """Parse ``model.json`` content; ``source`` names the file in error messages.

        Raises :class:`~unlearnable.errors.ModelFileError` for another schema, a newer schema
        version, missing or malformed fields, builder arguments that disagree with the classes
        or the input size, and unknown builder argument names.
        """
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
            raise ModelFileError(f"{source} is not an unlearnable model description")
        version = data.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise ModelFileError(f"{source}: bad schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise ModelFileError(
                f"{source} uses model schema version {version}, newer than this unlearnable "
                f"({__version__}) reads (up to {SCHEMA_VERSION}); upgrade unlearnable"
            )
        try:
            inputs = data["input"]
            builder = data.get("builder")
            arch = None
            if builder is not None:
                arch = str(builder["name"])
                _check_builder_args(builder.get("args", {}), data, source)
            return cls(
                classes=tuple(data["classes"]),
                input_size=int(inputs["size"]),
                arch=arch,
                in_channels=int(inputs.get("channels", 3)),
                mean=_optional_floats(inputs.get("mean")),
                std=_optional_floats(inputs.get("std")),
                normalized_by_model=bool(inputs.get("normalized_by_model", True)),
                metadata=data.get("metadata") or {},
                tool_version=str(data.get("tool_version", "unknown")),
            )
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelFileError(f"{source}: malformed model description ({detail})") from exc


def _check_builder_args(args: object, data: dict, source: str) -> None:
    if not isinstance(args, dict):
        raise ModelFileError(f"{source}: builder.args must be an object")
    unknown = sorted(set(args) - set(BUILDER_ARGS))
    if unknown:
        raise ModelFileError(
            f"{source}: unknown builder arguments {unknown}; known: {list(BUILDER_ARGS)}"
        )
    classes = data.get("classes")
    if "num_classes" in args and isinstance(classes, list) and args["num_classes"] != len(classes):
        raise ModelFileError(
            f"{source}: class count does not match: the builder makes {args['num_classes']} "
            f"outputs but {len(classes)} class names are listed"
        )
    size = data.get("input", {}).get("size") if isinstance(data.get("input"), dict) else None
    if "image_size" in args and size is not None and args["image_size"] != size:
        raise ModelFileError(
            f"{source}: builder image_size {args['image_size']} differs from input size {size}"
        )
    channels = data["input"].get("channels") if isinstance(data.get("input"), dict) else None
    if "in_channels" in args and channels is not None and args["in_channels"] != channels:
        raise ModelFileError(
            f"{source}: builder in_channels {args['in_channels']} differs from input channels "
            f"{channels}"
        )


def _optional_floats(values: object) -> tuple[float, ...] | None:
    if values is None:
        return None
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"expected a list of numbers, got {values!r}")
    return tuple(float(v) for v in values)


def _channel_values(name: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = (values,)
    out = tuple(float(v) for v in values)
    if len(out) not in (1, channels):
        raise ValueError(f"{name} needs 1 or {channels} values, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} values must be finite, got {out}")
    return out


def spec_to_json_text(spec: ModelSpec, weights: Mapping[str, Any] | None = None) -> str:
    """``model.json`` text: indented, keys in schema order, a trailing newline."""
    return json.dumps(spec.to_json_dict(weights), indent=2, allow_nan=False) + "\n"


__all__ = [
    "BUILDER_ARGS",
    "SAFETENSORS_SPEC_KEY",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "ModelSpec",
    "spec_to_json_text",
]
