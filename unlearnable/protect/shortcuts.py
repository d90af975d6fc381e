"""Key-derived class-wise shortcuts for photographs (candidates; see issue 14).

CUDA's blur (:mod:`unlearnable.protect.cuda`) is a strong shortcut on 32 px images, but on real
photographs a victim learns the content instead (flower species differ by colour, which a blur
keeps). This module holds additive, *resolution-independent* class-wise patterns meant to be
stacked on or used instead of CUDA; each is a pure function of (key, label name, parameters)
with its own context string and version, and :func:`apply_additive` keeps an L-inf budget.

* **Plaids** (:func:`class_plaids`): per class a sum of a few products of two cosines, defined
  in coordinates relative to the image, so the pattern of a 224 px image resized to 112 px is
  (up to the resize filter) the pattern rendered at 112 px. A plaid is mirror-symmetric up to
  a phase (horizontal flips do not create a second pattern) and random crops only change its
  phase; its frequency, orientation and colour are *local* statistics that a convolutional
  network can detect anywhere in the image.
* **Cell noise** (:func:`class_noise`): a class-wise random texture on a grid of cells. Note
  that i.i.d. cells have the same local statistics in every class: only their arrangement is
  class-specific, which random crops and flips disturb.
* **Colour transforms** (:func:`colour_transforms`): a class-wise affine colour map.

Measured on the flowers benchmark (``benchmarks/real_photos.py``: 224 px files, PNG, scraper
at 112 px, small-cnn 12 epochs, ERM, 1 seed; clean 73.8%): plaids at L-inf 8/255 (3
components) and 12/255 (1 component, 12-24 cycles) and cell noise at 8/255 change nothing (PER
<= 0.03), nor does a single plaid at 20/255 (PER 0.01, visual cost 0.14); the same plaid at
32/255 gives PER 0.56 peak / 0.69 last, at a visual cost (0.25) as high as CUDA's. The
colour transform is what works: stacked on a k=3 CUDA filter at the scraper's scale, strength
0.1 gives PER 0.37 / 0.37 (visual cost 0.24) and strength 0.2 gives 0.65 / 0.65 (cost 0.22);
that stack is the ``photo`` method (:mod:`unlearnable.protect.photo`), now the default.

Derivation (plaid version 1, reproducible from this text alone)
----------------------------------------------------------------
For a label name ``L`` and ``n = params.components``, draw
``u = key_uniforms(key, "shortcut-plaid/v1/label={L}", 7 * n)`` (see :mod:`unlearnable.keys`);
component ``j`` uses ``u[7j : 7j + 7] = (a, b, p, q, r, g, c)``:

* cycles across the width  ``fx = lo * (hi / lo) ** a`` (log-uniform in ``params.cycles``),
  cycles across the height ``fy = lo * (hi / lo) ** b``;
* phases ``px = 2 pi p``, ``py = 2 pi q``;
* colour ``w = (1 - chroma) * (1, 1, 1) + chroma * (2 (r, g, c) - 1)`` (then the component's
  sign is folded into the luminance part, so ``w`` always has a positive mean).

At ``(y, x)`` of an ``H x W`` image, with ``u = (x + 0.5) / S`` and ``v = (y + 0.5) / S`` where
``S = min(H, W)`` (cycles are per short side), component ``j`` contributes
``w * cos(2 pi fx u + px) * cos(2 pi fy v + py)``. The pattern is the sum over components,
divided by its maximum absolute value over channels and pixels, so it lies in [-1, 1] with
peak 1. :func:`apply_additive` adds ``eps * pattern`` and clamps to [0, 1], so the change of
every pixel is at most ``eps`` (L-inf budget; before the uint8 rounding of the output).

Cell noise (version 1)
----------------------
``class_noise(key, labels, height, width, params)``: a class-wise random texture on a grid of
``G x G`` cells (``G = params.cells``) spanning the image (cells per short side, so the texture
scales with the image like the plaids). For label ``L`` draw
``u = key_uniforms(key, "shortcut-noise/v1/cells={G}/label={L}", 4 * G * G)`` reshaped to
``(G, G, 4)`` (row-major: cell row, cell column, draw); a cell's value in channel ``c`` is
``(1 - chroma) * (2 u[..., 0] - 1) + chroma * (2 u[..., 1 + c] - 1)``. The ``(3, G, G)`` grid is
resized to the image's square ``S x S`` (``S = min(H, W)``) with nearest-neighbour sampling (sharp
cells) or bilinear interpolation (``params.smooth``), tiled to ``H x W`` when the image is not
square, and divided by its maximum absolute value. With ``G = 56`` a cell is 4 px at 224 px
and 2 px at a 112 px scraper resolution.

Colour transform (version 1)
----------------------------
``colour_transforms(key, labels, strength)``: for label ``L`` draw
``u = key_uniforms(key, "shortcut-colour/v1/label={L}", 12)``; the 3x3 matrix is
``I + strength * (2 u[:9] - 1).reshape(3, 3)`` (row = output channel) and the offset is
``strength / 2 * (2 u[9:12] - 1)``. :func:`apply_colour` computes ``M x + o`` per pixel and
clamps to [0, 1].
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

PLAID_VERSION = 1
COLOUR_VERSION = 1
PLAID_CONTEXT = "shortcut-plaid/v{version}/label={label}"
COLOUR_CONTEXT = "shortcut-colour/v{version}/label={label}"
NOISE_VERSION = 1
NOISE_CONTEXT = "shortcut-noise/v{version}/cells={cells}/label={label}"
_PLAID_DRAWS = 7


@dataclass(frozen=True)
class PlaidParams:
    """Shape of the class-wise plaid patterns.

    * ``components``: plaids summed per class (>= 1).
    * ``cycles``: ``(lo, hi)`` range of cycles per short side, drawn log-uniformly; 8-16
      cycles are periods of 7-14 px at a 112 px scraper resolution, inside the band that a
      resize to 112 px, JPEG and a DCT low-pass keeping 30% of frequencies all keep.
    * ``chroma``: 0 = grey (luminance only) patterns, 1 = fully random colour directions.
    """

    components: int = 3
    cycles: tuple[float, float] = (8.0, 16.0)
    chroma: float = 0.3

    def __post_init__(self) -> None:
        if self.components < 1:
            raise ValueError(f"components must be >= 1, got {self.components}")
        lo, hi = self.cycles
        if not 0 < lo <= hi:
            raise ValueError(f"cycles must satisfy 0 < lo <= hi, got {self.cycles}")
        if not 0.0 <= self.chroma <= 1.0:
            raise ValueError(f"chroma must be in [0, 1], got {self.chroma}")


def plaid_spec(
    key: SecretKey, labels: Sequence[str], params: PlaidParams = PlaidParams()
) -> Tensor:
    """The key-derived numbers of every class's plaid (see the module docstring).

    Returns float64 ``(len(labels), components, 7)``: per component
    ``(fx, fy, phase_x, phase_y, w_r, w_g, w_b)``. A label's row depends only on (key, label
    name, params), not on the other labels.
    """
    lo, hi = params.cycles
    n = params.components
    spec = np.empty((len(labels), n, _PLAID_DRAWS), dtype=np.float64)
    for index, label in enumerate(labels):
        context = PLAID_CONTEXT.format(version=PLAID_VERSION, label=label)
        u = key_uniforms(key, context, _PLAID_DRAWS * n).reshape(n, _PLAID_DRAWS)
        spec[index, :, 0] = lo * (hi / lo) ** u[:, 0]
        spec[index, :, 1] = lo * (hi / lo) ** u[:, 1]
        spec[index, :, 2] = 2 * math.pi * u[:, 2]
        spec[index, :, 3] = 2 * math.pi * u[:, 3]
        colour = (1 - params.chroma) + params.chroma * (2 * u[:, 4:7] - 1)
        sign = np.where(colour.mean(axis=1, keepdims=True) < 0, -1.0, 1.0)
        spec[index, :, 4:7] = colour * sign
    return torch.from_numpy(spec)


def render_plaids(spec: Tensor, height: int, width: int) -> Tensor:
    """Render :func:`plaid_spec` output at ``height x width``.

    Returns float32 ``(K, 3, height, width)`` in [-1, 1], each class's peak |value| equal to 1
    (an all-zero pattern stays zero).
    """
    if spec.ndim != 3 or spec.shape[-1] != _PLAID_DRAWS:
        raise ValueError(f"spec must be (K, components, {_PLAID_DRAWS}), got {tuple(spec.shape)}")
    side = float(min(height, width))
    spec = spec.to(torch.float64)
    u = (torch.arange(width, dtype=torch.float64) + 0.5) / side  # (W,)
    v = (torch.arange(height, dtype=torch.float64) + 0.5) / side  # (H,)
    fx, fy, px, py = (spec[..., i, None] for i in range(4))  # (K, n, 1)
    wave_x = torch.cos(2 * math.pi * fx * u + px)  # (K, n, W)
    wave_y = torch.cos(2 * math.pi * fy * v + py)  # (K, n, H)
    plaid = wave_y[..., :, None] * wave_x[..., None, :]  # (K, n, H, W)
    colour = spec[..., 4:7]  # (K, n, 3)
    pattern = torch.einsum("knc,knhw->kchw", colour, plaid)
    peak = pattern.abs().amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, pattern / peak.clamp_min(1e-12), pattern).float()


def class_plaids(
    key: SecretKey,
    labels: Sequence[str],
    height: int,
    width: int,
    params: PlaidParams = PlaidParams(),
) -> Tensor:
    """``(len(labels), 3, height, width)`` patterns in [-1, 1]: :func:`plaid_spec` rendered."""
    return render_plaids(plaid_spec(key, labels, params), height, width)


@dataclass(frozen=True)
class NoiseParams:
    """Shape of the class-wise cell noise: ``cells`` per short side (>= 1), ``chroma`` in
    [0, 1] (0 = grey), ``smooth`` = bilinear instead of nearest-neighbour cells."""

    cells: int = 56
    chroma: float = 0.3
    smooth: bool = False

    def __post_init__(self) -> None:
        if self.cells < 1:
            raise ValueError(f"cells must be >= 1, got {self.cells}")
        if not 0.0 <= self.chroma <= 1.0:
            raise ValueError(f"chroma must be in [0, 1], got {self.chroma}")


def noise_grids(
    key: SecretKey, labels: Sequence[str], params: NoiseParams = NoiseParams()
) -> Tensor:
    """The key-derived cell values: float32 ``(len(labels), 3, cells, cells)`` in [-1, 1]."""
    g = params.cells
    grids = np.empty((len(labels), 3, g, g), dtype=np.float64)
    for index, label in enumerate(labels):
        context = NOISE_CONTEXT.format(version=NOISE_VERSION, cells=g, label=label)
        u = 2 * key_uniforms(key, context, 4 * g * g).reshape(g, g, 4) - 1
        grids[index] = ((1 - params.chroma) * u[..., :1] + params.chroma * u[..., 1:]).transpose(
            2, 0, 1
        )
    return torch.from_numpy(grids).float()


def class_noise(
    key: SecretKey,
    labels: Sequence[str],
    height: int,
    width: int,
    params: NoiseParams = NoiseParams(),
) -> Tensor:
    """``(len(labels), 3, height, width)`` class-wise cell-noise patterns in [-1, 1], peak 1."""
    grids = noise_grids(key, labels, params)
    side = min(height, width)
    if params.smooth:
        square = F.interpolate(grids, size=(side, side), mode="bilinear", align_corners=False)
    else:
        square = F.interpolate(grids, size=(side, side), mode="nearest")
    reps = (math.ceil(height / side), math.ceil(width / side))
    pattern = square.repeat(1, 1, *reps)[..., :height, :width]
    peak = pattern.abs().amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, pattern / peak.clamp_min(1e-12), pattern)


def apply_additive(images: Tensor, labels: Tensor, patterns: Tensor, eps: float) -> Tensor:
    """Add ``eps * patterns[label]`` to every image and clamp to [0, 1].

    Args:
        images: ``(B, C, H, W)`` float in [0, 1], C in {1, 3} (a 1-channel image gets the mean
            of the pattern's channels).
        labels: ``(B,)`` int64 indices into ``patterns``.
        patterns: ``(K, 3, H, W)`` in [-1, 1] (e.g. :func:`class_plaids` at the image size).
        eps: L-inf budget in [0, 1] (e.g. 8/255).

    Returns ``(B, C, H, W)`` float32 in [0, 1]; ``|out - images| <= eps``. The input is kept.
    """
    _check(images, labels)
    if patterns.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"patterns are {tuple(patterns.shape[-2:])}, images {tuple(images.shape[-2:])}"
        )
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps}")
    delta = patterns.to(images.device, torch.float32)[labels]
    if images.shape[1] == 1:
        delta = delta.mean(dim=1, keepdim=True)
    return (images.float() + eps * delta).clamp_(0.0, 1.0)


def colour_transforms(key: SecretKey, labels: Sequence[str], strength: float = 0.1) -> Tensor:
    """Key-derived class-wise affine colour transforms (see the module docstring).

    Returns float32 ``(len(labels), 3, 4)``: ``[:, :, :3]`` the matrix, ``[:, :, 3]`` the offset.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    bank = np.empty((len(labels), 3, 4), dtype=np.float64)
    for index, label in enumerate(labels):
        context = COLOUR_CONTEXT.format(version=COLOUR_VERSION, label=label)
        u = key_uniforms(key, context, 12)
        bank[index, :, :3] = np.eye(3) + strength * (2 * u[:9] - 1).reshape(3, 3)
        bank[index, :, 3] = strength / 2 * (2 * u[9:12] - 1)
    return torch.from_numpy(bank).float()


def apply_colour(images: Tensor, labels: Tensor, transforms: Tensor) -> Tensor:
    """Per-pixel ``M x + o`` with the transform of each image's label, clamped to [0, 1].

    images ``(B, 3, H, W)`` float in [0, 1]; labels ``(B,)`` int64; transforms ``(K, 3, 4)``.
    Returns a new float32 ``(B, 3, H, W)`` tensor.
    """
    _check(images, labels)
    if images.shape[1] != 3:
        raise ValueError("colour transforms need 3-channel images")
    t = transforms.to(images.device, torch.float32)[labels]  # (B, 3, 4)
    out = torch.einsum("boc,bchw->bohw", t[:, :, :3], images.float())
    return (out + t[:, :, 3, None, None]).clamp_(0.0, 1.0)


def _check(images: Tensor, labels: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError("labels must be (B,) with one label per image")
