"""``photo``: key-derived class-wise shortcuts stacked for real photographs (issue 14).

CUDA's blur alone barely protects photographs (flowers benchmark, 112 px scraper: PER about
0.1, whether the filter is designed at the file's or at the scraper's scale): photos vary so
much in sharpness that a blur signature is not easier to learn than their content. What a small
network does pick up faster than the content is a class-wise *colour* shift: it is a per-pixel
statistic that survives resizing, JPEG and a low-pass filter. This method stacks, per class:

1. the CUDA filter designed at a scraper's resolution (``reference`` short side, application
   version 2: :func:`~unlearnable.protect.cuda.apply_cuda_at_scale`; version-1 filters of size
   ``kernel_size`` and blur ``blur``), a second, colour-free signature (under grayscale
   conversion a stronger blur did not raise the protection: see "Measured");
2. a class-wise affine colour transform of strength ``colour``
   (:func:`~unlearnable.protect.shortcuts.colour_transforms`, colour version 1);
3. optionally a class-wise plaid of L-inf ``plaid_eps`` (plaid version 1, one component,
   ``plaid_cycles`` per short side, grey) (0 = off).

Derivation (stack version 1, reproducible from this text alone)
---------------------------------------------------------------
Per image (``(C, H, W)`` float in [0, 1], label name ``L``, key ``K``), in this order:

* CUDA: the version-1 filter of ``L`` (context ``cuda/v1/filter/k={k}/label={L}``, see
  :mod:`unlearnable.protect.cuda`) applied with :func:`apply_cuda_at_scale` at ``reference``
  (skipped when ``blur == 0``);
* colour: ``M x + o`` with ``(M, o)`` from context ``shortcut-colour/v1/label={L}`` at strength
  ``colour`` (see :mod:`unlearnable.protect.shortcuts`), clamped to [0, 1]; a 1-channel image
  gets what the transform does to a grey pixel, averaged over the output channels:
  ``x * sum(M) / 3 + mean(o)``; skipped when ``colour == 0``;
* plaid: ``+ plaid_eps * pattern`` with the one-component grey plaid of ``L`` (context
  ``shortcut-plaid/v1/label={L}``, ``cycles = plaid_cycles``, ``chroma = 0``), clamped;
  skipped when ``plaid_eps == 0``.

The output is written as uint8 by rounding, like every method.

Stack version 2 computes the same stack on 8-bit pixels in one full-resolution pass,
``M x + o + up(M c)``: about 3x faster than version 1 on a 6 MP photo (0.06 s instead of 0.2 s
at one thread); its exact definition is in :mod:`unlearnable.protect.photo_pixels`. Images
whose short side is at most ``reference`` (e.g. 32 px CIFAR files) get the same computation in
both versions, except that version 2 filters a batch with one depthwise convolution (5-10x
faster; float rounding may change a rare output value by 1).

Stack version 3 (the default for new runs) applies the colour transform at the scraper's scale:
the whole change ``M b + o - s`` (``s`` the small copy, ``b`` its CUDA-filtered version) is
computed at the reference size and added to the photo at full resolution, so the colour of the
detail finer than the reference is not transformed. A 6 MP photo's protection is about 1.4x
faster than with version 2 (25 instead of 37 ms at one thread); small images get version 2's
computation; exact definition in :mod:`unlearnable.protect.photo_pixels`. On the flowers
benchmark (below) it protects as version 2 did, within one seed's noise: PER 0.70 / 0.71
(version 2: 0.70 / 0.72) at a 112 px scraper, 0.63 / 0.68 (0.65 / 0.66) at 224 px with 30
images per class and 6 epochs, grayscale 0.72 / 0.74 (0.69 / 0.69), and with key 1, 30 per
class, 8 epochs, seeds 0 and 1 grayscale 0.50 / 0.50 (0.51 / 0.55); visual cost 0.275 (0.286).

The manifest records ``stack_version``; a resumed run keeps its version, and
``PhotoConfig(stack_version=N)`` (``--stack-version N``) reproduces version N bit for bit.

Strength ladder (``--strength`` and the visual-cost budget's :meth:`PhotoProtector.weaken`):
``high`` scales blur, colour and plaid by 1.5, ``mid`` by 1, ``low`` by 0.5.

Measured (``benchmarks/real_photos.py``, flowers: 12 species, 224 px files, PNG output, key 0,
small-cnn, seed 0; README "What protection to expect" has the commands). Defaults (colour 0.3,
blur 0.3): ERM, 720 images, 12 epochs, PER 0.70 / 0.72 (peak / last) at a 112 px scraper and
0.70 / 0.74 at a 224 px one, visual cost 0.29; with 30 images per class and 8 epochs, the
quick countermeasure suite gives ERM 0.65 / 0.67, JPEG-10 0.69 / 0.70, sharpen + low-pass
0.65 / 0.68 and grayscale 0.49 / 0.58 (seeds 0 and 1; key 1: 0.51 / 0.55), the worst case.
The colour default was 0.2 until grayscale was measured with two keys and two seeds: 0.33 /
0.42 (key 0) and 0.28 / 0.28 (key 1), against 0.65 / 0.65 under ERM; colour 0.25 gave 0.51 /
0.51 and 0.30 / 0.35, and a stronger blur (0.45) did not help (0.28 / 0.28 with key 1,
seed 0): under grayscale what is left of the shortcut is mostly the colour transform's change
of brightness. ``cuda`` alone: 0.11 / 0.12 at cost 0.26.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..imageops import to_pixels
from ..keys import SecretKey
from .cuda import (
    apply_cuda,
    apply_cuda_at_scale,
    cuda_change_at_scale_u8,
    cuda_filters,
    reference_copy_u8,
)
from .photo_method import STACK_VERSION, STACK_VERSIONS  # (defined beside the config: no torch)
from .photo_pixels import stack_pixels
from .shortcuts import PlaidParams, apply_additive, class_plaids, colour_transforms

_CUDA_APPLICATION = {1: 2, 2: 3, 3: 3}  # stack version -> CUDA application version
STRENGTH_SCALES = {"high": 1.5, "mid": 1.0, "low": 0.5}
_LADDER = ("high", "mid", "low")


@dataclass(frozen=True)
class PhotoParams:
    """The settings at strength ``mid`` (``scaled`` gives the other rungs).

    ``reference``: the scraper short side the CUDA filter is designed at (px, >= 8);
    ``kernel_size`` (odd) and ``blur`` (0 = no CUDA) of the filter; ``colour``: strength of the
    colour transform (0 = none); ``plaid_eps``: L-inf of the plaid in [0, 1] (0 = none);
    ``plaid_cycles``: its ``(lo, hi)`` cycles per short side.
    """

    reference: int = 112
    kernel_size: int = 3
    blur: float = 0.3
    colour: float = 0.3
    plaid_eps: float = 0.0
    plaid_cycles: tuple[float, float] = (6.0, 12.0)

    def __post_init__(self) -> None:
        if self.reference < 8:
            raise ValueError(f"reference must be >= 8 px, got {self.reference}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel size must be odd and >= 1, got {self.kernel_size}")
        for name in ("blur", "colour", "plaid_eps"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.blur == self.colour == self.plaid_eps == 0.0:
            raise ValueError("at least one of blur, colour and plaid_eps must be > 0")

    def scaled(self, strength: str) -> PhotoPlan:
        """The plan for a strength preset (blur, colour and plaid scaled together)."""
        if strength not in STRENGTH_SCALES:
            raise ValueError(f"strength must be one of {', '.join(_LADDER)}, got {strength!r}")
        scale = STRENGTH_SCALES[strength]
        return PhotoPlan(
            strength,
            round(min(1.0, self.blur * scale), 6),
            round(min(1.0, self.colour * scale), 6),
            round(min(1.0, self.plaid_eps * scale), 6),
        )


@dataclass(frozen=True)
class PhotoPlan:
    """What one image gets: the strength rung and its blur, colour strength and plaid eps."""

    strength: str
    blur: float
    colour: float
    plaid_eps: float


class PhotoProtector:
    """The stacked shortcuts as a folder :class:`~unlearnable.io.runner.Protector`."""

    method = "photo"

    def __init__(
        self,
        key: SecretKey,
        classes: Sequence[str],
        strength: str = "mid",
        params: PhotoParams = PhotoParams(),
        stack_version: int = STACK_VERSION,
    ) -> None:
        params.scaled(strength)  # validate early
        if stack_version not in STACK_VERSIONS:
            raise ValueError(
                f"stack version must be one of {', '.join(map(str, STACK_VERSIONS))}, "
                f"got {stack_version}"
            )
        self.stack_version = stack_version
        self.key = key
        self.classes = list(classes)
        self.strength = strength
        self.params = params
        self._cache: dict = {}

    def parameters(self) -> dict:
        p = self.params
        return {
            "stack_version": self.stack_version,
            "cuda_application_version": _CUDA_APPLICATION[self.stack_version],
            "strength": self.strength,
            "reference": p.reference,
            "kernel_size": p.kernel_size,
            "blur": p.blur,
            "colour": p.colour,
            "plaid_eps": p.plaid_eps,
            "plaid_cycles": list(p.plaid_cycles),
        }

    def plan(self, height: int, width: int) -> PhotoPlan:
        return self.params.scaled(self.strength)

    def describe_plan(self, plan: PhotoPlan) -> dict:
        return {
            "strength": plan.strength,
            "blur": plan.blur,
            "colour": plan.colour,
            "plaid_eps": plan.plaid_eps,
        }

    def weaken(self, plan: PhotoPlan) -> PhotoPlan | None:
        """The next weaker rung (high -> mid -> low), or None below ``low``."""
        index = _LADDER.index(plan.strength)
        return None if index + 1 == len(_LADDER) else self.params.scaled(_LADDER[index + 1])

    def apply(self, images: Tensor, label_ids: Tensor, plan: PhotoPlan) -> Tensor:
        """``images (B, C, H, W)`` float in [0, 1] (C = 1 or 3), ``label_ids (B,)`` -> protected
        float32, same shape, in [0, 1]. The input is not modified. Stack versions 2 and 3 work
        on 8-bit pixels: the input is rounded to uint8 first and the output is uint8 / 255."""
        if self.stack_version == 1 or min(images.shape[-2:]) <= self.params.reference:
            return self._apply_float(images, label_ids, plan, self.stack_version >= 2)
        pixels = torch.from_numpy(to_pixels(images))
        protected = torch.from_numpy(np.array(self.apply_uint8(pixels, label_ids, plan)))
        return protected.permute(0, 3, 1, 2).float().div_(255.0)

    def apply_uint8(self, pixels: Tensor, label_ids: Tensor, plan: PhotoPlan) -> np.ndarray:
        """``pixels`` uint8 ``(B, H, W, C)`` (the layout of image files) -> protected uint8
        ``(B, H, W, C)`` (possibly read-only). Version 1 gives exactly ``to_uint8`` of
        :meth:`apply` of ``pixels / 255``; versions 2 and 3 are defined on 8-bit pixels (see
        :mod:`unlearnable.protect.photo_pixels`). The input is not modified."""
        if self.stack_version == 1 or min(pixels.shape[1:3]) <= self.params.reference:
            originals = pixels.permute(0, 3, 1, 2).float().div_(255.0)
            protected = self._apply_float(originals, label_ids, plan, self.stack_version >= 2)
            return to_pixels(protected, reuse=protected.data_ptr() != originals.data_ptr())
        images = [self._stack_u8(pixels[i], int(label_ids[i]), plan) for i in range(len(pixels))]
        return images[0][None] if len(images) == 1 else np.stack(images)

    def _stack_u8(self, pixels: Tensor, label: int, plan: PhotoPlan) -> np.ndarray:
        """Stack version 2 or 3 of one image: uint8 ``(H, W, C)`` -> uint8 ``(H, W, C)``."""
        height, width, channels = pixels.shape
        matrix, offset = torch.eye(3), torch.zeros(3)
        if plan.colour > 0:
            transforms = self._get(
                ("colour", plan.colour),
                lambda: colour_transforms(self.key, self.classes, plan.colour),
            )
            matrix, offset = transforms[label, :, :3], transforms[label, :, 3]
        if channels == 1:
            matrix, offset = matrix.sum().div(3.0).reshape(1, 1), offset.mean().reshape(1)
        chw = pixels.permute(2, 0, 1).unsqueeze(0)  # channels-last memory: torch's fast path
        labels = torch.tensor([label])
        bank = None
        if plan.blur > 0:
            bank = self._get(
                ("cuda", plan.blur),
                lambda: cuda_filters(self.key, self.classes, self.params.kernel_size, plan.blur),
            )
        change = None
        if self.stack_version == 3:  # d = M b + o - s, added to x as it is
            small = reference_copy_u8(chw, self.params.reference)
            filtered = small if bank is None else apply_cuda(small, labels, bank)
            coloured = torch.einsum("oc,chw->ohw", matrix, filtered[0]) + offset[:, None, None]
            change = coloured - small[0]
            matrix, offset = torch.eye(channels), torch.zeros(channels)
        elif bank is not None:
            change = cuda_change_at_scale_u8(chw, labels, bank, self.params.reference)[0]
        pattern = None
        if plan.plaid_eps > 0:
            plaid = PlaidParams(components=1, cycles=self.params.plaid_cycles, chroma=0.0)
            patterns = self._get(
                ("plaid", height, width),
                lambda: class_plaids(self.key, self.classes, height, width, plaid),
            )
            pattern = patterns[label]
            if channels == 1:
                pattern = pattern.mean(dim=0, keepdim=True)
        return stack_pixels(pixels.numpy(), matrix, offset, change, pattern, plan.plaid_eps)

    def _apply_float(
        self, images: Tensor, label_ids: Tensor, plan: PhotoPlan, depthwise: bool = False
    ) -> Tensor:
        """Stack version 1 (float in, float out; see the module docstring); ``depthwise``: its
        CUDA filtering as one depthwise convolution (stack version 2 on small images)."""
        out = images.float()
        if plan.blur > 0:
            bank = self._get(
                ("cuda", plan.blur),
                lambda: cuda_filters(self.key, self.classes, self.params.kernel_size, plan.blur),
            )
            if depthwise and min(out.shape[-2:]) <= self.params.reference:
                out = apply_cuda(out, label_ids, bank, depthwise=True)
            else:
                out = apply_cuda_at_scale(out, label_ids, bank, self.params.reference)
        if plan.colour > 0:
            transforms = self._get(
                ("colour", plan.colour),
                lambda: colour_transforms(self.key, self.classes, plan.colour),
            )
            out = apply_colour_any(out, label_ids, transforms)
        if plan.plaid_eps > 0:
            h, w = out.shape[-2:]
            plaid = PlaidParams(components=1, cycles=self.params.plaid_cycles, chroma=0.0)
            patterns = self._get(
                ("plaid", h, w), lambda: class_plaids(self.key, self.classes, h, w, plaid)
            )
            out = apply_additive(out, label_ids, patterns, plan.plaid_eps)
        return out

    def _get(self, name: tuple, make):
        if name not in self._cache:
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[name] = make()
        return self._cache[name]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state


def apply_colour_any(images: Tensor, labels: Tensor, transforms: Tensor) -> Tensor:
    """:func:`~unlearnable.protect.shortcuts.apply_colour` for 3-channel images; a 1-channel
    image gets the grey equivalent ``x * sum(M) / 3 + mean(o)`` (what the transform does to a
    grey pixel, averaged over output channels), clamped to [0, 1]."""
    from .shortcuts import apply_colour

    if images.shape[1] == 3:
        return apply_colour(images, labels, transforms)
    t = transforms.to(images.device, torch.float32)[labels]  # (B, 3, 4)
    gain = t[:, :, :3].sum(dim=(1, 2)) / 3.0
    offset = t[:, :, 3].mean(dim=1)
    return (images.float() * gain[:, None, None, None] + offset[:, None, None, None]).clamp_(
        0.0, 1.0
    )
