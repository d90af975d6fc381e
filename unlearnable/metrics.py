"""Image quality of a protected copy against its original: PSNR and SSIM, per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.metrics import ssim as kornia_ssim
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)


def psnr(original: Tensor, protected: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, ``(B,)``; ``inf`` for identical images.

    Both inputs are ``(B, C, H, W)`` float in [0, 1] (peak 1).
    """
    mse = (original.float() - protected.float()).pow(2).mean(dim=(1, 2, 3))
    return torch.where(
        mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-20)), torch.full_like(mse, float("inf"))
    )


def ssim(original: Tensor, protected: Tensor, window: int = 11) -> Tensor:
    """Structural similarity per image, ``(B,)`` in [-1, 1], on the luma channel.

    As Wang et al.'s reference implementation recommends, images are first downsampled by
    ``f = max(1, round(min(H, W) / 256))`` (average pooling), so the score reflects what a viewer
    sees and costs the same for a photo as for a thumbnail. Inputs: ``(B, C, H, W)`` in [0, 1].
    """
    a, b = _luma(original.float()), _luma(protected.float())
    factor = max(1, round(min(a.shape[-2:]) / 256))
    if factor > 1:
        a, b = F.avg_pool2d(a, factor), F.avg_pool2d(b, factor)
    window = min(window, *a.shape[-2:])
    window -= 1 - window % 2  # odd
    return kornia_ssim(a, b, window, max_val=1.0).mean(dim=(1, 2, 3))


def _luma(images: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images[:, :3] * weights).sum(dim=1, keepdim=True)
