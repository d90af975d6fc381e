"""The ``photo`` stack versions 2 and 3 on 8-bit pixels: every full-resolution change in one pass.

Version 1 (:mod:`unlearnable.protect.photo`) chains full-size float operations: the CUDA change
is resized back to the photo's size and added, the colour transform makes another full-size
copy, and so does the rounding; on a 6 MP photo that is 0.3-0.6 s of memory traffic per image
on one core. The colour transform is affine, so ``M (x + up(c)) + o = M x + o + up(M c)``:
version 2 applies the transform to the small change (``M c``, at the scraper's size), resizes
that back, and computes ``M x + o + up(M c) (+ eps * plaid)`` for bands of
:data:`TILE_ROWS` rows at a time, straight from the 8-bit input to the 8-bit output, so the
intermediate values stay in the CPU cache.

Definition (stack version 2, reproducible from this text and :mod:`unlearnable.protect.photo`)
------------------------------------------------------------------------------------------
For an 8-bit image ``x`` (``H x W``, C = 1 or 3 channels) with short side ``S`` larger than the
reference ``R``, label ``L``, and the plan's blur ``b``, colour strength ``s`` and plaid
``eps``:

* ``(M, o)``: the colour transform of ``L`` at strength ``s`` (colour version 1; ``M = I``,
  ``o = 0`` when ``s = 0``); a 1-channel image uses ``M = sum(M) / 3`` and ``o = mean(o)``;
* ``c``: the CUDA change at the scraper's scale, CUDA application version 3
  (:func:`~unlearnable.protect.cuda.cuda_change_at_scale_u8`, the version-1 filter of ``L`` of
  size ``kernel_size`` and blur ``b``); ``c = 0`` when ``b = 0``;
* ``up``: bilinear resize from ``(h, w)`` to ``(H, W)`` with half-pixel centres (source
  coordinate ``(i + 0.5) * h / H - 0.5``, clamped at 0; taps ``floor`` and ``floor + 1``,
  the latter clamped to the last row/column), separable (columns first);
* ``p``: the plaid of ``L`` (plaid version 1, as in version 1; its channel mean for 1 channel);
* the output is ``clamp(floor(z + 0.5), 0, 255)`` with
  ``z = 255 * (M x / 255 + o + up(M c) + eps * p)``, computed in float32 (one clamp at the
  end: version 1 clamps after each step).

Definition (stack version 3: the colour transform at the scraper's scale)
-------------------------------------------------------------------------
Version 2 spends most of its full-resolution pass on ``M x`` (a 3 x 3 product per pixel).
What a scraper at the reference size sees of ``M x + o`` is ``M s + o`` (``s`` the small copy),
so version 3 computes the whole change at the small size and adds it back:

* ``s``: the small copy of CUDA application version 3
  (:func:`~unlearnable.protect.cuda.reference_copy_u8`: torch's 8-bit antialiased bilinear
  resize to the reference size, divided by 255); ``b``: ``s`` filtered with the version-1 CUDA
  filter of ``L`` (:func:`~unlearnable.protect.cuda.apply_cuda`; ``b = s`` when the blur is 0);
* ``d = M b + o - s`` (float32, ``(C, h, w)``; ``M``, ``o`` as in version 2, grey rule
  included): the colour-transformed, filtered small copy minus the small copy;
* the output is ``clamp(floor(z + 0.5), 0, 255)`` with ``z = x + up(255 d) + 255 eps p``
  (``up`` and ``p`` as in version 2), computed by :func:`stack_pixels` with ``M = I``,
  ``o = 0`` and ``change = d``.

Version 3 minus version 2 is ``255 (I - M)(x / 255 - up(s))`` before rounding and clamping:
the colour transform of the detail finer than the reference scale is left out. At the
reference scale the scraper sees the same ``M b + o``; the full-resolution pass has one
addition per value instead of ``2C - 1`` multiply-adds (a 6 MP photo's protection is about
1.4x faster). Images with ``S <= R`` are protected as in version 2.

Images with ``S <= R`` are protected as in version 1, with the CUDA filtering of a batch done
as one depthwise convolution (:func:`~unlearnable.protect.cuda.apply_cuda` with
``depthwise=True``: the same arithmetic up to float rounding). The differences from version 1
are the 8-bit small copy, the single clamp (version 1 clamps ``x + up(c)`` before the colour
transform) and float rounding; they change a few output values by 1 and saturated pixels
more; the shortcut a scraper sees is the same.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

TILE_ROWS = 64
"""Rows per band of the full-resolution pass (a band of a 3000 px wide RGB image is 2.3 MB
of float32, which stays in the CPU's cache; the output does not depend on it)."""


def bilinear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two source indices and the weight of the second for each of ``n_out`` outputs of a
    half-pixel-centred bilinear resize from ``n_in`` samples (see the module docstring):
    int64 ``(n_out,)``, int64 ``(n_out,)``, float32 ``(n_out,)`` in [0, 1)."""
    source = ((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5).clip(min=0.0)
    first = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    second = np.minimum(first + 1, n_in - 1)
    return first, second, (source - first).astype(np.float32)


def stack_pixels(
    pixels: np.ndarray,
    matrix: Tensor,
    offset: Tensor,
    change: Tensor | None = None,
    pattern: Tensor | None = None,
    eps: float = 0.0,
) -> np.ndarray:
    """``clamp(floor(255 (M x / 255 + o + up(M change) + eps pattern) + 0.5), 0, 255)`` for
    one image (the full-resolution part of stack version 2, see the module docstring).

    Args:
        pixels: uint8 ``(H, W, C)``, C = 1 or 3.
        matrix: ``(C, C)`` float; offset: ``(C,)`` float (in [0, 1] units).
        change: ``(C, h, w)`` float at the small size (before ``M``), or None (no change).
        pattern: ``(C, H, W)`` float in [-1, 1], or None; ``eps`` its weight.

    Returns a new uint8 ``(H, W, C)`` array; ``pixels`` is not modified.
    """
    height, width, channels = pixels.shape
    if matrix.shape != (channels, channels) or offset.shape != (channels,):
        raise ValueError(f"a {channels}-channel image needs a ({channels}, {channels}) matrix")
    matrix = matrix.to(torch.float32)
    level = offset.to(torch.float32) * 255.0 + 0.5  # + 0.5: the truncation below rounds
    row_length = width * channels
    rows = None
    if change is not None:
        small = torch.einsum("oc,chw->hwo", matrix, change.to(torch.float32)) * 255.0 + level
        first, second, weight = bilinear_taps(width, small.shape[1])
        columns = torch.lerp(small[:, first], small[:, second], torch.from_numpy(weight)[:, None])
        columns = columns.reshape(small.shape[0], row_length)  # (h, W * C), pixels interleaved
        top, _, row_weight = bilinear_taps(height, small.shape[0])
        steps = columns[np.minimum(np.arange(small.shape[0]) + 1, small.shape[0] - 1)] - columns
        rows = (columns, steps, top, torch.from_numpy(row_weight))
    shifts = _channel_shifts(matrix, width)
    identity = bool(torch.equal(matrix, torch.eye(channels)))
    band = min(TILE_ROWS, height)
    pad = channels - 1
    inputs = torch.zeros(band * row_length + 2 * pad)  # the band, with a margin for the shifts
    sums = torch.empty(band, row_length)
    source = torch.from_numpy(np.ascontiguousarray(pixels)).reshape(height, row_length)
    out = np.empty((height, width, channels), dtype=np.uint8)
    out_rows, sums_np = out.reshape(height, row_length), sums.numpy()
    for start in range(0, height, band):
        stop = min(height, start + band)
        n = stop - start
        acc = sums[:n]
        if rows is None:
            acc.view(n, width, channels).copy_(level)
        else:
            _upsampled_rows(acc, start, stop, *rows)
        if pattern is not None and eps > 0:
            acc.view(n, width, channels).add_(
                pattern[:, start:stop].permute(1, 2, 0), alpha=255.0 * eps
            )
        if identity:  # x * 1 is exact: the same values as the multiply-add, one pass less
            acc.add_(source[start:stop])
        else:
            inputs[pad : pad + n * row_length].view(n, row_length).copy_(source[start:stop])
            for shift, coefficients in shifts:
                shifted = inputs[pad + shift : pad + shift + n * row_length].view(n, row_length)
                acc.addcmul_(shifted, coefficients)
        acc.clamp_(0.0, 255.0)
        np.copyto(out_rows[start:stop], sums_np[:n], casting="unsafe")  # truncates: + 0.5 above
    return out


def _channel_shifts(matrix: Tensor, width: int) -> list[tuple[int, Tensor]]:
    """``M x`` on interleaved pixels as a sum of shifted copies: output channel ``o`` of a pixel
    needs input channel ``o + d`` of the same pixel, which lies ``d`` values further in a row
    of ``W * C`` values. Returns ``(d, coefficients)`` with coefficients ``(W * C,)`` equal to
    ``M[o, o + d]`` at every channel ``o`` (0 where ``o + d`` is not a channel), for each
    ``d`` with a non-zero coefficient."""
    channels = matrix.shape[0]
    shifts = []
    for d in range(-(channels - 1), channels):
        per_channel = torch.zeros(channels)
        for o in range(channels):
            if 0 <= o + d < channels:
                per_channel[o] = matrix[o, o + d]
        if bool(per_channel.ne(0).any()):
            shifts.append((d, per_channel.repeat(width)))
    return shifts


def _upsampled_rows(
    acc: Tensor,
    start: int,
    stop: int,
    columns: Tensor,
    steps: Tensor,
    top: np.ndarray,
    weight: Tensor,
) -> None:
    """``acc[y - start] = columns[top[y]] + weight[y] * steps[top[y]]`` (rows of ``W * C``
    values) for the rows ``y`` in ``[start, stop)``, one operation per run of rows with the
    same source row."""
    sources = top[start:stop]
    bounds = [0, *(np.flatnonzero(np.diff(sources)) + 1).tolist(), stop - start]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        k = int(sources[a])
        torch.addcmul(
            columns[k : k + 1],
            weight[start + a : start + b].view(-1, 1),
            steps[k : k + 1],
            out=acc[a:b],
        )
