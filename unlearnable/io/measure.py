"""The quality of protected files as written: PSNR, SSIM and visual cost for the manifest.

:func:`written_quality` compares each original with its file as written, so a lossy format
counts; how a lossy file is read back depends on the run's metrics version
(:data:`unlearnable.metrics.METRICS_VERSION`, defined in :mod:`unlearnable.metrics`): version 1
decodes it in full, version 2 (and 3, which differs only in the visual cost's shift search)
decodes a large JPEG at a reduced scale with the JPEG decoder's own scaled inverse DCT
(:func:`jpeg_view`), which saves the second full decode of a photo.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..metrics import Quality, quality
from ..visual_cost import to_viewing_size, viewing_factor
from .images import decode_pixels

DRAFT_SCALES = (8,)
"""Reduced JPEG decoding scales that metrics version 2 uses, largest first. Only 1/8: its
inverse DCT keeps just each 8 x 8 block's mean (exact for the grey channel up to rounding);
the 1/4 and 1/2 decodings approximate their block means from part of the coefficients, which
changed the visual cost of noisy test photos by up to 12%."""


def written_quality(
    originals: Tensor,
    protected: Sequence[np.ndarray],
    files: Sequence[bytes],
    lossy: Sequence[bool],
    metrics_version: int,
) -> Quality:
    """Quality of each written file against its original.

    Args:
        originals: uint8 ``(B, C, H, W)``, the decoded inputs.
        protected: B uint8 ``(H, W, C)`` arrays, the protected pixels that were encoded.
        files: the B encoded files; ``lossy``: whether each was written in a lossy format
            (else it holds exactly ``protected``).
        metrics_version: 1, 2 or 3 (see :mod:`unlearnable.metrics`).
    """
    _, channels, height, width = originals.shape
    factor = viewing_factor(height, width)
    scale = draft_scale(factor) if metrics_version >= 2 else 1
    stored: list[np.ndarray] = []
    views: list[Tensor | None] = []
    for pixels, data, is_lossy in zip(protected, files, lossy, strict=True):
        view = None
        if is_lossy and scale > 1:
            view = jpeg_view(data, channels, (width, height), factor, scale)
        if is_lossy and view is None:  # the file as written, decoded in full
            pixels = decode_pixels(data, channels, (width, height))
        stored.append(pixels)
        views.append(view)
    written = _tensor(stored[0][None] if len(stored) == 1 else np.stack(stored))
    written = written.permute(0, 3, 1, 2)
    protected_view = None
    if any(view is not None for view in views):
        protected_view = torch.stack(
            [
                view if view is not None else to_viewing_size(written[i : i + 1], factor)[0]
                for i, view in enumerate(views)
            ]
        )
    return quality(originals, written, protected_view, line_refine=metrics_version >= 3)


def draft_scale(factor: int) -> int:
    """The largest JPEG reduced scale ``s`` of :data:`DRAFT_SCALES` that divides the viewing
    ``factor``; 1 when there is none."""
    return next((s for s in DRAFT_SCALES if factor % s == 0), 1)


def jpeg_view(
    data: bytes, channels: int, size: tuple[int, int], factor: int, scale: int
) -> Tensor | None:
    """A JPEG file at viewing size: decoded at scale ``1 / scale`` by the JPEG decoder (its
    scaled inverse DCT), then block means of ``factor / scale`` pixels (Pillow's reduce), cut
    as :func:`~unlearnable.visual_cost.to_viewing_size` cuts: float ``(C, H // factor,
    W // factor)`` in [0, 1] for the ``(W, H)`` ``size``. None when ``data`` is not a JPEG of
    that size and mode that the decoder scales as asked (the caller then decodes in full)."""
    from PIL import Image

    width, height = size
    mode = "L" if channels == 1 else "RGB"
    if data[:2] != b"\xff\xd8":
        return None
    try:
        picture = Image.open(io.BytesIO(data))
        if picture.format != "JPEG" or picture.size != size or picture.mode != mode:
            return None
        picture.draft(mode, (width // scale, height // scale))
        if picture.size != (-(-width // scale), -(-height // scale)) or picture.mode != mode:
            return None
        picture.load()
    except (OSError, ValueError):
        return None
    rest = factor // scale
    box = (0, 0, width // factor * rest, height // factor * rest)
    reduced = np.asarray(picture.reduce(rest, box=box) if rest > 1 else picture.crop(box))
    if reduced.ndim == 2:
        reduced = reduced[..., None]
    return torch.from_numpy(np.array(reduced)).permute(2, 0, 1).float().div_(255.0)


def _tensor(array: np.ndarray) -> Tensor:
    """``torch.from_numpy`` that accepts read-only arrays (Pillow's) without a warning; the
    tensor is only read."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
