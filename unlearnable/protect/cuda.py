"""CUDA: convolution-based unlearnable datasets (Sadasivan et al., CVPR 2023).

Every class (or cluster) gets a small non-negative blur filter derived from the private key; each
training image is filtered with the filter of its class and rescaled by its own maximum. A model
trained on the result learns "blur signature -> label" instead of the content and fails on clean
images. Implemented from the paper and ``shared/research/methods-protect.md`` Part A.

Filter derivation (version 1, reproducible from this text alone)
----------------------------------------------------------------
For a label name ``L`` and kernel size ``k``, draw ``u = key_uniforms(key,
"cuda/v1/filter/k={k}/label={L}", k*k + 1)`` (see :mod:`unlearnable.keys`). The filter is
``u[:k*k].reshape(k, k) * p_b`` (row-major), then the entry at flat index
``floor(u[k*k] * k*k)`` is set to 1. So entries lie in [0, p_b) with one tap equal to 1 at a
key-dependent position (as in the paper's code, the 1 is not always the centre). The blur
parameter ``p_b`` only scales the entries, so ``--strength`` presets share the filter shape.

Application
-----------
The same filter is applied to every colour channel (depthwise cross-correlation, zero padding
``(k-1)/2`` so the size is kept for any odd k), the result is divided by its maximum over all
channels and pixels (an all-black image is left black), and written as uint8 by rounding (the
paper's code truncates; rounding is unbiased). For large images the filter can be *upscaled*
by an integer factor ``d`` (nearest-neighbour, each tap becomes a ``d x d`` block) so that once a
scraper downsizes the image by ``d`` the effective filter matches the paper's setting.

Application version 2: designed at a scraper's resolution
--------------------------------------------------------
:func:`apply_cuda_at_scale` (used by the ``photo`` method, :mod:`unlearnable.protect.photo`)
keeps the version-1 filters but applies them where a scraper looks: an image with short side
``s > R`` (the reference, e.g. 112) is resized to short side ``R`` (bilinear, antialiased, size
``round(H R / s) x round(W R / s)``), filtered and rescaled as above, and the change
``filtered - small`` is resized back to ``H x W`` (bilinear) and added to the original, then
clamped to [0, 1]. Images with ``s <= R`` get version 1 unchanged. The work is that of an
``R``-pixel image plus two resizes, whatever the photo's size. The ``cuda`` method keeps
version 1 (bit-identical outputs). Measured on the flowers benchmark (224 px files, 112 px
scraper, ERM): a k=3, p_b=0.3 filter at the scraper's scale (``cuda:k=3,blur=0.3,up=2``) is
no stronger than the default (PER 0.09 / 0.14 vs 0.11 / 0.12): on photographs the blur is
not what protects; see :mod:`unlearnable.protect.photo`.

Application version 3 (:func:`cuda_change_at_scale_u8`, ``photo`` stack version 2): as version
2, but the small copy is made from the 8-bit pixels by torch's uint8 antialiased bilinear
resize (rounded to 8 bits; 10x faster than from a float copy of a 6 MP photo), and only the
change at the small size is returned: the caller resizes it back and adds it in one pass with
its other changes (:mod:`unlearnable.protect.photo_pixels`).

Strength presets (by the image's short side ``s``)
--------------------------------------------------
======================  ====  =====  =====  =====  ==============================
short side s            k     low    mid    high   note
======================  ====  =====  =====  =====  ==============================
s <= 48                 3     0.15   0.30   0.50   paper: k=3, p_b=0.3 at 32 px
48 < s <= 96            5     0.075  0.15   0.25
96 < s <= 160           7     0.045  0.09   0.15
s > 160                 9     0.03   0.06   0.10   paper: k=9, p_b=0.06 at 224 px
======================  ====  =====  =====  =====  ==============================

Above ``s = 336`` the k=9 filter is upscaled by ``d = round(s / 224)``. ``kernel_size`` and
``blur`` overrides replace the preset values (an explicit kernel size is never upscaled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..keys import SecretKey, key_uniforms
from .cuda_method import STRENGTHS, validate_blur, validate_kernel_size

FILTER_VERSION = 1
_STRENGTH_SCALE = {"low": 0.5, "mid": 1.0, "high": 5.0 / 3.0}
# (largest short side, kernel size, mid blur parameter)
_SIZE_BUCKETS = ((48, 3, 0.30), (96, 5, 0.15), (160, 7, 0.09), (math.inf, 9, 0.06))
_REFERENCE_SIZE = 224
_UPSCALE_FROM = 336
_MIN_BLUR = 0.01  # weaken() stops here for kernel sizes without presets
# Above this many filter taps x pixels, FFT convolution is faster than direct convolution on CPU.
_FFT_THRESHOLD = 25 * 512 * 512


@dataclass(frozen=True)
class CudaParams:
    """Filter parameters for one image: kernel size k (odd), blur p_b in (0, 1], upscale d >= 1."""

    kernel_size: int
    blur: float
    upscale: int = 1


def cuda_params(
    height: int,
    width: int,
    strength: str = "mid",
    kernel_size: int | None = None,
    blur: float | None = None,
) -> CudaParams:
    """The (k, p_b, upscale) to use for an image of ``height x width`` (see module docstring)."""
    if strength not in _STRENGTH_SCALE:
        raise ValueError(f"strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
    short = min(height, width)
    _, k, mid_blur = next(bucket for bucket in _SIZE_BUCKETS if short <= bucket[0])
    upscale = 1
    if kernel_size is not None:
        validate_kernel_size(kernel_size)
        k = kernel_size
    elif short > _UPSCALE_FROM:
        upscale = max(1, round(short / _REFERENCE_SIZE))
    chosen_blur = mid_blur * _STRENGTH_SCALE[strength] if blur is None else blur
    validate_blur(chosen_blur)
    return CudaParams(kernel_size=k, blur=round(float(chosen_blur), 6), upscale=upscale)


def weaker_cuda_params(plan: CudaParams) -> CudaParams | None:
    """The next rung down the strength ladder of ``plan`` (see :meth:`CudaProtector.weaken`)."""
    mids = [mid for _, k, mid in _SIZE_BUCKETS if k == plan.kernel_size]
    if mids:
        rungs = sorted(round(mids[0] * scale, 6) for scale in _STRENGTH_SCALE.values())
        lower = [blur for blur in rungs if blur < plan.blur - 1e-9]
        blur = lower[-1] if lower else None
    else:
        blur = round(plan.blur / 2, 6) if plan.blur / 2 >= _MIN_BLUR else None
    return None if blur is None else CudaParams(plan.kernel_size, blur, plan.upscale)


def cuda_filters(
    key: SecretKey, labels: Sequence[str], kernel_size: int = 3, blur: float = 0.3
) -> Tensor:
    """One filter per label, derived from the key.

    Returns a float32 tensor ``(len(labels), k, k)``: entries in [0, blur) and exactly one tap
    equal to 1 per filter. The filter of a label depends only on (key, label name, k), not on
    the other labels or their order.
    """
    validate_kernel_size(kernel_size)
    validate_blur(blur)
    taps = kernel_size * kernel_size
    bank = np.empty((len(labels), taps), dtype=np.float64)
    for index, label in enumerate(labels):
        u = key_uniforms(
            key, f"cuda/v{FILTER_VERSION}/filter/k={kernel_size}/label={label}", taps + 1
        )
        bank[index] = u[:taps] * blur
        bank[index, int(u[taps] * taps)] = 1.0
    return torch.from_numpy(bank.reshape(len(labels), kernel_size, kernel_size)).float()


def upscale_filters(filters: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour upscaling of ``(K, k, k)`` filters to ``(K, k*d, k*d)``.

    The result has an even size when ``d`` is even; :func:`apply_cuda` pads asymmetrically then.
    """
    if factor == 1:
        return filters
    return filters.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)


