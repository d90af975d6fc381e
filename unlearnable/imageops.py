"""Small tensor operations on images shared by the pipelines (no file handling here)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def resize_center_crop(images: Tensor, size: int) -> Tensor:
    """Centre-crop to a square (the short side) and resize to ``size x size``.

    images: ``(B, C, H, W)`` float; returns ``(B, C, size, size)``, same dtype and device. The
    resize is bilinear with antialiasing (so downsizing averages instead of aliasing);
    differentiable. A new tensor is returned; the input is not modified.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    side = min(height, width)
    if height != width:
        top = (height - side) // 2
        left = (width - side) // 2
        images = images[..., top : top + side, left : left + side]
    if side == size:
        return images.clone()
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def square_rgb(pixels: np.ndarray, size: int) -> Tensor:
    """uint8 ``(H, W, 1|3)`` -> float ``(3, size, size)`` in [0, 1]: grey repeated to RGB, then
    :func:`resize_center_crop`."""
    image = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    return resize_center_crop(image, size)[0]


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] (any shape) -> uint8 by rounding (values outside are clamped)."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def to_pixels(images: Tensor, reuse: bool = False) -> np.ndarray:
    """Float images ``(B, C, H, W)`` in [0, 1] -> uint8 ``(B, H, W, C)`` (the layout of image
    files), exactly ``to_uint8(images).permute(0, 2, 3, 1)``. ``reuse``: ``images`` may be
    overwritten (it is a temporary the caller owns), which saves a full-size float copy."""
    work = images.detach().cpu()
    work = work.mul_(255.0) if reuse and work.is_floating_point() else work.mul(255.0)
    work.round_().clamp_(0, 255)
    out = np.empty((work.shape[0], work.shape[2], work.shape[3], work.shape[1]), np.uint8)
    with np.errstate(invalid="ignore"):  # NaN (never produced by a protection) becomes 0
        np.copyto(out, work.permute(0, 2, 3, 1).numpy(), casting="unsafe")
    return out
