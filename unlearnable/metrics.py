"""Image quality of a protected copy against its original: PSNR, SSIM and the visual cost.

All three are measured at viewing size (:func:`unlearnable.visual_cost.viewing_factor`: images
of 384 px and more on the short side are average-pooled to about 256 px, as Wang et al.'s
reference SSIM code does), so a 6 MP photo costs about as much as a thumbnail and the numbers
describe what a viewer sees. PSNR (all channels) and SSIM (on the grey image, the mean of the
channels) compare pixel by pixel, so a shift counts against them; the visual cost
(:mod:`unlearnable.visual_cost`, every channel) forgives shifts.

Metrics versions (what a run's manifest records as ``metrics_version``; a run without it used
version 1; a resumed run keeps its version): the folder runner measures each file *as
written* (:mod:`unlearnable.io.measure`).

* Version 1: a lossy output (JPEG, lossy WebP) is decoded in full, and the decoded pixels are
  compared as above.
* Version 2 (new runs): the same, except for a JPEG output whose viewing factor ``f`` is a
  multiple of 8 (short side 1920-2175 px, 3968-4223 px, ...: e.g. 3000 x 2000 and 6000 x 4000
  photos, not 4000 x 3000, whose factor is 12): its
  viewing-size copy comes from the JPEG decoder's own decoding at scale 1/8 (libjpeg's scaled
  inverse DCT, which keeps each 8 x 8 block's mean: exact up to rounding for the grey channel,
  close for the subsampled colour channels) followed by block means of ``f / 8`` pixels
  (Pillow's reduce), and the visual cost refines its shift on the protected pixels before
  encoding (JPEG does not move content). A 6 MP photo is then not decoded in full a second
  time (about 25 ms less per photo at one thread). Everything else (lossless outputs, WebP,
  smaller images) is measured exactly as in version 1. On 20 of the 3000 x 2000 JPEG photos of
  ``benchmarks/protect_throughput.py`` (``photo`` method; ``benchmarks/protect_stages.py``
  prints the table) the viewing-size copies differ by 0.37 levels on average (at most 3),
  PSNR by -0.011 dB (at most -0.026), SSIM by -0.0006 (at most -0.0013), and the visual cost
  by +1.0%, +1.6% and +2.9% of its value at strength high, mid and low (at most +5.6%; +8% on
  one photo of another test set at low strength).
* Version 3 (new runs): version 2, except that the visual cost of an image larger than
  viewing size (``f > 1``) refines the full-resolution part of its shift along lines
  (:func:`unlearnable.visual_cost.visual_cost_at_view`'s ``line_refine``): the best vertical
  residual, then the best horizontal one, then the vertical one again, each over
  ``|r| <= f // 2`` on the same sample grid with the same error, instead of every pair (81
  candidates at ``f = 8``, 25 at ``f = 4``), with the samples read from strided views of the
  image instead of gathered blocks. It finds the same shift wherever the error falls off
  towards the best shift along rows and columns, so the values are version 2's except where
  that error surface is nearly flat. PSNR and SSIM are unchanged, and so is everything for
  images of at most 383 px on the short side (CIFAR-10, 224 px photos). A 3000 x 2000 JPEG
  photo's metrics cost about 38 ms instead of 52 at one thread. On 12 of the 3000 x 2000
  photos of ``benchmarks/protect_throughput.py`` and 120 flowers photos upscaled to 2048 px,
  at strengths high, mid and low (``benchmarks/protect_stages.py`` prints the tables), PSNR
  and SSIM were equal and the visual cost moved by less than 0.1% of its value on average,
  by -2.1% to +2.3% at most (0.0065 at most); at ``--max-visual-cost`` budgets from 0.02 to
  0.3 one file of the 132 ended differently: at budget 0.1 a flower fits at strength low
  (0.0985) where version 2 flagged it over the budget (0.1006). (Measuring such a JPEG on
  its encoded pixels instead of the 1/8 read-back would save about 5 ms more, but moved the
  visual cost of the upscaled flowers by up to 5% and changed the rung of 1-3 of them at
  some budgets: not done.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .visual_cost import pillow_images, to_viewing_size, viewing_factor, visual_cost_at_view
from .visual_cost import ssim as _ssim_channels

METRICS_VERSION = 3
"""The metrics version new runs use (see the module docstring)."""
METRICS_VERSIONS = (1, 2, 3)


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


def quality(
    original: Tensor,
    protected: Tensor,
    protected_view: Tensor | None = None,
    line_refine: bool = False,
) -> Quality:
    """PSNR, SSIM and visual cost of ``protected`` against ``original`` (``(B, C, H, W)``, equal
    shapes, float in [0, 1] or uint8: uint8 avoids any full-size float copy of a large image),
    pooling each image to viewing size once for all three.

    ``protected_view``: the protected images at viewing size (float ``(B, C, H // f, W // f)``
    in [0, 1], ``f`` = :func:`~unlearnable.visual_cost.viewing_factor`) when the caller has
    them from elsewhere (metrics version 2: a JPEG file decoded at a reduced scale, see
    :data:`METRICS_VERSION`); ``protected`` is then only sampled at full size to refine the
    visual cost's shift. ``line_refine``: the visual cost searches the full-size part of its
    shift along lines (metrics version 3; see
    :func:`~unlearnable.visual_cost.visual_cost_at_view`)."""
    factor = viewing_factor(*original.shape[-2:])
    pictures = None
    if original.dtype == torch.uint8 and factor > 1:  # one Pillow copy for both reductions
        pictures = pillow_images(original)
    original_view = to_viewing_size(original, factor, pictures)
    if protected_view is None:
        protected_view = to_viewing_size(protected, factor)
    greys = original_view.mean(dim=1), protected_view.mean(dim=1)
    return Quality(
        psnr=psnr(original_view, protected_view),
        ssim=_ssim_channels(greys[0].unsqueeze(1), greys[1].unsqueeze(1)),
        visual_cost=visual_cost_at_view(
            original,
            protected,
            original_view,
            protected_view,
            factor,
            greys=greys,
            original_pictures=pictures,
            line_refine=line_refine,
        ),
    )
