"""A visual-cost measure that forgives what people do not see: small shifts.

CUDA filters put their tap of weight 1 at a key-dependent position, so a protected image is
its original shifted by a few pixels (plus blur). PSNR and SSIM compare pixel by pixel and
punish the shift heavily although nobody sees it, while the blur or pattern people do see
moves them less. :func:`visual_cost` first finds, per image, the integer shift that best aligns
the original with the protected image, then compares the aligned pair with SSIM (Wang et al.
2004: 11x11 Gaussian window, sigma 1.5, on every colour channel, averaged):

``cost = 1 - SSIM(aligned original, protected)``, on the interior (``max_shift`` pixels are
cut from every border so that every shift compares real pixels).

0 means identical up to a shift; a just-visible blur or pattern is about 0.02-0.05, a clearly
visible one 0.1 and more (see the numbers in ``benchmarks/real_photos.py``). No weights are
downloaded and no extra dependency is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _usable_shift(height: int, width: int, max_shift: int) -> int:
    """The largest shift <= max_shift that leaves an interior of at least 8 px per side."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    return max(0, min(max_shift, (min(height, width) - 8) // 2))


def best_shift(original: Tensor, protected: Tensor, max_shift: int = 4) -> Tensor:
    """Per image, the integer shift ``(dy, dx)`` with ``|dy|, |dx| <= max_shift`` for which
    ``original[y + dy, x + dx]`` is closest to ``protected[y, x]`` (mean squared error of the
    channel means over the interior; the search runs on grey images, which is 3x cheaper).

    original, protected: ``(B, C, H, W)`` float in [0, 1]. Returns int64 ``(B, 2)``. Ties go to
    the smallest shift.
    """
    _check_pair(original, protected)
    _, _, h, w = original.shape
    s = _usable_shift(h, w, max_shift)
    target = protected.float().mean(dim=1, keepdim=True)[..., s : h - s, s : w - s]
    source = original.float().mean(dim=1, keepdim=True)
    shifts = sorted(
        ((dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)),
        key=lambda d: (abs(d[0]) + abs(d[1]), d),
    )
    errors = torch.stack(
        [
            (source[..., s + dy : h - s + dy, s + dx : w - s + dx] - target)
            .square()
            .mean(dim=(1, 2, 3))
            for dy, dx in shifts
        ],
        dim=1,
    )  # (B, n_shifts)
    best = errors.argmin(dim=1)  # first minimum = smallest shift on ties
    table = torch.tensor(shifts, dtype=torch.int64)
    return table[best]


def align(original: Tensor, protected: Tensor, max_shift: int = 4) -> tuple[Tensor, Tensor]:
    """The aligned pair: ``(original shifted by best_shift, protected)``, both cut to the
    interior ``(B, C, H - 2s, W - 2s)`` with ``s`` = the usable ``max_shift``."""
    _check_pair(original, protected)
    _, _, h, w = original.shape
    s = _usable_shift(h, w, max_shift)
    shifts = best_shift(original, protected, s)
    pieces = [
        original[i : i + 1, :, s + dy : h - s + dy, s + dx : w - s + dx]
        for i, (dy, dx) in enumerate(shifts.tolist())
    ]
    return torch.cat(pieces).float(), protected.float()[..., s : h - s, s : w - s]


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM per image of ``(B, C, H, W)`` float images in [0, 1] -> ``(B,)``.

    Each channel is compared on its own (valid windows only; the window shrinks to the image
    for images smaller than ``window``) and the channel maps are averaged.
    """
    _check_pair(a, b)
    bsz, c, h, w = a.shape
    size = min(window, h, w)
    kernel = _gaussian_window(size, sigma, a.device)
    x = a.float().reshape(bsz * c, 1, h, w)
    y = b.float().reshape(bsz * c, 1, h, w)
    mu_x, mu_y = F.conv2d(x, kernel), F.conv2d(y, kernel)
    xx = F.conv2d(x * x, kernel) - mu_x**2
    yy = F.conv2d(y * y, kernel) - mu_y**2
    xy = F.conv2d(x * y, kernel) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * xy + _C2)
    den = (mu_x**2 + mu_y**2 + _C1) * (xx + yy + _C2)
    return (num / den).reshape(bsz, -1).mean(dim=1)


def visual_cost(original: Tensor, protected: Tensor, max_shift: int = 4) -> Tensor:
    """Shift-tolerant visual cost ``1 - SSIM`` after alignment (see the module docstring).

    original, protected: ``(B, C, H, W)`` float in [0, 1] (uint8 is accepted and divided by
    255). Returns float32 ``(B,)``, 0 for identical images or a pure shift of up to
    ``max_shift`` pixels, growing with blur strength and perturbation size.
    """
    original, protected = _as_float(original), _as_float(protected)
    a, b = align(original, protected, max_shift)
    return (1.0 - ssim(a, b)).clamp_min(0.0)


def _as_float(images: Tensor) -> Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
