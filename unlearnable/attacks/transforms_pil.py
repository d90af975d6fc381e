"""Pillow encode/decode round trips (JPEG, social-media re-upload) on float image batches.

images ``(N, C, H, W)`` float in [0, 1], C in {1, 3} -> same shape and dtype, values on the uint8
grid. Used by the ``jpeg`` and ``reupload`` attacks in :mod:`.squeeze`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..imageops import to_uint8
from .augment import rand_int, rand_uniform
from .transforms import _check_images

__all__ = ["jpeg_compress", "reupload"]


# --------------------------------------------------------------------------------------------
# Pillow round trips (JPEG, re-upload)
# --------------------------------------------------------------------------------------------


def _to_pil(hwc: np.ndarray) -> Image.Image:
    if hwc.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(hwc[:, :, 0]))  # mode "L"
    if hwc.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(hwc))  # mode "RGB"
    raise ValueError(f"Pillow codecs need 1 or 3 channels, got {hwc.shape[2]}")


def _from_pil(img: Image.Image, channels: int) -> np.ndarray:
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


def _encode_decode(img: Image.Image, fmt: str, **params: Any) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def _map_pil(images: Tensor, per_image: Callable[[Image.Image, int], Image.Image]) -> Tensor:
    """Apply ``per_image(pil_image, index)`` to each uint8-quantised image; back to float."""
    _check_images(images)
    channels = images.shape[1]
    arrays = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([_from_pil(per_image(_to_pil(a), i), channels) for i, a in enumerate(arrays)])
    return (
        torch.from_numpy(out).permute(0, 3, 1, 2).to(device=images.device, dtype=images.dtype)
        / 255.0
    )


def jpeg_compress(images: Tensor, quality: int = 10, subsampling: str | None = None) -> Tensor:
    """JPEG round trip at ``quality`` through Pillow (ISS, ICML 2023: quality 10).

    Each image is quantised with :func:`to_uint8`, encoded (``subsampling``: Pillow's chroma
    subsampling, ``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"``; None: Pillow's default, 4:2:0 for RGB)
    and decoded. images ``(N, C, H, W)`` float in [0, 1], C in {1, 3} -> same shape and dtype,
    values on the uint8 grid.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    options: dict[str, Any] = {"quality": int(quality)}
    if subsampling is not None:
        if subsampling not in ("4:4:4", "4:2:2", "4:2:0"):
            raise ValueError(f"subsampling must be 4:4:4, 4:2:2 or 4:2:0, got {subsampling!r}")
        options["subsampling"] = subsampling
    return _map_pil(images, lambda img, _: _encode_decode(img, "JPEG", **options))


def reupload(
    images: Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 0.9),
    jpeg_quality: tuple[int, int] = (75, 95),
    webp_quality: int = 80,
) -> Tensor:
    """A realistic social-media re-upload: resize down and back, JPEG, then WebP.

    Per image: a factor ``f ~ U(scale)``; downscale to ``round(f * (H, W))`` and back to ``(H, W)``
    with Pillow's bicubic resize (antialiased when shrinking); JPEG at a quality uniform in
    ``jpeg_quality`` (inclusive) with 4:2:0 chroma subsampling; then lossy WebP at
    ``webp_quality``. images ``(N, C, H, W)`` float in [0, 1], C in {1, 3} -> same shape and dtype.
    """
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    q_lo, q_hi = jpeg_quality
    if not 1 <= q_lo <= q_hi <= 100:
        raise ValueError(f"jpeg_quality must satisfy 1 <= lo <= hi <= 100, got {jpeg_quality}")
    n, _, h, w = images.shape
    factors = (lo + (hi - lo) * rand_uniform((n,), generator, dtype=torch.float64)).tolist()
    qualities = rand_int(q_lo, q_hi + 1, (n,), generator).tolist()
    bicubic = Image.Resampling.BICUBIC

    def one(img: Image.Image, i: int) -> Image.Image:
        small = (max(1, round(w * factors[i])), max(1, round(h * factors[i])))
        img = img.resize(small, bicubic).resize((w, h), bicubic)
        img = _encode_decode(img, "JPEG", quality=int(qualities[i]), subsampling="4:2:0")
        return _encode_decode(img, "WEBP", quality=int(webp_quality))

    return _map_pil(images, one)
