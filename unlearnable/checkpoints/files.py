"""Save our models (safetensors + ``model.json``) and load models of every accepted kind."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import IntegrityError, ModelFileError, UsageError
from ..io.atomic import atomic_write_bytes, atomic_write_text
from ..models import Normalize, build_victim, check_victim_name
from .archives import load_export, load_torchscript
from .formats import (
    FORMAT_EXPORT,
    FORMAT_PICKLE,
    FORMAT_SAFETENSORS,
    FORMAT_TORCHSCRIPT,
    FORMAT_UNLEARNABLE,
    MODEL_JSON,
    MODEL_WEIGHTS,
    WeightsFile,
    detect_format,
    read_safetensors_metadata,
    read_state_dict,
)
from .loaded import LoadedModel
from .request import LoadRequest, require
from .spec import SAFETENSORS_SPEC_KEY, ModelSpec, spec_to_json_text

_MAX_LISTED = 5  # keys named in a mismatch message before "... and N more"


# ----------------------------------------------------------------------------------- saving


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``(model.json path, weights path)`` for a save/load target.

    ``x.json`` or ``x.safetensors`` name a pair by its stem (``x.json`` + ``x.safetensors``);
    any other path is a folder holding ``model.json`` + ``model.safetensors``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return path, path.with_suffix(".safetensors")
    if suffix == ".safetensors":
        return path.with_suffix(".json"), path
    return path / MODEL_JSON, path / MODEL_WEIGHTS


def save_model(model: nn.Module, path: str | Path, spec: ModelSpec) -> Path:
    """Write ``model`` as ``model.safetensors`` + ``model.json`` (see :func:`model_paths`).

    ``spec.arch`` must name a victim builder (:func:`unlearnable.models.build_victim`) and the
    model's state dict must fit the model that builder makes for ``spec`` (checked on a fresh
    build, so a file that saves also loads). When ``spec.mean``/``std`` are not given and the
    model normalises itself, they are read from its first
    :class:`~unlearnable.models.Normalize` layer. Each file is written atomically (temp file +
    rename), weights first; ``model.json`` records the weights' SHA-256, so a pair torn by a
    crash between the two writes is detected on load. The spec is also stored in the
    safetensors header, so the weights file alone still loads. Returns the ``model.json`` path.
    """
    if spec.arch is None:
        raise UsageError(
            "save_model needs spec.arch, the victim builder that rebuilds the model "
            "(e.g. 'resnet20', 'tv:resnet50'); save other models with torch.export"
        )
    try:
        check_victim_name(spec.arch)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    spec = _with_normalization(spec, model)
    tensors = {
        name: value.detach().to("cpu").contiguous().clone()
        for name, value in model.state_dict().items()
    }
    reference = _build(spec, f"spec for {spec.arch}", UsageError)
    _check_fit(reference, tensors, spec, "the model to save", UsageError)
    from safetensors.torch import save as safetensors_bytes

    data = safetensors_bytes(
        tensors, metadata={"format": "pt", SAFETENSORS_SPEC_KEY: spec_to_json_text(spec)}
    )
    json_path, weights_path = model_paths(path)
    weights = {
        "file": weights_path.name,
        "format": FORMAT_SAFETENSORS,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_bytes(weights_path, data)
    atomic_write_text(json_path, spec_to_json_text(spec, weights))
    return json_path


# ----------------------------------------------------------------------------------- loading


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    in_channels: int | None = None,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a classifier from ``path``, in eval mode on ``device``; see :class:`LoadedModel`.

    Accepted (the format is detected from the content, see
    :func:`~unlearnable.checkpoints.detect_format`):

    * our format: a folder with ``model.json`` + ``model.safetensors``, either file of such a
      pair, or a lone ``.safetensors`` written by :func:`save_model` (its header holds the
      spec). The keyword arguments are optional; those given must agree with the file, except
      ``classes``, which renames the classes (same count);
    * a state dict for a registered architecture: ``arch`` (``"resnet20"``, ``"tv:resnet50"``),
      ``classes`` and ``input_size`` are required (``in_channels`` defaults to 3). A
      safetensors file, or a pickled ``.pt``/``.pth`` only with ``trust_pickle=True`` (then read
      with ``torch.load(weights_only=True)``);
    * TorchScript (``torch.jit.save``) and ``torch.export`` (``.pt2``) archives of models we did
      not build: ``classes`` and ``input_size`` are required (an export with static shapes
      gives its own input size and channels); pass ``mean`` and ``std`` when the model expects
      normalised inputs (they are then applied before it). The archive is run once on a zero
      batch to check that it gives ``len(classes)`` outputs.

    Raises :class:`~unlearnable.errors.ModelFileError` for an unknown, damaged or truncated
    file, a pickle without ``trust_pickle``, a ``model.json`` naming an unknown builder or a
    newer schema version, weights that do not fit the architecture (missing, unexpected or
    mis-shaped keys, named), a class count that does not match the output size, and missing
    required arguments; :class:`~unlearnable.errors.IntegrityError` when ``model.safetensors``
    is not the file ``model.json`` was written with.
    """
    if (mean is None) != (std is None):
        raise UsageError("give both mean and std, or neither")
    request = LoadRequest(
        arch=arch,
        input_size=input_size,
        mean=None if mean is None else tuple(float(v) for v in mean),
        std=None if std is None else tuple(float(v) for v in std),
        classes=None if classes is None else tuple(str(c) for c in classes),
        in_channels=in_channels,
        trust_pickle=trust_pickle,
        device=_device(device),
    )
    path = Path(path)
    kind = detect_format(path)
    loaded = _LOADERS[kind](path, request)
    try:
        return loaded.to(request.device).train(False)
    except (RuntimeError, AssertionError) as exc:  # no such device, or torch built without it
        raise UsageError(f"cannot run the model on device {device!r}: {exc}") from exc


