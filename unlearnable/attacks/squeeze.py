"""Data-transform attacks: squeeze, filter or warp the protected images before (or while) training.

The transforms live in :mod:`.transforms`, :mod:`.transforms_pil` and :mod:`.transforms_frequency`
(re-exported here). Every transform is a pure function on float images ``(N, C, H, W)`` in
``[0, 1]`` that returns a new tensor of the same shape, dtype and range and never changes its
input. Random ones take a ``torch.Generator`` and are deterministic for its state. Each is also
registered as an attack:

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

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..imageops import to_uint8
from .augment import AugmentThenERM, DescribedAttack, PolicyAttack
from .base import ATTACKS, Attack
from .transforms import (
    BT601,
    _as_float,
    _like,
    bit_depth_reduce,
    coin_warp,
    gaussian_filter,
    grayscale,
    median_filter,
    partial_mask,
    partial_mix,
    random_blur,
)
from .transforms_frequency import (
    dct2,
    dct_lowpass,
    dct_matrix,
    idct2,
    lowpass_band,
    random_sharpen,
    sharpen_frequency_filter,
)
from .transforms_pil import jpeg_compress, reupload

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
    "lowpass_band",
    "median_filter",
    "partial_mask",
    "partial_mix",
    "random_blur",
    "random_sharpen",
    "reupload",
    "sharpen_frequency_filter",
    "to_uint8",
]


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
