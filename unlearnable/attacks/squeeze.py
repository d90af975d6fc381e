"""Data-transform attacks: squeeze, filter or warp the protected images before (or while) training.

Every transform is a pure function on float images ``(N, C, H, W)`` in ``[0, 1]`` that returns a
new tensor of the same shape, dtype and range and never changes its input. Random ones take a
``torch.Generator`` and are deterministic for its state. Each is also registered as an attack:

============== ============================================================= ======================
name           what the scraper does                                         when
============== ============================================================= ======================
jpeg           JPEG quality 10 round trip (Pillow)                           once, train set
reupload       random downscale + upscale, JPEG q in [75, 95] 4:2:0, WebP 80 once, train set
grayscale      ITU-R BT.601 luma replicated to 3 channels                    once, train AND test
bit-depth      bit-depth reduction to 2 bits                                 once, train set
median         3x3 median filter                                             once, train set
gaussian       3x3 Gaussian blur, sigma 1                                    once, train set
sharpen-ff     random sharpening kernel + DCT low-pass (keep lowest 30%)     once, train set
coin           random per-pixel bilinear re-interpolation, offsets <= 2 px   every batch
random-blur    random CUDA-like 3x3 blur per image, p_b' = 0.1               every batch
partial        only ``ratio`` of the training set is protected               once, train set
============== ============================================================= ======================

Papers: ISS = Liu et al., "Image Shortcut Squeezing: Countering Perturbative Availability Poisons
with Compression", ICML 2023 (JPEG, grayscale, bit-depth reduction); RSK+FF = Kim & Sandoval-Segura,
"Learning from Convolution-based Unlearnable Datasets", arXiv 2411.01742 (AdvML-Frontiers @
NeurIPS 2024); COIN = Wang et al., "Corrupting Convolution-based Unlearnable Datasets with
Pixel-based Image Transformations", arXiv 2311.18403; random blur and partial protection =
Sadasivan et al., "CUDA: Convolution-based Unlearnable Datasets", CVPR 2023, section 5.2 / Table 5.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..imageops import to_uint8
from .augment import (
    AugmentThenERM,
    DescribedAttack,
    PolicyAttack,
    rand_int,
    rand_perm,
    rand_uniform,
)
from .base import ATTACKS, Attack

__all__ = [
    "PartialAttack",
    "TransformAttack",
    "bit_depth_reduce",
    "coin_warp",
    "dct2",
    "dct_lowpass",
    "dct_matrix",
    "gaussian_filter",
    "grayscale",
    "idct2",
    "jpeg_compress",
    "median_filter",
    "partial_mask",
    "partial_mix",
    "random_blur",
    "random_sharpen",
    "reupload",
    "sharpen_frequency_filter",
    "to_uint8",
]

#: ITU-R BT.601 luma weights for (R, G, B).
BT601 = (0.299, 0.587, 0.114)


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"expected float images (N, C, H, W), got {tuple(images.shape)} {images.dtype}"
        )


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


def jpeg_compress(images: Tensor, quality: int = 10) -> Tensor:
    """JPEG round trip at ``quality`` through Pillow (ISS, ICML 2023: quality 10).

    Each image is quantised with :func:`to_uint8`, encoded with Pillow's defaults (4:2:0 chroma
    subsampling for RGB) and decoded. images ``(N, C, H, W)`` float in [0, 1], C in {1, 3} -> same
    shape and dtype, values on the uint8 grid.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    return _map_pil(images, lambda img, _: _encode_decode(img, "JPEG", quality=int(quality)))


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


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------

DataTransform = Callable[[Tensor, torch.Generator], Tensor]

ISS = "Liu et al., Image Shortcut Squeezing, ICML 2023"
RSK = (
    "Kim & Sandoval-Segura, Learning from Convolution-based Unlearnable Datasets, arXiv 2411.01742"
)
COIN = "Wang et al., Corrupting Convolution-based Unlearnable Datasets with Pixel-based Image Transformations (COIN), arXiv 2311.18403"
CUDA = "Sadasivan et al., CUDA: Convolution-based Unlearnable Datasets, CVPR 2023"