def _device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with a usage error for a name torch does not know."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}: {exc}") from exc


def _load_ours(path: Path, request: LoadRequest) -> LoadedModel:
    json_path, weights_path = (
        model_paths(path) if path.is_dir() else (path, path.with_suffix(".safetensors"))
    )
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"cannot read {json_path}: {exc}") from exc
    spec = ModelSpec.from_json_dict(data, str(json_path))
    entry = data.get("weights") or {}
    if isinstance(entry, dict) and entry.get("file"):
        weights_path = json_path.parent / Path(str(entry["file"])).name
    if not weights_path.is_file():
        raise ModelFileError(f"{json_path} names weights {weights_path.name}, which are missing")
    if detect_format(weights_path) != FORMAT_SAFETENSORS:
        raise ModelFileError(f"{weights_path}: the weights of our format must be safetensors")
    weights = read_state_dict(weights_path)
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    if expected and expected != weights.sha256:
        raise IntegrityError(
            f"{weights_path} is not the weights file {json_path.name} was written with (SHA-256 "
            "differs): an interrupted save, or the file was replaced; save the model again"
        )
    return _from_spec(spec, weights, weights_path, FORMAT_UNLEARNABLE, request)


def _load_safetensors(path: Path, request: LoadRequest) -> LoadedModel:
    json_path = path.with_suffix(".json")
    if json_path.is_file() and detect_format(json_path) == FORMAT_UNLEARNABLE:
        return _load_ours(json_path, request)
    text = read_safetensors_metadata(path).get(SAFETENSORS_SPEC_KEY)
    if text is not None:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelFileError(f"{path}: damaged model description in header") from exc
        spec = ModelSpec.from_json_dict(data, f"{path} (header)")
        return _from_spec(spec, read_state_dict(path), path, FORMAT_UNLEARNABLE, request)
    return _load_state_dict(path, request)


