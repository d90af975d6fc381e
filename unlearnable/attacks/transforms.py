"""Pure image transforms used by the data-transform attacks (:mod:`.squeeze`).

Every transform is a function on float images ``(N, C, H, W)`` in ``[0, 1]`` that returns a new
tensor of the same shape, dtype and range and never changes its input. Random ones take a
``torch.Generator`` and are deterministic for its state. This module holds the pixel-domain
squeezes and filters, the training-time corruptions (COIN, random blur) and partial protection;
Pillow round trips live in :mod:`.transforms_pil`, DCT and RSK+FF in :mod:`.transforms_frequency`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..imageops import to_uint8
from .augment import rand_int, rand_perm, rand_uniform

__all__ = [
    "BT601",
    "bit_depth_reduce",
    "coin_warp",
    "gaussian_filter",
    "grayscale",
    "median_filter",
    "partial_mask",
    "partial_mix",
    "random_blur",
]

#: ITU-R BT.601 luma weights for (R, G, B).
BT601 = (0.299, 0.587, 0.114)


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"expected float images (N, C, H, W), got {tuple(images.shape)} {images.dtype}"
        )


def _as_float(images: Tensor) -> Tensor:
    """uint8 -> float32 / 255; float is passed through (no copy)."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def _like(images: Tensor, reference: Tensor) -> Tensor:
    """Float images in [0, 1] in ``reference``'s dtype (uint8 by rounding)."""
    return to_uint8(images) if reference.dtype == torch.uint8 else images.to(reference.dtype)


# --------------------------------------------------------------------------------------------
# Deterministic squeezes and filters
# --------------------------------------------------------------------------------------------


def grayscale(images: Tensor) -> Tensor:
    """ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` replicated to 3 channels (ISS).

    images ``(N, 3, H, W)`` float in [0, 1] -> same shape and dtype with three equal channels;
    a 1-channel input is returned as a copy.
    """
    _check_images(images)
    if images.shape[1] == 1:
        return images.clone()
    if images.shape[1] != 3:
        raise ValueError(f"grayscale needs 1 or 3 channels, got {images.shape[1]}")
    weights = torch.tensor(BT601, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    luma = (images * weights).sum(dim=1, keepdim=True).clamp(0.0, 1.0)
    return luma.expand(-1, 3, -1, -1).contiguous()


def bit_depth_reduce(images: Tensor, bits: int = 2) -> Tensor:
    """Bit-depth reduction to ``2**bits`` evenly spaced levels: ``round(x * L) / L``, ``L = 2**bits - 1``.

    ISS's "BDR" and the feature-squeezing form of Xu et al. (NDSS 2018). images ``(N, C, H, W)``
    float in [0, 1] -> same shape and dtype, at most ``2**bits`` distinct values including 0 and 1.
    """
    _check_images(images)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8], got {bits}")
    levels = float(2**bits - 1)
    return torch.round(images.clamp(0.0, 1.0) * levels) / levels


def median_filter(images: Tensor, kernel_size: int = 3) -> Tensor:
    """Median filter (kornia ``median_blur``, reflect border). ``(N, C, H, W)`` in [0, 1] -> same."""
    import kornia.filters

    _check_images(images)
    return kornia.filters.median_blur(images, (kernel_size, kernel_size), border_type="reflect")


def gaussian_filter(images: Tensor, kernel_size: int = 3, sigma: float = 1.0) -> Tensor:
    """Gaussian blur (kornia ``gaussian_blur2d``, reflect border). ``(N, C, H, W)`` in [0, 1] -> same."""
    import kornia.filters

    _check_images(images)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    out = kornia.filters.gaussian_blur2d(
        images, (kernel_size, kernel_size), (float(sigma), float(sigma))
    )
    return out.clamp(0.0, 1.0)