#: images per chunk for whole-dataset tensor transforms (bounds peak memory on large sets).
CHUNK = 2048


def _as_float(images: Tensor) -> Tensor:
    """uint8 -> float32 / 255; float is passed through (no copy)."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def _like(images: Tensor, reference: Tensor) -> Tensor:
    """Float images in [0, 1] in ``reference``'s dtype (uint8 by rounding)."""
    return to_uint8(images) if reference.dtype == torch.uint8 else images.to(reference.dtype)


class TransformAttack(DescribedAttack):
    """Transform the training set once (and, if ``test_transform`` is given, the test set)."""

    def __init__(
        self,
        name: str,
        summary: str,
        paper: str,
        params: dict[str, Any],
        train_transform: DataTransform,
        test_transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(name, summary, paper, params)
        self._train = train_transform
        self._test = test_transform

    def prepare_train(
        self, images: Tensor, clean_images: Tensor, generator: torch.Generator
    ) -> Tensor:
        """``train_transform`` over the set in chunks of :data:`CHUNK` images. Accepts float in
        [0, 1] or uint8 ``(N, C, H, W)`` and returns the same dtype (uint8 by rounding)."""
        if images.shape[0] == 0:
            return images.clone()
        out = [self._train(_as_float(chunk), generator) for chunk in images.split(CHUNK)]
        return _like(torch.cat(out), images)

    def prepare_test(self, images: Tensor) -> Tensor:
        """``test_transform`` (if any) over the set, as :meth:`prepare_train` (same dtype out)."""
        if self._test is None or images.shape[0] == 0:
            return images
        return _like(
            torch.cat([self._test(_as_float(chunk)) for chunk in images.split(CHUNK)]), images
        )


class PartialAttack(DescribedAttack):
    """Only a fraction ``ratio`` of the training set is protected; the rest is clean."""

    def __init__(self, ratio: float) -> None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        super().__init__(
            "partial",
            f"only {ratio:.0%} of the training set is protected, the rest is clean (ERM)",
            CUDA + ", Table 5",
            {"ratio": ratio},
        )
        self.ratio = ratio

    def prepare_train(
        self, images: Tensor, clean_images: Tensor, generator: torch.Generator
    ) -> Tensor:  # noqa: D102
        return partial_mix(images, clean_images, self.ratio, generator)


def _deterministic(fn: Callable[[Tensor], Tensor]) -> DataTransform:
    return lambda images, generator: fn(images)


@ATTACKS.register("jpeg")
def _jpeg(quality: int = 10, on_test: bool = False) -> Attack:
    quality = int(quality)
    fn = lambda x: jpeg_compress(x, quality)  # noqa: E731
    return TransformAttack(
        "jpeg",
        f"JPEG quality {quality} round trip of the training set (Pillow)",
        ISS,
        {"quality": quality, "on_test": on_test},
        _deterministic(fn),
        fn if on_test else None,
    )


@ATTACKS.register("reupload")
def _reupload(
    scale: tuple[float, float] = (0.5, 0.9),
    jpeg_quality: tuple[int, int] = (75, 95),
    webp_quality: int = 80,
) -> Attack:
    scale = (float(scale[0]), float(scale[1]))
    jpeg_quality = (int(jpeg_quality[0]), int(jpeg_quality[1]))
    return TransformAttack(
        "reupload",
        "realistic re-upload: random downscale and upscale, JPEG 4:2:0, then WebP",
        "no paper: models a social-media upload pipeline",
        {
            "scale": list(scale),
            "jpeg_quality": list(jpeg_quality),
            "webp_quality": int(webp_quality),
        },
        lambda x, g: reupload(x, g, scale, jpeg_quality, int(webp_quality)),
    )


@ATTACKS.register("grayscale")
def _grayscale() -> Attack:
    return TransformAttack(
        "grayscale",
        "grayscale (BT.601 luma) training and test images",
        ISS,
        {"weights": list(BT601), "on_test": True},
        _deterministic(grayscale),
        grayscale,
    )


@ATTACKS.register("bit-depth")
def _bit_depth(bits: int = 2, on_test: bool = False) -> Attack:
    bits = int(bits)
    fn = lambda x: bit_depth_reduce(x, bits)  # noqa: E731
    return TransformAttack(
        "bit-depth",
        f"bit-depth reduction of the training set to {bits} bits per channel",
        ISS + " (BDR); Xu et al., Feature Squeezing, NDSS 2018",
        {"bits": bits, "on_test": on_test},
        _deterministic(fn),
        fn if on_test else None,
    )


@ATTACKS.register("median")
def _median(kernel_size: int = 3, on_test: bool = False) -> Attack:
    kernel_size = int(kernel_size)
    fn = lambda x: median_filter(x, kernel_size)  # noqa: E731
    return TransformAttack(
        "median",
        f"{kernel_size}x{kernel_size} median filter on the training set",
        "low-pass filter defence listed by ISS and REM (Fu et al., ICLR 2022)",
        {"kernel_size": kernel_size, "on_test": on_test},
        _deterministic(fn),
        fn if on_test else None,
    )


@ATTACKS.register("gaussian")
def _gaussian(kernel_size: int = 3, sigma: float = 1.0, on_test: bool = False) -> Attack:
    kernel_size, sigma = int(kernel_size), float(sigma)
    fn = lambda x: gaussian_filter(x, kernel_size, sigma)  # noqa: E731
    return TransformAttack(
        "gaussian",
        f"{kernel_size}x{kernel_size} Gaussian blur (sigma {sigma}) on the training set",
        "low-pass filter defence listed by ISS and REM (Fu et al., ICLR 2022)",
        {"kernel_size": kernel_size, "sigma": sigma, "on_test": on_test},
        _deterministic(fn),
        fn if on_test else None,
    )


@ATTACKS.register("sharpen-ff")
def _sharpen_ff(centre: float = 2.5, keep: float = 0.3, per_batch: bool = False) -> Attack:
    """RSK+FF. ``per_batch=False`` (default) transforms the training set once with one random
    kernel per image; ``per_batch=True`` re-draws the kernels for every mini-batch instead (the
    paper describes altering the images "during training"; both are cheap)."""
    centre, keep = float(centre), float(keep)
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    summary = (
        f"random 3x3 sharpening kernels (centre {centre}) + DCT low-pass keeping the lowest "
        f"{keep:.0%} of frequencies per axis" + (", every batch" if per_batch else "")
    )
    params = {"centre": centre, "keep": keep, "per_batch": bool(per_batch)}
    transform = lambda x, g: sharpen_frequency_filter(x, g, centre, keep)  # noqa: E731
    if per_batch:
        return PolicyAttack("sharpen-ff", summary, RSK, params, lambda: AugmentThenERM(transform))
    return TransformAttack("sharpen-ff", summary, RSK, params, transform)


@ATTACKS.register("coin")
def _coin(alpha: float = 2.0) -> Attack:
    alpha = float(alpha)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return PolicyAttack(
        "coin",
        f"COIN: random per-pixel bilinear re-interpolation (offsets up to {alpha} px), every batch",
        COIN,
        {"alpha": alpha},
        lambda: AugmentThenERM(lambda x, g: coin_warp(x, g, alpha)),
    )


@ATTACKS.register("random-blur")
def _random_blur(p: float = 0.1, kernel_size: int = 3) -> Attack:
    p, kernel_size = float(p), int(kernel_size)
    if p < 0:
        raise ValueError(f"p must be >= 0, got {p}")
    return PolicyAttack(
        "random-blur",
        f"random CUDA-like {kernel_size}x{kernel_size} blur filters (U(0, {p}), one tap = 1) per image, every batch",
        CUDA + ", section 5.2",
        {"p": p, "kernel_size": kernel_size},
        lambda: AugmentThenERM(lambda x, g: random_blur(x, g, p, kernel_size)),
    )


@ATTACKS.register("partial")
def _partial(ratio: float = 0.5) -> Attack:
    return PartialAttack(float(ratio))
