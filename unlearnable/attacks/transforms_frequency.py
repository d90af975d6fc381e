"""Frequency-domain transforms: orthonormal 2-D DCT, DCT low-pass and RSK+FF sharpening.

images ``(N, C, H, W)`` float; see each function for range and clamping. Used by the
``sharpen-ff`` attack in :mod:`.squeeze`.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .augment import rand_uniform
from .transforms import _check_images, _per_image_depthwise

__all__ = [
    "dct2",
    "dct_lowpass",
    "dct_matrix",
    "idct2",
    "lowpass_band",
    "random_sharpen",
    "sharpen_frequency_filter",
]


# --------------------------------------------------------------------------------------------
# DCT (orthonormal DCT-II as a matrix product) and the RSK+FF transform
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _dct_matrix_cached(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    k = torch.arange(n, dtype=torch.float64).view(n, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, n)
    mat = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2.0 / n) ** 0.5
    mat[0] = mat[0] / 2**0.5
    return mat.to(dtype=dtype, device=device)


def dct_matrix(
    n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``n x n``): ``D[k, i] = s_k cos(pi (2i + 1) k / 2n)``,
    ``s_0 = sqrt(1/n)``, ``s_k = sqrt(2/n)``. ``D @ D.T = I``; ``D @ x`` is the DCT of a column ``x``."""
    return _dct_matrix_cached(int(n), dtype, torch.device(device))


def dct2(images: Tensor) -> Tensor:
    """2-D orthonormal DCT-II over the last two dims of ``(..., H, W)``: ``D_H X D_W^T``."""
    h, w = images.shape[-2:]
    dh = dct_matrix(h, images.dtype, images.device)
    dw = dct_matrix(w, images.dtype, images.device)
    return dh @ images @ dw.T


def idct2(coeffs: Tensor) -> Tensor:
    """Inverse of :func:`dct2` over the last two dims: ``D_H^T Y D_W``."""
    h, w = coeffs.shape[-2:]
    dh = dct_matrix(h, coeffs.dtype, coeffs.device)
    dw = dct_matrix(w, coeffs.dtype, coeffs.device)
    return dh.T @ coeffs @ dw


def lowpass_band(h: int, w: int, keep: float) -> tuple[int, int]:
    """The kept DCT band of :func:`dct_lowpass`: rows ``u < kh``, columns ``v < kw``, with
    ``kh = max(1, round(keep * h))`` and ``kw = max(1, round(keep * w))``."""
    return max(1, round(keep * h)), max(1, round(keep * w))


def dct_lowpass(images: Tensor, keep: float = 0.3) -> Tensor:
    """Keep the lowest ``keep`` fraction of 2-D DCT frequencies along each axis, per channel.

    Coefficients ``(u, v)`` with ``u < round(keep * H)`` and ``v < round(keep * W)`` are kept, the
    rest are zeroed (an ideal low-pass in the DCT domain; the DC term is always kept). Not
    clamped: ``(N, C, H, W)`` -> same shape and dtype, values may leave [0, 1] slightly.

    "Lowest 30%" is read per axis (the RSK+FF paper's wording does not say per axis or by
    area): ``keep=0.3`` keeps 10 x 10 of 32 x 32 coefficients (~10% by area); ``keep=0.55``
    keeps ~30% of the coefficients by area.
    """
    _check_images(images)
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    h, w = images.shape[-2:]
    kh, kw = lowpass_band(h, w, keep)
    mask = torch.zeros(h, w, dtype=images.dtype, device=images.device)
    mask[:kh, :kw] = 1.0
    return idct2(dct2(images) * mask)


def random_sharpen(images: Tensor, generator: torch.Generator, centre: float = 2.5) -> Tensor:
    """Random 3x3 sharpening kernels, one per image (RSK of Kim & Sandoval-Segura 2024).

    Kernel: centre tap ``centre``; the eight neighbours share ``-(centre - 1)`` in random
    proportions ``u_i / sum(u)``, ``u_i ~ U(0, 1)`` from ``generator``, so every kernel sums to 1
    (flat regions are kept). The same kernel is used on every channel of an image; the border is
    replicate-padded. Not clamped: ``(N, C, H, W)`` -> same shape and dtype.
    """
    _check_images(images)
    n = images.shape[0]
    u = rand_uniform((n, 8), generator, images.device, dtype=images.dtype) + 1e-6
    neighbours = -(centre - 1.0) * u / u.sum(dim=1, keepdim=True)
    centre_col = torch.full((n, 1), float(centre), dtype=images.dtype, device=images.device)
    kernels = torch.cat([neighbours[:, :4], centre_col, neighbours[:, 4:]], dim=1).view(n, 3, 3)
    return _per_image_depthwise(images, kernels, "replicate")


def sharpen_frequency_filter(
    images: Tensor, generator: torch.Generator, centre: float = 2.5, keep: float = 0.3
) -> Tensor:
    """RSK+FF (Kim & Sandoval-Segura, arXiv 2411.01742): :func:`random_sharpen` then
    :func:`dct_lowpass` (keep the lowest ``keep`` of the DCT frequencies per axis and channel),
    clamped to [0, 1]. ``(N, C, H, W)`` float in [0, 1] -> same shape, dtype and range."""
    return dct_lowpass(random_sharpen(images, generator, centre), keep).clamp(0.0, 1.0)