def apply_cuda(
    images: Tensor, labels: Tensor, filters: Tensor, *, depthwise: bool = False
) -> Tensor:
    """Filter each image with the filter of its label and rescale by the image's maximum.

    Args:
        images: ``(B, C, H, W)`` float in [0, 1]; C is 1 or 3 (alpha is never passed here).
        labels: ``(B,)`` int64 indices into ``filters``.
        filters: ``(K, kh, kw)`` non-negative float filters (from :func:`cuda_filters`,
            optionally :func:`upscale_filters`).
        depthwise: filter the whole batch as one depthwise convolution instead of one
            convolution per label (5-10x faster on a batch of small images; the same
            arithmetic up to float rounding, so a rare output differs in the last bit: the
            ``photo`` stack version 2 uses it, version 1 and the ``cuda`` method do not).

    Returns:
        ``(B, C, H, W)`` float32 in [0, 1]; each image's maximum is 1 unless it is all black
        (then it stays black). The input is not modified.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError("labels must be (B,) with one label per image")
    x = images.float()
    b, c, h, w = x.shape
    kh, kw = filters.shape[-2:]
    if depthwise and kh * kw * h * w <= _FFT_THRESHOLD:
        top, left = (kh - 1) // 2, (kw - 1) // 2
        weight = filters[labels].to(x.dtype).repeat_interleave(c, dim=0).unsqueeze(1)
        padded = F.pad(x.reshape(1, b * c, h, w), (left, kw - 1 - left, top, kh - 1 - top))
        out = F.conv2d(padded, weight, groups=b * c).reshape(b, c, h, w)
    else:
        out = torch.empty_like(x)
        for label in torch.unique(labels).tolist():
            index = (labels == label).nonzero(as_tuple=True)[0]
            out[index] = _correlate_same(x[index], filters[label])
    peak = out.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 1e-12, out / peak.clamp_min(1e-12), out).clamp_(0.0, 1.0)


def apply_cuda_at_scale(images: Tensor, labels: Tensor, filters: Tensor, reference: int) -> Tensor:
    """CUDA designed at a scraper's resolution (application version 2).

    An image whose short side ``s`` exceeds ``reference`` is resized (bilinear, antialiased) to
    short side ``reference``; :func:`apply_cuda` filters that small copy, and the change it
    made (``filtered - small``) is resized back (bilinear) and added to the full-resolution
    image, then clamped to [0, 1]. A scraper that resizes the output to ``reference`` sees
    (up to resampling) the small copy filtered, i.e. the filter at the scale it was designed
    for, and the work is that of a small image plus two resizes. Images with ``s <=
    reference`` are filtered directly (exactly :func:`apply_cuda`).

    images ``(B, C, H, W)`` float in [0, 1]; labels ``(B,)`` int64; filters ``(K, k, k)``;
    returns float32 ``(B, C, H, W)`` in [0, 1]. The input is not modified.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if reference < 8:
        raise ValueError(f"reference must be >= 8 px, got {reference}")
    height, width = images.shape[-2:]
    short = min(height, width)
    if short <= reference:
        return apply_cuda(images, labels, filters)
    x = images.float()
    size = reference_size(height, width, reference)
    small = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    change = apply_cuda(small, labels, filters) - small
    change = F.interpolate(change, size=(height, width), mode="bilinear", align_corners=False)
    return (x + change).clamp_(0.0, 1.0)


