"""Archives of models we did not build: TorchScript (``torch.jit.save``) and ``torch.export``
(``.pt2``). They carry their own code, so the caller gives the class names (and the input size
and normalisation where the archive does not fix them); a probe run checks the output size."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from ..errors import ModelFileError, UsageError
from .formats import FORMAT_EXPORT, FORMAT_TORCHSCRIPT, sha256_file, short_error
from .loaded import LoadedModel
from .request import LoadRequest, require
from .spec import ModelSpec


def _archive_spec(request: LoadRequest, size: int, channels: int) -> ModelSpec:
    try:
        return ModelSpec(
            classes=request.classes or (),
            input_size=size,
            in_channels=channels,
            mean=request.mean,
            std=request.std,
            normalized_by_model=request.mean is None,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def load_torchscript(path: Path, request: LoadRequest) -> LoadedModel:
    require(request, path, "classes", "input_size")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
            module = torch.jit.load(str(path), map_location=request.device)
    except Exception as exc:
        if request.device.type != "cpu" and "device" in str(exc).lower():
            raise UsageError(
                f"cannot load {path} on device {str(request.device)!r}: {short_error(exc)}"
            ) from exc
        raise ModelFileError(f"cannot load TorchScript archive {path}: {short_error(exc)}") from exc
    spec = _archive_spec(request, int(request.input_size or 0), request.in_channels or 3)
    loaded = LoadedModel(
        module, spec, source=path, source_format=FORMAT_TORCHSCRIPT, sha256=sha256_file(path)
    )
    return _probe(loaded.to(request.device), path)


def load_export(path: Path, request: LoadRequest) -> LoadedModel:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelFileError(
            f"cannot load torch.export archive {path}: {short_error(exc)}"
        ) from exc
    if request.device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        try:
            program = move_to_device_pass(program, request.device)
        except (RuntimeError, AssertionError) as exc:
            raise UsageError(
                f"cannot load {path} on device {str(request.device)!r}: {short_error(exc)}"
            ) from exc
    batch, channels, size = _export_input_shape(program, path)
    if size is not None and request.input_size not in (None, size):
        raise UsageError(f"{path} was exported for {size} px inputs, not {request.input_size}")
    if channels is not None and request.in_channels not in (None, channels):
        raise UsageError(f"{path} was exported for {channels} channels, not {request.in_channels}")
    request = dataclasses.replace(request, input_size=request.input_size or size)
    require(request, path, "classes", "input_size")
    spec = _archive_spec(
        request, int(request.input_size or 0), channels or request.in_channels or 3
    )
    loaded = LoadedModel(
        program.module(),
        spec,
        source=path,
        source_format=FORMAT_EXPORT,
        sha256=sha256_file(path),
        fixed_batch=batch,
    )
    return _probe(loaded.to(request.device), path)


def _export_input_shape(program, path: Path) -> tuple[int | None, int | None, int | None]:
    """(static batch, channels, square size) of an exported program's single image input."""
    inputs = list(program.graph_signature.user_inputs)
    if len(inputs) != 1:
        raise ModelFileError(f"{path} takes {len(inputs)} inputs; a classifier takes one image")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0])
    shape = getattr(node.meta.get("val"), "shape", None)
    if shape is None or len(shape) != 4:
        raise ModelFileError(f"{path} takes inputs of shape {shape}, not (B, C, H, W)")
    static = [d if isinstance(d, int) else None for d in shape]
    height, width = static[2], static[3]
    if height is not None and width is not None and height != width:
        raise ModelFileError(
            f"{path} was exported for {height}x{width} inputs; models take square images "
            "(centre-cropped and resized): export it for a square size, or with dynamic sizes"
        )
    size = height if height is not None and height == width else None
    return static[0], static[1], size


def _probe(loaded: LoadedModel, path: Path) -> LoadedModel:
    spec = loaded.spec
    batch = loaded.fixed_batch or 1
    zeros = torch.zeros(
        batch, spec.in_channels, spec.input_size, spec.input_size, dtype=loaded.input_dtype
    )
    try:
        with torch.no_grad():
            out = loaded.run_prepared(zeros.to(loaded.device))
    except Exception as exc:
        hint = "" if "tensor of logits" in str(exc) else "; check input_size and in_channels"
        raise ModelFileError(
            f"{path} fails on a {tuple(zeros.shape)} input ({short_error(exc)}){hint}"
        ) from exc
    if out.ndim != 2 or out.shape[1] != spec.num_classes:
        raise ModelFileError(
            f"class count does not match: {spec.num_classes} classes given, but {path} gives "
            f"outputs of shape {tuple(out.shape)}"
        )
    return loaded


__all__ = ["load_export", "load_torchscript"]