def _load_state_dict(path: Path, request: LoadRequest) -> LoadedModel:
    # Refuse an untrusted pickle before complaining about missing arguments.
    weights = read_state_dict(path, trust_pickle=request.trust_pickle)
    require(request, path, "arch", "classes", "input_size")
    try:
        spec = ModelSpec(
            classes=request.classes or (),
            input_size=request.input_size or 0,
            arch=request.arch,
            in_channels=request.in_channels or 3,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    loaded = _from_spec(spec, weights, path, weights.format, None)
    if request.mean is not None:
        loaded = _set_normalization(loaded, request, weights, path)
    return loaded


def _set_normalization(
    loaded: LoadedModel, request: LoadRequest, weights: WeightsFile, path: Path
) -> LoadedModel:
    """Give a bare network's normalisation layer the caller's mean/std (a ``tv:NAME`` state
    dict trained with other statistics than ImageNet's). Our architectures normalise inside,
    with a fixed :class:`~unlearnable.models.Normalize` layer: the caller may set it only when
    the file does not record its values (then they must agree)."""
    found = next(
        ((n, m) for n, m in loaded.module.named_modules() if isinstance(m, Normalize)), None
    )
    if found is None:
        raise UsageError(
            f"mean/std cannot be set for {request.arch}: it has no input normalisation"
        )
    name, norm = found
    channels = loaded.spec.in_channels
    mean = torch.tensor(request.mean or (), dtype=norm.mean.dtype).expand(channels)
    std = torch.tensor(request.std or (), dtype=norm.std.dtype).expand(channels)
    key = f"{name}.mean" if name else "mean"
    recorded = any(k == key or k.endswith(f".{key}") for k in weights.tensors)
    if recorded:
        if torch.allclose(norm.mean.flatten(), mean) and torch.allclose(norm.std.flatten(), std):
            return loaded
        raise UsageError(
            f"{path} records its own normalisation (mean={_float32_values(norm.mean)}, "
            f"std={_float32_values(norm.std)}); drop mean/std (--mean/--std)"
        )
    norm.mean.copy_(mean.view_as(norm.mean))
    norm.std.copy_(std.view_as(norm.std))
    spec = dataclasses.replace(
        loaded.spec, mean=_float32_values(norm.mean), std=_float32_values(norm.std)
    )
    return LoadedModel(
        loaded.module,
        spec,
        source=loaded.source,
        source_format=loaded.source_format,
        sha256=loaded.sha256,
    )


def _from_spec(
    spec: ModelSpec, weights: WeightsFile, path: Path, kind: str, request: LoadRequest | None
) -> LoadedModel:
    """Build ``spec.arch``, load the weights; ``request`` (if any) may rename the classes."""
    if request is not None:
        spec = _apply_overrides(spec, request, path)
    model = _build(spec, str(path), ModelFileError)
    tensors = _fit_keys(model, weights.tensors)
    _check_fit(model, tensors, spec, str(path), ModelFileError)
    model.load_state_dict(tensors, strict=True)
    return LoadedModel(
        model,
        _with_normalization(spec, model),
        source=path,
        source_format=kind,
        sha256=weights.sha256,
    )


def _fit_keys(model: nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict with its key names fitted to ``model`` when a known difference is all
    that separates them, else unchanged (for :func:`_check_fit` to name the mismatch).

    Known differences: a prefix shared by every key, one or two levels deep (``_orig_mod.`` from
    ``torch.compile``, ``model.`` from Lightning, ``module.`` left inside a wrapper); the bare
    network of a ``tv:NAME`` wrapper (:func:`_inside_wrapper`); and batch-norm
    ``num_batches_tracked`` counters missing from converted or older files (the fresh model's
    are kept: they only matter for ``momentum=None``). A candidate is taken only when its keys
    are exactly the model's.
    """
    expected = model.state_dict()
    candidate = tensors
    for _ in range(3):
        fitted = _inside_wrapper(model, candidate)
        counters = {
            k: v.clone()
            for k, v in expected.items()
            if k.endswith("num_batches_tracked") and k not in fitted
        }
        if set(fitted) | set(counters) == set(expected):
            return {**fitted, **counters}
        heads = {key.split(".", 1)[0] for key in candidate}
        if len(heads) != 1 or not all("." in key for key in candidate):
            break
        head = f"{next(iter(heads))}."
        candidate = {key[len(head) :]: value for key, value in candidate.items()}
    return tensors


def _inside_wrapper(model: nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fit the state dict of a bare network to our wrapper around it, when it is one.

    ``tv:NAME`` victims are ``Sequential(Normalize, net)``: a plain torchvision state dict
    (``conv1.weight``, ...; batch-norm counters may be missing) gets the child's prefix
    (``1.conv1.weight``) and the wrapper's own fixed normalisation buffers. Any other state
    dict is returned as it is.
    """
    expected = model.state_dict()
    if set(tensors) <= set(expected):
        return tensors
    fixed = {
        f"{name}.{buffer}": value
        for name, module in model.named_modules()
        if isinstance(module, Normalize)
        for buffer, value in module.state_dict().items()
    }
    for child, _ in model.named_children():
        prefix = f"{child}."
        inner = {k[len(prefix) :] for k in expected if k.startswith(prefix)}
        if set(tensors) <= inner and _only_counters(inner - set(tensors)):
            adapted = {prefix + key: value for key, value in tensors.items()}
            if _only_counters(set(expected) - set(adapted) - set(fixed)):
                return {**fixed, **adapted}
    return tensors


def _only_counters(keys: set[str]) -> bool:
    """Whether every key of ``keys`` is a batch-norm ``num_batches_tracked`` counter."""
    return all(key.endswith("num_batches_tracked") for key in keys)


def _with_normalization(spec: ModelSpec, model: nn.Module) -> ModelSpec:
    """``spec`` with the mean/std of the model's own first Normalize layer, if not recorded."""
    if spec.mean is not None or not spec.normalized_by_model:
        return spec
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if norm is None:
        return spec
    return dataclasses.replace(spec, mean=_float32_values(norm.mean), std=_float32_values(norm.std))


def _float32_values(values: Tensor) -> tuple[float, ...]:
    """float32 buffer values as the shortest decimals that round-trip (0.485, not 0.48500001)."""
    return tuple(
        float(np.format_float_positional(v, unique=True))
        for v in values.detach().cpu().flatten().numpy()
    )


def _apply_overrides(spec: ModelSpec, request: LoadRequest, path: Path) -> ModelSpec:
    """The file's spec with the caller's class names; other arguments must agree with it."""
    said = {
        "arch": (request.arch, spec.arch),
        "input_size": (request.input_size, spec.input_size),
        "in_channels": (request.in_channels, spec.in_channels),
    }
    for name, (given, recorded) in said.items():
        if given is not None and str(given).lower() != str(recorded).lower():
            raise UsageError(f"{path} holds a model with {name}={recorded!r}, not {given!r}")
    if request.mean is not None and (request.mean, request.std) != (spec.mean, spec.std):
        raise UsageError(
            f"{path} records its own normalisation (mean={spec.mean}, std={spec.std}); "
            "drop mean/std"
        )
    if request.classes is None:
        return spec
    if len(request.classes) != spec.num_classes:
        raise ModelFileError(
            f"class count does not match: {path} has {spec.num_classes} outputs, "
            f"{len(request.classes)} classes given"
        )
    try:
        return dataclasses.replace(spec, classes=request.classes)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _build(spec: ModelSpec, source: str, error: type[Exception]) -> nn.Module:
    if spec.arch is None:
        raise error(f"{source} names no model builder")
    try:
        check_victim_name(str(spec.arch))
    except ValueError as exc:
        raise error(f"{source} names an unknown model builder: {exc}") from exc
    try:  # the weights are replaced: a fixed seed keeps the caller's RNG untouched
        return build_victim(
            str(spec.arch), spec.num_classes, spec.input_size, spec.in_channels, seed=0
        )
    except ValueError as exc:
        raise error(f"cannot build {spec.arch} for {source}: {exc}") from exc


def _check_fit(
    model: nn.Module, tensors: dict[str, Tensor], spec: ModelSpec, source: str, error: type
) -> None:
    """Raise ``error`` naming the missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [
        (k, tuple(tensors[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in tensors and tensors[k].shape != expected[k].shape
    ]
    n = spec.num_classes
    for key, got, want in shapes:
        if want and want[0] == n and got and got[0] != n and got[1:] == want[1:]:
            raise error(
                f"class count does not match: {len(spec.classes)} classes, but the weights in "
                f"{source} have {got[0]} outputs ({key}: {list(got)})"
            )
    problems = []
    if missing and len(missing) == len(expected):
        problems.append("no key in common: the file holds another architecture")
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(
            "shape mismatch: "
            + _listed(
                [f"{k} is {list(g)} in the file, {list(w)} in the model" for k, g, w in shapes]
            )
        )
    if problems:
        raise error(
            f"the weights in {source} do not fit {spec.arch} ({spec.num_classes} classes, "
            f"{spec.input_size} px, {spec.in_channels} channels): " + "; ".join(problems)
        )


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _load_pickle(path: Path, request: LoadRequest) -> LoadedModel:
    return _load_state_dict(path, request)


_LOADERS: dict[str, Callable[[Path, LoadRequest], LoadedModel]] = {
    FORMAT_UNLEARNABLE: _load_ours,
    FORMAT_SAFETENSORS: _load_safetensors,
    FORMAT_PICKLE: _load_pickle,
    FORMAT_TORCHSCRIPT: load_torchscript,
    FORMAT_EXPORT: load_export,
}

__all__ = ["load_model", "model_paths", "save_model"]
