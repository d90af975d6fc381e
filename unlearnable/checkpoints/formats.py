"""Which kind of model file is this (by content, not by name), and the one safe state-dict reader.

Formats (:func:`detect_format`):

* ``"unlearnable"``: our ``model.json`` (or a folder holding one);
* ``"safetensors"``: a safetensors file (8-byte little-endian header length, then a JSON header);
* ``"pickle"``: a ``torch.save`` file (zip with ``data.pkl``, or a legacy raw pickle);
* ``"torchscript"``: a ``torch.jit.save`` zip (``constants.pkl`` and a ``code/`` folder);
* ``"torch-export"``: a ``torch.export.save`` archive (``.pt2``: ``archive_format``,
  ``models/*.json``).

Pickles can run arbitrary code when loaded; :func:`read_state_dict` refuses them unless the
caller trusts the file, and even then reads them with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ModelFileError
from ..io.hashing import sha256_file
from .spec import SCHEMA_NAME

FORMAT_UNLEARNABLE = "unlearnable"
FORMAT_SAFETENSORS = "safetensors"
FORMAT_PICKLE = "pickle"
FORMAT_TORCHSCRIPT = "torchscript"
FORMAT_EXPORT = "torch-export"

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"

#: Keys under which training scripts commonly nest the state dict in a checkpoint.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


class UntrustedPickleError(ModelFileError):
    """A pickle-based file was refused because the caller did not say it trusts it."""


@dataclass(frozen=True, eq=False)
class WeightsFile:
    """A state dict read from a file: ``tensors`` (name -> CPU tensor; ``state_dict`` wrappers
    and ``module.`` prefixes removed), the file's ``sha256``, its ``format`` (``"safetensors"`` or
    ``"pickle"``) and, for safetensors, the header's string ``metadata``."""

    tensors: dict[str, Tensor]
    sha256: str
    format: str
    metadata: dict[str, str] = field(default_factory=dict)


def short_error(exc: BaseException, limit: int = 300) -> str:
    """One line from a (often multi-page) torch exception: the unpickler's reason when there is
    one, else the last non-empty line, cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if "WeightsUnpickler error:" in line), None)
    if reason is not None:
        reason = reason.split(". Please use", 1)[0]
    else:
        reason = lines[-1] if lines else type(exc).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def pickle_refusal(path: Path, flag: str = "trust_pickle=True (--trust-pickle)") -> str:
    """The message for a refused pickle; ``flag`` names the opt-in to pass."""
    return (
        f"refusing to load {path}: it is a pickle-based PyTorch file, and loading one can run "
        f"arbitrary code. Convert it to .safetensors, or, if you trust the file, pass {flag}; "
        "it is then read with torch.load(weights_only=True)."
    )


def detect_format(path: str | Path) -> str:
    """The format of ``path`` (one of the ``FORMAT_*`` names), judged by content.

    A folder is our format when it holds ``model.json``. Raises
    :class:`~unlearnable.errors.ModelFileError` for a missing path, an empty, truncated or
    unknown file, or a zip that is no PyTorch archive.
    """
    path = Path(path)
    if path.is_dir():
        if (path / MODEL_JSON).is_file():
            return FORMAT_UNLEARNABLE
        raise ModelFileError(f"{path} is a folder without {MODEL_JSON}")
    if not path.is_file():
        raise ModelFileError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(16)
    if not head:
        raise ModelFileError(f"{path} is empty")
    if head[:4] in _ZIP_MAGIC:
        return _zip_format(path)
    if _looks_like_safetensors(head, size):
        return FORMAT_SAFETENSORS
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return FORMAT_PICKLE
    if head.lstrip()[:1] == b"{" and size < 16 * 1024 * 1024:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("schema") == SCHEMA_NAME:
            return FORMAT_UNLEARNABLE
    raise ModelFileError(
        f"{path}: unknown checkpoint format (not safetensors, a PyTorch pickle, a TorchScript "
        "or torch.export archive, or an unlearnable model.json), or a damaged file"
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len <= min(size - 8, _MAX_SAFETENSORS_HEADER) and head[8:9] == b"{"


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path}: truncated or damaged zip archive ({exc})") from exc
    inner = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in inner or any(
        n.startswith("models/") and n.endswith(".json") for n in inner
    ):
        return FORMAT_EXPORT
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        return FORMAT_TORCHSCRIPT
    if "data.pkl" in inner:
        return FORMAT_PICKLE
    raise ModelFileError(f"{path}: a zip archive, but no PyTorch checkpoint or archive")


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors header (``{}`` when it has none)."""
    path = Path(path)
    with path.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if header_len > _MAX_SAFETENSORS_HEADER:
            raise ModelFileError(f"{path}: safetensors header too large")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ModelFileError(f"{path}: damaged safetensors header ({exc})") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in (metadata or {}).items()}


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> WeightsFile:
    """Read a state dict from a safetensors file or (with ``trust_pickle``) a PyTorch pickle.

    The format is taken from the content. Pickles are read with
    ``torch.load(map_location="cpu", weights_only=True)``. A ``{"state_dict": {...}}`` style
    wrapper (also ``model_state_dict``, ``model``) is unwrapped and a ``module.`` prefix on
    every key (from ``DataParallel``) is removed. Raises
    :class:`~unlearnable.errors.ModelFileError` (:class:`UntrustedPickleError` for a pickle
    without ``trust_pickle``) when the file is missing, unreadable or holds no plain state dict.
    """
    path = Path(path)
    kind = detect_format(path)
    metadata: dict[str, str] = {}
    if kind == FORMAT_SAFETENSORS:
        from safetensors.torch import load_file

        metadata = read_safetensors_metadata(path)
        try:
            state: object = load_file(str(path), device="cpu")
        except Exception as exc:  # the library raises its own SafetensorError and others
            raise ModelFileError(
                f"cannot read safetensors file {path} (truncated or damaged?): {short_error(exc)}"
            ) from exc
    elif kind == FORMAT_PICKLE:
        if not trust_pickle:
            raise UntrustedPickleError(pickle_refusal(path))
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelFileError(
                f"cannot read {path} with torch.load(weights_only=True) ({short_error(exc)}). A "
                "whole pickled model (torch.save(model)) cannot be read safely: save "
                "model.state_dict() instead, or export the model with torch.export or TorchScript."
            ) from exc
    elif kind in (FORMAT_TORCHSCRIPT, FORMAT_EXPORT):
        raise ModelFileError(
            f"{path} is a {kind} archive, not a state dict; load it with load_model()"
        )
    else:
        raise ModelFileError(f"{path} is a model description, not a weights file")
    tensors = _plain_state_dict(state, path)
    return WeightsFile(tensors=tensors, sha256=sha256_file(path), format=kind, metadata=metadata)


def _plain_state_dict(state: object, path: Path) -> dict[str, Tensor]:
    if isinstance(state, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())
    ):
        raise ModelFileError(f"{path} does not hold a plain state dict of tensors")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


__all__ = [
    "FORMAT_EXPORT",
    "FORMAT_PICKLE",
    "FORMAT_SAFETENSORS",
    "FORMAT_TORCHSCRIPT",
    "FORMAT_UNLEARNABLE",
    "MODEL_JSON",
    "MODEL_WEIGHTS",
    "UntrustedPickleError",
    "WeightsFile",
    "detect_format",
    "pickle_refusal",
    "read_safetensors_metadata",
    "read_state_dict",
    "sha256_file",
    "short_error",
]
