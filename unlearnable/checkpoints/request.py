"""What the caller of :func:`~unlearnable.checkpoints.load_model` said about the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelFileError


@dataclass(frozen=True)
class LoadRequest:
    """What the caller of :func:`load_model` said about the model (``None``: not said)."""

    arch: str | None
    input_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    classes: tuple[str, ...] | None
    in_channels: int | None
    trust_pickle: bool
    device: torch.device


def require(request: LoadRequest, path: Path, *names: str) -> None:
    """Raise :class:`ModelFileError` naming the arguments (and CLI options) still needed."""
    flags = {"arch": "--arch", "classes": "--classes", "input_size": "--input-size"}
    missing = [n for n in names if getattr(request, n) is None]
    if missing:
        wanted = ", ".join(f"{n}= ({flags[n]})" for n in missing)
        raise ModelFileError(f"{path} holds no model description: pass {wanted}")


__all__ = ["LoadRequest", "require"]
