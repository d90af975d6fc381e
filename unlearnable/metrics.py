"""Image quality of a protected copy against its original: PSNR, SSIM and the visual cost.

All three are measured at viewing size (:func:`unlearnable.visual_cost.viewing_factor`: images
of 384 px and more on the short side are average-pooled to about 256 px, as Wang et al.'s
reference SSIM code does), so a 6 MP photo costs about as much as a thumbnail and the numbers
describe what a viewer sees. PSNR (all channels) and SSIM (on the grey image, the mean of the
channels) compare pixel by pixel, so a shift counts against them; the visual cost
(:mod:`unlearnable.visual_cost`, every channel) forgives shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .visual_cost import ssim as _ssim_channels
from .visual_cost import to_viewing_size, viewing_factor, visual_cost_at_view


def psnr(original: Tensor, protected: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, ``(B,)``; ``inf`` for identical images.

    Both inputs are ``(B, C, H, W)`` float in [0, 1] (peak 1), compared as given.
    """
    mse = (original.float() - protected.float()).square().mean(dim=(1, 2, 3))
    return torch.where(
        mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-20)), torch.full_like(mse, float("inf"))
    )


def ssim(original: Tensor, protected: Tensor) -> Tensor:
    """Structural similarity per image, ``(B,)`` in [-1, 1], of the grey images (channel means)
    at viewing size (windows as :func:`unlearnable.visual_cost.ssim`). Inputs:
    ``(B, C, H, W)`` float in [0, 1] or uint8."""
    factor = viewing_factor(*original.shape[-2:])
    a = to_viewing_size(original, factor).mean(dim=1, keepdim=True)
    b = to_viewing_size(protected, factor).mean(dim=1, keepdim=True)
    return _ssim_channels(a, b)


@dataclass(frozen=True)
class Quality:
    """Per-image quality, each ``(B,)`` float: ``psnr`` (dB, ``inf`` when identical), ``ssim``
    (grey) and ``visual_cost`` (shift-tolerant ``1 - SSIM``), all at viewing size."""

    psnr: Tensor
    ssim: Tensor
    visual_cost: Tensor


def quality(original: Tensor, protected: Tensor) -> Quality:
    """PSNR, SSIM and visual cost of ``protected`` against ``original`` (``(B, C, H, W)``, equal
    shapes, float in [0, 1] or uint8: uint8 avoids any full-size float copy of a large image),
    pooling each image to viewing size once for all three."""
    factor = viewing_factor(*original.shape[-2:])
    original_view = to_viewing_size(original, factor)
    protected_view = to_viewing_size(protected, factor)
    greys = original_view.mean(dim=1), protected_view.mean(dim=1)
    return Quality(
        psnr=psnr(original_view, protected_view),
        ssim=_ssim_channels(greys[0].unsqueeze(1), greys[1].unsqueeze(1)),
        visual_cost=visual_cost_at_view(
            original, protected, original_view, protected_view, factor, greys=greys
        ),
    )
