"""``photo``: key-derived class-wise shortcuts stacked for real photographs (issue 14).

CUDA's blur alone barely protects photographs (flowers benchmark, 112 px scraper: PER about
0.1, whether the filter is designed at the file's or at the scraper's scale): photos vary so
much in sharpness that a blur signature is not easier to learn than their content. What a small
network does pick up faster than the content is a class-wise *colour* shift: it is a per-pixel
statistic that survives resizing, JPEG and a low-pass filter. This method stacks, per class:

1. the CUDA filter designed at a scraper's resolution (``reference`` short side, application
   version 2: :func:`~unlearnable.protect.cuda.apply_cuda_at_scale`; version-1 filters of size
   ``kernel_size`` and blur ``blur``), meant for grayscale conversion, which removes most of the
   colour shortcut (its share there was not measured separately);
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

Strength ladder (``--strength`` and the visual-cost budget's :meth:`PhotoProtector.weaken`):
``high`` scales blur, colour and plaid by 1.5, ``mid`` by 1, ``low`` by 0.5.

Measured (``benchmarks/real_photos.py``, flowers: 12 species, 224 px files, PNG output, key 0,
small-cnn, seed 0; README "What protection to expect" has the commands): at a 112 px scraper
with ERM (720 images, 12 epochs) PER 0.65 / 0.65 (peak / last; seed 1: 0.67 / 0.67) at visual
cost 0.22 (JPEG q75 output: 0.64 / 0.64), against 0.11 / 0.12 at cost 0.26 for ``cuda``; with
30 images per class, the quick countermeasure suite (8 epochs) gives ERM 0.55 / 0.57,
JPEG-10 0.58 / 0.61, sharpen + low-pass 0.54 / 0.59, grayscale 0.45 / 0.49 (worst case), and
a 224 px scraper (6 epochs) 0.56 / 0.56.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..keys import SecretKey
from .cuda import apply_cuda_at_scale, cuda_filters
from .shortcuts import PlaidParams, apply_additive, class_plaids, colour_transforms

STACK_VERSION = 1
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
    colour: float = 0.2
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
    ) -> None:
        params.scaled(strength)  # validate early
        self.key = key
        self.classes = list(classes)
        self.strength = strength
        self.params = params
        self._cache: dict = {}

    def parameters(self) -> dict:
        p = self.params
        return {
            "stack_version": STACK_VERSION,
            "cuda_application_version": 2,
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
        float32, same shape, in [0, 1]. The input is not modified."""
        out = images.float()
        if plan.blur > 0:
            bank = self._get(
                ("cuda", plan.blur),
                lambda: cuda_filters(self.key, self.classes, self.params.kernel_size, plan.blur),
            )
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