def reference_size(height: int, width: int, reference: int) -> tuple[int, int]:
    """The size ``(h, w)`` an image of ``height x width`` has at short side ``reference``:
    ``(max(1, round(height * reference / s)), max(1, round(width * reference / s)))``."""
    short = min(height, width)
    return max(1, round(height * reference / short)), max(1, round(width * reference / short))


def cuda_change_at_scale_u8(
    pixels: Tensor, labels: Tensor, filters: Tensor, reference: int
) -> Tensor:
    """The change CUDA makes at a scraper's resolution, from 8-bit pixels (application
    version 3, used by the ``photo`` stack version 2: :mod:`unlearnable.protect.photo_pixels`).

    ``pixels``: uint8 ``(B, C, H, W)`` (channels-last memory is the fast path) whose short side
    exceeds ``reference``. The small copy is ``pixels`` resized to :func:`reference_size` with
    ``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``
    on the uint8 tensor (torch's 8-bit path: rounded to 8 bits), divided by 255; the result is
    ``apply_cuda(small) - small``: float32 ``(B, C, h, w)`` in [-1, 1], which the caller
    resizes back to full size (bilinear) and adds.
    """
    small = reference_copy_u8(pixels, reference)
    return apply_cuda(small, labels, filters) - small


def reference_copy_u8(pixels: Tensor, reference: int) -> Tensor:
    """The small copy of :func:`cuda_change_at_scale_u8`: uint8 ``pixels (B, C, H, W)`` whose
    short side exceeds ``reference``, resized to :func:`reference_size` with torch's 8-bit
    antialiased bilinear ``interpolate`` (``align_corners=False``), divided by 255: float32
    ``(B, C, h, w)`` in [0, 1]."""
    if pixels.dtype != torch.uint8 or pixels.ndim != 4:
        raise ValueError("pixels must be uint8 (B, C, H, W)")
    height, width = pixels.shape[-2:]
    if min(height, width) <= reference:
        raise ValueError(f"the short side must exceed the reference ({reference} px)")
    size = reference_size(height, width, reference)
    small = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    return small.float().div_(255.0)


