"""Protection settings for ``real_photos.py``, written as small specs.

A setting is one or more components joined by ``+`` and applied in order; each component is a
name with optional ``key=value`` parameters after a colon::

    photo                        the library's photo method (strength mid; the default)
    photo:strength=0,ref=224     its strength low (0) / mid (1) / high (2), reference size,
                                 blur=..., colour=... overrides, stack=1/2/3 (stack version)
    cuda                         the library's CUDA preset for the file's size (strength mid)
    cuda:k=3,blur=0.3,up=2       explicit kernel size, blur and nearest upscale factor
    cuda:k=3,blur=0.3,ref=112    filter designed at a 112 px short side (apply_cuda_at_scale)
    plaid:eps=8                  class-wise plaid pattern, L-inf 8/255 (unlearnable.protect.shortcuts)
    plaid:eps=8,n=3,lo=8,hi=16,chroma=0.3
    noise:eps=8,cells=56         class-wise cell noise (56 cells per side; smooth=1 for bilinear)
    colour:s=0.1                 class-wise affine colour transform
    none                         no protection (a sanity check: PER near 0)

e.g. ``cuda+plaid:eps=8``. Every random value comes from the key through the library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from unlearnable.keys import SecretKey
from unlearnable.protect.cuda import (
    CudaProtector,
    apply_cuda,
    apply_cuda_at_scale,
    cuda_filters,
    upscale_filters,
)
from unlearnable.protect.photo import STACK_VERSION, PhotoParams, PhotoProtector
from unlearnable.protect.shortcuts import (
    NoiseParams,
    PlaidParams,
    apply_additive,
    apply_colour,
    class_noise,
    class_plaids,
    colour_transforms,
)

#: (images float (B, 3, H, W) in [0, 1], labels (B,), class names, key) -> protected float
Component = Callable[[Tensor, Tensor, list[str], SecretKey], Tensor]


@dataclass(frozen=True)
class Setting:
    spec: str
    steps: tuple[Component, ...]

    def apply(self, images: Tensor, labels: Tensor, classes: list[str], key: SecretKey) -> Tensor:
        out = images.float()
        for step in self.steps:
            out = step(out, labels, classes, key)
        return out


def _params(text: str) -> dict[str, float]:
    if not text:
        return {}
    pairs = [item.split("=", 1) for item in text.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"bad parameters {text!r}: use key=value,key=value")
    return {k.strip(): float(v) for k, v in pairs}


def _cuda(p: dict[str, float]) -> Component:
    def step(images: Tensor, labels: Tensor, classes: list[str], key: SecretKey) -> Tensor:
        h, w = images.shape[-2:]
        if "k" in p or "blur" in p:
            k = int(p.get("k", 3))
            bank = cuda_filters(key, classes, k, float(p.get("blur", 0.3)))
            if "ref" in p:
                return apply_cuda_at_scale(images, labels, bank, int(p["ref"]))
            return apply_cuda(images, labels, upscale_filters(bank, int(p.get("up", 1))))
        protector = CudaProtector(key, classes, strength="mid")
        return protector.apply(images, labels, protector.plan(h, w))

    return step


def _photo(p: dict[str, float]) -> Component:
    strengths = {0: "low", 1: "mid", 2: "high"}
    strength = strengths[int(p.get("strength", 1))]
    defaults = PhotoParams()
    params = PhotoParams(reference=int(p.get("ref", defaults.reference)),
                         blur=p.get("blur", defaults.blur), colour=p.get("colour", defaults.colour))

    version = int(p.get("stack", STACK_VERSION))

    def step(images: Tensor, labels: Tensor, classes: list[str], key: SecretKey) -> Tensor:
        protector = PhotoProtector(key, classes, strength, params, stack_version=version)
        h, w = images.shape[-2:]
        return protector.apply(images, labels, protector.plan(h, w))

    return step


def _plaid(p: dict[str, float]) -> Component:
    params = PlaidParams(
        components=int(p.get("n", 3)),
        cycles=(p.get("lo", 8.0), p.get("hi", 16.0)),
        chroma=p.get("chroma", 0.3),
    )
    eps = p.get("eps", 8.0) / 255.0

    def step(images: Tensor, labels: Tensor, classes: list[str], key: SecretKey) -> Tensor:
        h, w = images.shape[-2:]
        return apply_additive(images, labels, class_plaids(key, classes, h, w, params), eps)

    return step


def _noise(p: dict[str, float]) -> Component:
    params = NoiseParams(cells=int(p.get("cells", 56)), chroma=p.get("chroma", 0.3),
                         smooth=bool(p.get("smooth", 0)))
    eps = p.get("eps", 8.0) / 255.0

    cache: dict = {}

    def step(images: Tensor, labels: Tensor, classes: list[str], key: SecretKey) -> Tensor:
        h, w = images.shape[-2:]
        index = (key.fingerprint, tuple(classes), h, w)
        if index not in cache:
            cache[index] = class_noise(key, classes, h, w, params)
        return apply_additive(images, labels, cache[index], eps)

    return step


def _colour(p: dict[str, float]) -> Component:
    strength = p.get("s", 0.1)

    def step(images: Tensor, labels: Tensor, classes: list[str], key: SecretKey) -> Tensor:
        return apply_colour(images, labels, colour_transforms(key, classes, strength))

    return step


def _none(p: dict[str, float]) -> Component:
    return lambda images, labels, classes, key: images


_BUILDERS = {"photo": _photo, "cuda": _cuda, "plaid": _plaid, "noise": _noise, "colour": _colour, "none": _none}


def parse_setting(spec: str) -> Setting:
    steps = []
    for part in spec.split("+"):
        name, _, params = part.strip().partition(":")
        if name not in _BUILDERS:
            raise SystemExit(f"unknown component {name!r} in {spec!r}; use {', '.join(_BUILDERS)}")
        steps.append(_BUILDERS[name](_params(params)))
    return Setting(spec, tuple(steps))