def _per_image_depthwise(images: Tensor, kernels: Tensor, padding_mode: str) -> Tensor:
    """Cross-correlate image ``n`` (every channel) with ``kernels[n]``: ``(N, k, k)``, odd ``k``."""
    n, c, h, w = images.shape
    k = kernels.shape[-1]
    pad = (k - 1) // 2
    x = images.reshape(1, n * c, h, w)
    x = (
        F.pad(x, (pad, pad, pad, pad), mode=padding_mode)
        if padding_mode != "zeros"
        else F.pad(x, (pad,) * 4)
    )
    weight = kernels.to(images.dtype).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(x, weight, groups=n * c).reshape(n, c, h, w)


# --------------------------------------------------------------------------------------------
# Training-time corruptions (COIN, random blur)
# --------------------------------------------------------------------------------------------


def coin_warp(images: Tensor, generator: torch.Generator, alpha: float = 2.0) -> Tensor:
    """COIN (Wang et al., arXiv 2311.18403): random per-pixel bilinear re-interpolation.

    Output pixel ``(y, x)`` of image ``n`` is the bilinear sample of the input at ``(y + dy, x +
    dx)``, with ``dy, dx ~ U(-alpha, alpha)`` pixels drawn independently per pixel and image (the
    same offset for every channel); positions outside the image are clamped to the border.
    ``alpha = 0`` is the identity. ``(N, C, H, W)`` float in [0, 1] -> same shape, dtype and range.
    """
    _check_images(images)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    n, _, h, w = images.shape
    offsets = (
        2.0 * rand_uniform((n, h, w, 2), generator, images.device, dtype=images.dtype) - 1.0
    ) * alpha
    ys = torch.arange(h, dtype=images.dtype, device=images.device).view(1, h, 1)
    xs = torch.arange(w, dtype=images.dtype, device=images.device).view(1, 1, w)
    px = xs + offsets[..., 0]
    py = ys + offsets[..., 1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels.
    gx = 2.0 * px / max(w - 1, 1) - 1.0
    gy = 2.0 * py / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.clamp(0.0, 1.0)


def random_blur(
    images: Tensor, generator: torch.Generator, p: float = 0.1, kernel_size: int = 3
) -> Tensor:
    """Random CUDA-like blur, one filter per image (the CUDA paper's random-blur augmentation, 5.2).

    Each filter has entries ``U(0, p)`` with one uniformly chosen tap set to 1, is applied
    depthwise with the same kernel on every channel (zero padding ``(k - 1) / 2``), and the result
    is divided by the image's maximum over all channels and pixels (as CUDA does).
    ``(N, C, H, W)`` float in [0, 1] -> same shape, dtype and range.
    """
    _check_images(images)
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    n, k = images.shape[0], kernel_size
    taps = p * rand_uniform((n, k * k), generator, images.device, dtype=images.dtype)
    one = rand_int(0, k * k, (n, 1), generator, images.device)
    taps = taps.scatter(1, one, 1.0).view(n, k, k)
    out = _per_image_depthwise(images, taps, "zeros")
    peak = out.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return (out / peak).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Partial protection
# --------------------------------------------------------------------------------------------


def partial_mask(n: int, ratio: float, generator: torch.Generator) -> Tensor:
    """A bool mask ``(n,)`` with exactly ``round(ratio * n)`` True entries at random positions."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    k = int(round(ratio * n))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[rand_perm(n, generator, "cpu")[:k]] = True
    return mask


def partial_mix(
    images: Tensor, clean_images: Tensor, ratio: float, generator: torch.Generator
) -> Tensor:
    """A partly protected training set: ``images`` where :func:`partial_mask` is True, else
    ``clean_images`` (aligned ``(N, C, H, W)`` tensors, float in [0, 1] or uint8; the result has
    ``images``' dtype). CUDA paper, Table 5 ("mixed")."""
    if images.shape != clean_images.shape:
        raise ValueError(
            f"images {tuple(images.shape)} and clean_images {tuple(clean_images.shape)} differ"
        )
    mask = partial_mask(images.shape[0], ratio, generator).to(images.device).view(-1, 1, 1, 1)
    clean = (
        clean_images
        if clean_images.dtype == images.dtype
        else _like(_as_float(clean_images), images)
    )
    return torch.where(mask, images, clean.to(images.device))