def _correlate_same(x: Tensor, kernel: Tensor) -> Tensor:
    """Cross-correlate every channel of ``x (B, C, H, W)`` with ``kernel (kh, kw)``, same size."""
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    planes = x.reshape(b * c, 1, h, w)
    if kh * kw * h * w > _FFT_THRESHOLD:
        result = _fft_correlate(planes, kernel, top, left)
    else:
        padded = F.pad(planes, (left, kw - 1 - left, top, kh - 1 - top))
        weight = kernel.to(planes.dtype).reshape(1, 1, kh, kw)
        result = F.conv2d(padded.contiguous(memory_format=torch.channels_last), weight)
    return result.reshape(b, c, h, w)


def _fft_correlate(planes: Tensor, kernel: Tensor, top: int, left: int) -> Tensor:
    """FFT version of a zero-padded 'same' cross-correlation; exact up to float rounding."""
    _, _, h, w = planes.shape
    kh, kw = kernel.shape
    full_h, full_w = h + kh - 1, w + kw - 1
    spectrum = torch.fft.rfft2(planes, s=(full_h, full_w))
    flipped = torch.flip(kernel.to(planes.dtype), dims=(0, 1))
    response = torch.fft.rfft2(flipped, s=(full_h, full_w))
    full = torch.fft.irfft2(spectrum * response, s=(full_h, full_w))
    bottom, right = kh - 1 - top, kw - 1 - left
    return full[..., bottom : bottom + h, right : right + w]


class CudaProtector:
    """CUDA as a folder :class:`~unlearnable.io.runner.Protector`: filters per class name.

    ``classes`` are label names (class id = index). Per-image parameters come from
    :func:`cuda_params`; filters are derived lazily per (k, p_b) and cached.
    """

    method = "cuda"

    def __init__(
        self,
        key: SecretKey,
        classes: Sequence[str],
        strength: str = "mid",
        kernel_size: int | None = None,
        blur: float | None = None,
    ) -> None:
        cuda_params(32, 32, strength, kernel_size, blur)  # validate early
        self.key = key
        self.classes = list(classes)
        self.strength = strength
        self.kernel_size = kernel_size
        self.blur = blur
        self._filters: dict[tuple[int, float], Tensor] = {}

    def parameters(self) -> dict:
        return {
            "filter_version": FILTER_VERSION,
            "strength": self.strength,
            "kernel_size": self.kernel_size,
            "blur": self.blur,
        }

    def plan(self, height: int, width: int) -> CudaParams:
        return cuda_params(height, width, self.strength, self.kernel_size, self.blur)

    def describe_plan(self, plan: CudaParams) -> dict:
        return {"kernel_size": plan.kernel_size, "blur": plan.blur, "upscale": plan.upscale}

    def weaken(self, plan: CudaParams) -> CudaParams | None:
        """The next weaker plan for a visual-cost budget, or None when there is none.

        The ladder is the strength presets of the plan's kernel size (high -> mid -> low, see
        the module docstring): the largest preset blur below ``plan.blur``. A kernel size
        without presets (an explicit ``kernel_size``) halves the blur down to ``_MIN_BLUR``.
        Kernel size and upscale are kept, so the filter shape (and its key-dependent tap)
        stays; only the blur entries shrink.
        """
        return weaker_cuda_params(plan)

    def filters(self, kernel_size: int, blur: float) -> Tensor:
        """``(len(classes), k, k)`` filters for this key (cached)."""
        cache_key = (kernel_size, blur)
        if cache_key not in self._filters:
            self._filters[cache_key] = cuda_filters(self.key, self.classes, kernel_size, blur)
        return self._filters[cache_key]

    def apply(self, images: Tensor, label_ids: Tensor, plan: CudaParams) -> Tensor:
        bank = upscale_filters(self.filters(plan.kernel_size, plan.blur), plan.upscale)
        return apply_cuda(images, label_ids, bank)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_filters"] = {}
        return state
