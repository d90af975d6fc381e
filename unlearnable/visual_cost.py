"""A visual-cost measure that forgives what people do not see: small shifts.

CUDA filters put their tap of weight 1 at a key-dependent position, so a protected image is
its original shifted by a few pixels (plus blur). PSNR and SSIM compare pixel by pixel and
punish the shift heavily although nobody sees it, while the blur or pattern people do see
moves them less. :func:`visual_cost` first finds, per image, the integer shift that best aligns
the original with the protected image, then compares the aligned pair with SSIM (Wang et al.
2004, on every colour channel, averaged; 8x8 windows every 4 pixels, see :func:`ssim`):

``cost = 1 - SSIM(aligned original, protected)``, on the interior (the shift range is cut from
every border so that every shift compares real pixels).

Viewing size: as Wang et al.'s reference code recommends, the comparison runs at the size a
viewer sees, about :data:`VIEW_SIDE` pixels on the short side: an image is average-pooled by
:func:`viewing_factor` ``f = max(1, round(min(H, W) / 256))`` (``f = 1``, no pooling, below
384 px). For ``f > 1`` the shift is still found to the full-resolution pixel (a coarse search
at viewing size, refined at full resolution on a grid of samples), so a pure shift costs ~0 at
any size, and the cost of a 6 MP photo takes tens of milliseconds instead of seconds.
``max_shift`` is in viewing pixels (``f * max_shift`` full-resolution pixels).

0 means identical up to a shift; a just-visible blur or pattern is about 0.02-0.05, a clearly
visible one 0.1 and more (see the numbers in ``benchmarks/real_photos.py``). No weights are
downloaded and no extra dependency is needed. (The first version used a dense 11x11 Gaussian
window; on 224 px flower photos the box windows give 0.83-0.92 of its values, same order:
Gaussian blur sigma 0.5 / 1 / 2 px 0.008 / 0.071 / 0.185 before, 0.007 / 0.059 / 0.165 now.)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

VIEW_SIDE = 256
"""The short side (pixels) at which images are compared; see :func:`viewing_factor`."""
MAX_SHIFT = 4
"""Default shift range, in viewing pixels."""

_C1 = 0.01**2
_C2 = 0.03**2


def _check_pair(original: Tensor, protected: Tensor) -> None:
    if original.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(original.shape)}")
    if original.shape != protected.shape:
        raise ValueError(
            f"original and protected differ in shape: {tuple(original.shape)} and "
            f"{tuple(protected.shape)}"
        )


def viewing_factor(height: int, width: int) -> int:
    """The integer pooling factor that brings an image to viewing size:
    ``max(1, round(min(height, width) / VIEW_SIDE))``."""
    return max(1, round(min(height, width) / VIEW_SIDE))


def to_viewing_size(images: Tensor, factor: int, pictures: list | None = None) -> Tensor:
    """``(B, C, H, W)`` float in [0, 1] or uint8 -> float ``(B, C, H // factor, W // factor)``
    in [0, 1]: block means (the input itself for float images and ``factor`` 1). uint8 images
    are reduced in uint8 by Pillow (block means rounded to 1/255; no full-size float copy,
    which is what makes a 6 MP photo cheap); ``pictures``: their Pillow images
    (:func:`pillow_images`) when the caller made them already."""
    if images.dtype != torch.uint8:
        return images if factor == 1 else F.avg_pool2d(images.float(), factor)
    if factor == 1:  # contiguous (B, C, H, W), whatever the input's memory layout
        return torch.empty(images.shape).copy_(images).div_(255.0)
    if pictures is None:
        pictures = pillow_images(images)
    _, _, height, width = images.shape
    box = (0, 0, width // factor * factor, height // factor * factor)
    return torch.stack([_reduce_picture(p, factor, box) for p in pictures]).float().div_(255.0)


def pillow_images(images: Tensor) -> list:
    """uint8 ``(B, C, H, W)`` -> one Pillow image per image (``L`` or ``RGB``); images whose
    channels are last in memory (decoded files) are not copied first."""
    from PIL import Image

    channels = images.shape[1]
    pictures = []
    for image in images:
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        pictures.append(Image.fromarray(hwc[..., 0] if channels == 1 else hwc))
    return pictures


def _reduce_picture(picture, factor: int, box: tuple[int, int, int, int]) -> Tensor:
    """uint8 ``(C, h, w)`` block means of ``factor`` x ``factor`` pixels of the Pillow image's
    ``box`` (left, top, right, bottom; its sides multiples of ``factor``)."""
    reduced = np.asarray(picture.reduce(factor, box=box))
    if reduced.ndim == 2:
        reduced = reduced[..., None]
    return torch.from_numpy(np.array(reduced)).permute(2, 0, 1)


def _usable_shift(height: int, width: int, max_shift: int) -> int:
    """The largest shift <= max_shift that leaves an interior of at least 8 px per side."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    return max(0, min(max_shift, (min(height, width) - 8) // 2))


def _candidates(radius: int) -> list[tuple[int, int]]:
    """Every ``(dy, dx)`` with ``|dy|, |dx| <= radius``, smallest shifts first."""
    return sorted(
        ((dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)),
        key=lambda d: (abs(d[0]) + abs(d[1]), d),
    )


def best_shift(original: Tensor, protected: Tensor, max_shift: int = MAX_SHIFT) -> Tensor:
    """Per image, the integer shift ``(dy, dx)`` with ``|dy|, |dx| <= max_shift`` for which
    ``original[y + dy, x + dx]`` is closest to ``protected[y, x]`` (mean squared error of the
    channel means over the interior). This compares pixels as given (no pooling to viewing
    size). The errors of all shifts come from one FFT cross-correlation plus an integral image,
    not from one pass per shift.

    original, protected: ``(B, C, H, W)`` float in [0, 1]. Returns int64 ``(B, 2)``. Ties (up to
    rounding noise) go to the smallest shift.
    """
    _check_pair(original, protected)
    _, _, h, w = original.shape
    s = _usable_shift(h, w, max_shift)
    return _best_shift_grey(_as_float(original).mean(dim=1), _as_float(protected).mean(dim=1), s)


def _best_shift_grey(source: Tensor, protected: Tensor, s: int) -> Tensor:
    """:func:`best_shift` on grey ``(B, H, W)`` images with the usable shift ``s``."""
    if s == 0:
        return torch.zeros(source.shape[0], 2, dtype=torch.int64)
    _, h, w = source.shape
    target = protected[:, s : h - s, s : w - s]
    n_h, n_w = h - 2 * s, w - 2 * s
    # correlation[u, v] = sum_yx source[u + y, v + x] * target[y, x]; no wrap-around for u, v <= 2s
    spectrum = torch.fft.rfft2(source) * torch.fft.rfft2(target, s=(h, w)).conj()
    correlation = torch.fft.irfft2(spectrum, s=(h, w))[:, : 2 * s + 1, : 2 * s + 1]
    squares = source[:, : n_h + 2 * s, : n_w + 2 * s].square()
    integral = F.pad(squares.cumsum(1).cumsum(2), (1, 0, 1, 0))
    energy = (
        integral[:, n_h : n_h + 2 * s + 1, n_w : n_w + 2 * s + 1]
        - integral[:, : 2 * s + 1, n_w : n_w + 2 * s + 1]
        - integral[:, n_h : n_h + 2 * s + 1, : 2 * s + 1]
        + integral[:, : 2 * s + 1, : 2 * s + 1]
    )
    target_energy = target.square().sum(dim=(1, 2)).view(-1, 1, 1)
    errors = (energy - 2 * correlation + target_energy) / (n_h * n_w)  # (B, 2s+1, 2s+1)
    shifts, order = _ranked_candidates(s)
    ranked = (errors.flatten(1)[:, order] * 1e6).round()  # float noise must not break ties
    best = ranked.argmin(dim=1)  # first minimum = smallest shift on ties
    return shifts[best]


@lru_cache(maxsize=16)
def _ranked_candidates(s: int) -> tuple[Tensor, Tensor]:
    """The candidate shifts, smallest first, as int64 ``(n, 2)``, and their flat indices in a
    ``(2s+1, 2s+1)`` grid."""
    shifts = _candidates(s)
    order = torch.tensor([(dy + s) * (2 * s + 1) + dx + s for dy, dx in shifts])
    return torch.tensor(shifts, dtype=torch.int64), order


REFINE_SAMPLES = 16_384
"""At most about this many sample points per candidate when refining a shift at full size."""


def _refine_grid(
    protected: Tensor, factor: int, cut: int, size: tuple
) -> tuple[int, int, tuple[int, int], Tensor]:
    """The full-resolution sample grid both refinements compare on: ``(step, top, span,
    target)``, with ``step`` full-size pixels between samples (at most about
    :data:`REFINE_SAMPLES` of them over the interior of ``size`` viewing pixels from ``cut``
    on), ``top`` the interior's first full-size row/column, ``span`` its full-size extent and
    ``target`` the channel means of ``protected`` on the grid, float ``(B, n_h', n_w')``."""
    n_h, n_w = size
    skip = max(1, round((n_h * n_w / REFINE_SAMPLES) ** 0.5))  # viewing pixels between samples
    step = factor * skip
    top = cut * factor
    span_h, span_w = n_h * factor, n_w * factor
    target = protected[..., top : top + span_h : step, top : top + span_w : step]
    return step, top, (span_h, span_w), _as_float(target).mean(dim=1)


def _refine(
    original: Tensor, protected: Tensor, coarse: Tensor, factor: int, cut: int, size: tuple
) -> Tensor:
    """Full-resolution shifts ``factor * coarse + r`` (``|r| <= factor // 2``) that best align
    ``original`` with ``protected`` (both full size, float in [0, 1] or uint8), compared on a
    grid of at most about :data:`REFINE_SAMPLES` full-resolution pixels of the interior
    (``size`` viewing pixels from ``cut`` on)."""
    step, top, (span_h, span_w), target = _refine_grid(protected, factor, cut, size)
    residuals = _candidates(factor // 2)
    result = []
    for index, (cy, cx) in enumerate(coarse.tolist()):
        samples = _candidate_samples(
            original[index],
            top + cy * factor,
            top + cx * factor,
            step,
            (span_h, span_w),
            factor // 2,
        )
        errors = []
        for ry, rx in residuals:
            sample = samples(ry, rx)  # original[index, :, y + ry : ... : step, x + rx : ... : step]
            errors.append((_as_float(sample).mean(dim=0) - target[index]).square().mean())
        ry, rx = residuals[int(torch.stack(errors).argmin())]
        result.append((cy * factor + ry, cx * factor + rx))
    return torch.tensor(result, dtype=torch.int64).reshape(-1, 2)


def _refine_lines(
    original: Tensor, protected: Tensor, coarse: Tensor, factor: int, cut: int, size: tuple
) -> Tensor:
    """:func:`_refine` searching the residual along lines instead of over the whole square
    (metrics version 3): first ``ry`` (with ``rx = 0``), then ``rx`` (at the best ``ry``), then
    ``ry`` again (at the best ``rx``), each over ``|r| <= factor // 2``: ``3 (factor + 1)``
    candidates instead of ``(factor + 1) ** 2`` for an even factor (the third line is left
    out when the second one stayed at ``rx = 0``), each line's candidates read as one strided
    view of the image instead of gathered blocks. The errors are :func:`_refine`'s (mean
    squared error of the channel means on the same grid); ties go to the smaller residual.
    It finds :func:`_refine`'s shift wherever the error falls off towards the best shift
    along rows and columns, as it does for shifted, blurred or recoloured photos."""
    step, top, _, target = _refine_grid(protected, factor, cut, size)
    radius = factor // 2
    count = 2 * radius + 1
    rank = torch.tensor(sorted(range(count), key=lambda i: (abs(i - radius), i - radius)))
    n_y, n_x = target.shape[-2:]
    scale = 255.0 if original.dtype == torch.uint8 else 1.0
    result = []
    for index, (cy, cx) in enumerate(coarse.tolist()):
        image = original[index]  # (C, H, W), any memory layout
        channel, row, col = image.stride()
        y, x = top + cy * factor, top + cx * factor
        if (
            min(y, x) < radius
            or max(
                y + radius + (n_y - 1) * step - image.shape[1],
                x + radius + (n_x - 1) * step - image.shape[2],
            )
            >= 0
        ):  # the strided views below must stay inside the image
            raise ValueError(f"refine window outside the image: shift {(cy, cx)}, {factor=}")
        best = [0, 0]
        for step_index, axis in enumerate((0, 1, 0)):
            if step_index == 2 and best[1] == 0:
                break  # the first line again: nothing new
            # (candidates, C, n_y, n_x): the sample grid moved by r = -radius..radius along
            # the axis (a strided view of the image, not a copy)
            lines = torch.as_strided(
                image,
                (count, image.shape[0], n_y, n_x),
                (row if axis == 0 else col, channel, step * row, step * col),
                image.storage_offset()
                + (y + (best[0] if axis else -radius)) * row
                + (x + (-radius if axis else best[1])) * col,
            )
            total = lines[:, 0].to(torch.int32 if scale == 255.0 else torch.float32)
            for channel_index in range(1, lines.shape[1]):  # faster than a sum over the dim
                total = total + lines[:, channel_index]
            grey = total.float().div_(lines.shape[1] * scale)
            errors = (grey - target[index]).square_().mean(dim=(1, 2))
            best[axis] = int(rank[int(errors[rank].argmin())]) - radius
        result.append((y - top + best[0], x - top + best[1]))
    return torch.tensor(result, dtype=torch.int64).reshape(-1, 2)


def _candidate_samples(
    image: Tensor, y: int, x: int, step: int, span: tuple[int, int], radius: int
):
    """``sample(ry, rx)`` = ``image[:, y + ry : y + ry + span_h : step, x + rx : ... : step]``
    as a contiguous ``(C, n_h, n_w)`` tensor. A uint8 image with its channels last in memory
    (a decoded file) is gathered once for every ``|ry|, |rx| <= radius`` (a few fast copies
    instead of one slow strided gather per candidate; the same values)."""
    span_h, span_w = span
    if image.dtype != torch.uint8 or image.stride(0) != 1:

        def strided(ry: int, rx: int) -> Tensor:
            return image[:, y + ry : y + ry + span_h : step, x + rx : x + rx + span_w : step]

        return strided
    hwc = image.permute(1, 2, 0).numpy()
    offsets = np.arange(-radius, radius + 1)
    rows = (y + np.arange(0, span_h, step)[:, None] + offsets).reshape(-1)
    cols = (x + np.arange(0, span_w, step)[:, None] + offsets).reshape(-1)
    n_h, n_w, width = len(rows) // len(offsets), len(cols) // len(offsets), len(offsets)
    block = hwc.take(rows, axis=0).take(cols, axis=1)  # (n_h * width, n_w * width, C)
    block = block.reshape(n_h, width, n_w, width, -1).transpose(1, 3, 4, 0, 2)
    block = torch.from_numpy(np.ascontiguousarray(block))  # (width, width, C, n_h, n_w)

    def gathered(ry: int, rx: int) -> Tensor:
        return block[ry + radius, rx + radius]

    return gathered


def _take_shifted(images: Tensor, shifts: Tensor, top: int, span: tuple[int, int]) -> Tensor:
    """``images[i, :, top + dy : top + dy + span_h, top + dx : top + dx + span_w]`` for every
    image ``i`` with its shift ``(dy, dx)`` (images sharing a shift are sliced together)."""
    span_h, span_w = span
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (dy, dx) in enumerate(shifts.tolist()):
        groups.setdefault((dy, dx), []).append(index)
    if len(groups) <= 1:
        dy, dx = next(iter(groups), (0, 0))
        return images[..., top + dy : top + dy + span_h, top + dx : top + dx + span_w]
    out = images.new_empty(images.shape[0], images.shape[1], span_h, span_w)
    for (dy, dx), members in groups.items():
        chosen = torch.tensor(members)
        out[chosen] = images[chosen, :, top + dy : top + dy + span_h, top + dx : top + dx + span_w]
    return out


def align(original: Tensor, protected: Tensor, max_shift: int = MAX_SHIFT) -> tuple[Tensor, Tensor]:
    """The aligned pair at the given size (no pooling): ``(original shifted by best_shift,
    protected)``, both cut to the interior ``(B, C, H - 2s, W - 2s)`` with ``s`` = the usable
    ``max_shift``."""
    _check_pair(original, protected)
    _, _, h, w = original.shape
    s = _usable_shift(h, w, max_shift)
    shifts = best_shift(original, protected, s)
    aligned = _take_shifted(original.float(), shifts, s, (h - 2 * s, w - 2 * s))
    return aligned, protected.float()[..., s : h - s, s : w - s]


def ssim(a: Tensor, b: Tensor, window: int = 8) -> Tensor:
    """Mean SSIM per image of ``(B, C, H, W)`` float images in [0, 1] -> ``(B,)``.

    Local statistics over square ``window`` x ``window`` windows (uniform weights) placed every
    ``window // 2`` pixels (half-overlapping; Wang et al. 2004 used 8 x 8 windows too), each
    channel on its own, averaged over windows and channels. The window shrinks to the image
    for images smaller than ``window``; the last rows and columns that fill no half-window are
    left out. The windows are sums of 2 x 2 blocks of ``window // 2`` pixels, so the cost is a
    few passes over the pixels (a dense Gaussian window costs ~50x more on a CPU).
    """
    _check_pair(a, b)
    bsz, c, h, w = a.shape
    half = max(1, min(window, h, w) // 2)
    rows, cols = h // half * half, w // half * half  # rows/columns that fill no window: left out
    x = a[..., :rows, :cols].reshape(bsz * c, rows, cols)
    y = b[..., :rows, :cols].reshape(bsz * c, rows, cols)
    stack = torch.empty(bsz * c, 5, rows, cols, dtype=torch.float32, device=a.device)
    stack[:, 0], stack[:, 1] = x, y
    torch.mul(x, x, out=stack[:, 2])
    torch.mul(y, y, out=stack[:, 3])
    torch.mul(x, y, out=stack[:, 4])
    left, right = _block_means(rows, half, a.device).T, _block_means(cols, half, a.device)
    blocks = left @ stack @ right  # (B*C, 5, rows // half, cols // half)
    if blocks.shape[-2] > 1 and blocks.shape[-1] > 1:  # windows of 2 x 2 blocks, step 1 block
        blocks = (
            blocks[..., :-1, :-1]
            + blocks[..., 1:, :-1]
            + blocks[..., :-1, 1:]
            + blocks[..., 1:, 1:]
        ) / 4
    mu_x, mu_y, x2, y2, xy = blocks.unbind(dim=1)
    mu_xy = mu_x * mu_y
    mu_sq = mu_x.square() + mu_y.square()
    num = (2 * mu_xy + _C1) * (2 * (xy - mu_xy) + _C2)
    den = (mu_sq + _C1) * (x2 + y2 - mu_sq + _C2)
    return (num / den).reshape(bsz, -1).mean(dim=1)


@lru_cache(maxsize=64)
def _block_means(length: int, half: int, device: torch.device) -> Tensor:
    """``(length, length // half)`` matrix whose product averages runs of ``half`` pixels
    (a batched matrix product is the fastest block mean on a CPU)."""
    index = torch.arange(length, device=device)
    return (index[:, None] // half == torch.arange(length // half, device=device)).float() / half


def visual_cost_at_view(
    original: Tensor,
    protected: Tensor,
    original_view: Tensor,
    protected_view: Tensor,
    factor: int,
    max_shift: int = MAX_SHIFT,
    greys: tuple[Tensor, Tensor] | None = None,
    original_pictures: list | None = None,
    line_refine: bool = False,
) -> Tensor:
    """:func:`visual_cost` when the viewing-size copies are already made (callers that also need
    them for other metrics pool once): ``*_view`` = :func:`to_viewing_size` of the full-size
    ``(B, C, H, W)`` images (float in [0, 1] or uint8) by ``factor``; ``greys``: their channel
    means ``(B, H', W')`` when the caller has them; ``original_pictures``: the Pillow images
    of a uint8 ``original`` (:func:`pillow_images`) when the caller has them. ``protected``
    is only sampled at full size (on a grid, to refine the shift), so a caller may pass
    other full-size pixels of the same protected image than those ``protected_view`` was
    made from (see :mod:`unlearnable.metrics`, metrics version 2); ``line_refine``: refine
    the shift along lines (:func:`_refine_lines`, metrics version 3). Returns float32
    ``(B,)``."""
    _check_pair(original, protected)
    _check_pair(original_view, protected_view)
    _, _, hv, wv = original_view.shape
    s = _usable_shift(hv, wv, max_shift)
    if greys is None:
        greys = original_view.mean(dim=1), protected_view.mean(dim=1)
    coarse = _best_shift_grey(greys[0], greys[1], s)
    if factor == 1:
        aligned = _take_shifted(original_view, coarse, s, (hv - 2 * s, wv - 2 * s))
        return (1.0 - ssim(aligned, protected_view[..., s : hv - s, s : wv - s])).clamp_min(0.0)
    cut = s + 1  # room for the full-resolution residual of up to factor // 2 pixels
    size = (hv - 2 * cut, wv - 2 * cut)
    if min(size) < 1:
        raise ValueError(f"image too small for viewing factor {factor}: {tuple(original.shape)}")
    refine = _refine_lines if line_refine else _refine
    shifts = refine(original, protected, coarse, factor, cut, size)
    top = cut * factor
    span = (size[0] * factor, size[1] * factor)
    if original.dtype == torch.uint8:  # each image's shifted window, reduced by Pillow
        if original_pictures is None:
            original_pictures = pillow_images(original)
        windows = [
            (picture, (top + dx, top + dy, top + dx + span[1], top + dy + span[0]))
            for picture, (dy, dx) in zip(original_pictures, shifts.tolist(), strict=True)
        ]
        reduced = [_reduce_picture(picture, factor, box) for picture, box in windows]
        aligned = torch.stack(reduced).float().div_(255.0)
    else:
        aligned = to_viewing_size(_take_shifted(original, shifts, top, span), factor)
    reference = protected_view[..., cut : cut + size[0], cut : cut + size[1]]
    return (1.0 - ssim(aligned, reference)).clamp_min(0.0)


def visual_cost(original: Tensor, protected: Tensor, max_shift: int = MAX_SHIFT) -> Tensor:
    """Shift-tolerant visual cost ``1 - SSIM`` after alignment, at viewing size (see the module
    docstring).

    original, protected: ``(B, C, H, W)`` float in [0, 1] (uint8 is accepted and divided by
    255). Returns float32 ``(B,)``, 0 for identical images or a pure shift of up to
    ``max_shift`` viewing pixels, growing with blur strength and perturbation size.
    """
    _check_pair(original, protected)
    factor = viewing_factor(*original.shape[-2:])
    return visual_cost_at_view(
        original,
        protected,
        to_viewing_size(original, factor),
        to_viewing_size(protected, factor),
        factor,
        max_shift,
    )


def _as_float(images: Tensor) -> Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
