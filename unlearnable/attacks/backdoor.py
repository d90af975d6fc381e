"""Backdoor attacks (all-to-one) to build the test subjects of the EBYD defense.

A backdoor attack poisons a fraction ``rate`` of the training set: it stamps a *trigger* on
images of non-target classes and relabels them as the ``target`` class. A model trained on it
keeps its clean accuracy (CA) and predicts the target for any triggered input; the attack
success rate (ASR) is the fraction of triggered **non-target** test images classified as the
target (target-class images are left out: they would count as successes for free).

Registered triggers (:data:`BACKDOORS`, build with :func:`make_backdoor`):

* ``badnets``: a ``size x size`` patch pasted ``margin`` pixels from the bottom-right corner,
  the same values in every channel: all white (``pattern="white"``, BackdoorBench's default)
  or a black/white checkerboard (``pattern="grid"``, white where ``(row + col)`` is even, the
  EBYD/RNP grid trigger). Pixel-exact: the patch replaces the pixels, nothing else changes.
* ``blend``: ``(1 - alpha) * x + alpha * pattern`` over the whole image (alpha 0.2 in
  BackdoorBench and EBYD), with a fixed uniform-noise pattern drawn from ``pattern_seed`` at the
  image's size (the papers blend a cartoon image; any fixed pattern works the same way).
* ``wanet``: a fixed smooth warp (Nguyen & Tran, ICLR 2021): a ``k x k`` field of random
  offsets in [-1, 1] (from ``field_seed``), normalised to mean absolute value 1, upsampled
  bicubically to ``H x W`` and scaled by ``s / H``; images are resampled with
  ``grid_sample`` at ``identity + field`` (clamped to the image). One field for every image
  (the released EBYD helper wrongly drew a new field per image). ``cross_ratio`` adds "noise
  mode" samples (``cross_ratio * rate * N`` images warped with the field plus random jitter,
  labels kept) that make the backdoor subtler (BackdoorBench: 2; default 0 here, as small
  CPU budgets struggle to learn WaNet with it).

Images are float ``(B, C, H, W)`` in [0, 1] (triggers) or uint8 / float (poisoning and ASR,
converted per batch); nothing is modified in place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..imageops import to_uint8
from ..registry import Registry
from ..training.classification import predict, to_float_images


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be float (B, C, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}"
        )


class BackdoorTrigger:
    """Base class: ``apply(images)`` stamps the trigger; subclasses are frozen dataclasses."""

    name = "trigger"

    def apply(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` float in [0, 1] -> triggered copy, same shape, dtype, device."""
        raise NotImplementedError

    def noise_apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The "noise mode" variant for cross samples (only WaNet has one)."""
        raise UsageError(f"the {self.name} trigger has no noise mode")

    def describe(self) -> dict[str, Any]:
        """``{"name": ..., <parameters>}``; :func:`backdoor_from_spec` rebuilds the trigger."""
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]


#: name -> factory ``(**parameters) -> BackdoorTrigger``.
BACKDOORS: Registry[Callable[..., BackdoorTrigger]] = Registry("backdoor attack")


@BACKDOORS.register("badnets")
@dataclass(frozen=True)
class BadNets(BackdoorTrigger):
    """Patch trigger: ``size x size`` pixels, ``margin`` pixels from the bottom-right corner."""

    size: int = 3
    margin: int = 0
    pattern: str = "white"
    name = "badnets"

    def __post_init__(self) -> None:
        if self.size < 1 or self.margin < 0:
            raise UsageError(
                f"badnets: size must be >= 1 and margin >= 0, got {self.size}, {self.margin}"
            )
        if self.pattern not in ("white", "grid"):
            raise UsageError(f"badnets: pattern must be 'white' or 'grid', got {self.pattern!r}")

    def patch(self, device: torch.device | str = "cpu") -> Tensor:
        """The patch values ``(size, size)`` in {0, 1} (the same in every channel)."""
        if self.pattern == "white":
            return torch.ones(self.size, self.size, device=device)
        idx = torch.arange(self.size, device=device)
        return ((idx[:, None] + idx[None, :]) % 2 == 0).float()

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        """Rows and columns the patch covers in an ``height x width`` image."""
        bottom, right = height - self.margin, width - self.margin
        if bottom - self.size < 0 or right - self.size < 0:
            raise UsageError(
                f"badnets: a {self.size} px patch at margin {self.margin} does not "
                f"fit a {height}x{width} image"
            )
        return slice(bottom - self.size, bottom), slice(right - self.size, right)

    def apply(self, images: Tensor) -> Tensor:  # noqa: D102
        _check_images(images)
        rows, cols = self.region(images.shape[2], images.shape[3])
        out = images.clone()
        out[:, :, rows, cols] = self.patch(images.device).to(images.dtype)
        return out


@BACKDOORS.register("blend")
@dataclass(frozen=True)
class Blend(BackdoorTrigger):
    """``(1 - alpha) * x + alpha * pattern``; the pattern is U(0, 1) noise from ``pattern_seed``."""

    alpha: float = 0.2
    pattern_seed: int = 0
    name = "blend"

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise UsageError(f"blend: alpha must be in (0, 1], got {self.alpha}")

    def pattern(self, channels: int, height: int, width: int) -> Tensor:
        """The fixed pattern ``(channels, height, width)`` float in [0, 1] (CPU)."""
        gen = torch.Generator().manual_seed(int(self.pattern_seed))
        return torch.rand(channels, height, width, generator=gen)

    def apply(self, images: Tensor) -> Tensor:  # noqa: D102
        _check_images(images)
        _, c, h, w = images.shape
        pattern = self.pattern(c, h, w).to(images.device, images.dtype)
        return (1 - self.alpha) * images + self.alpha * pattern


@BACKDOORS.register("wanet")
@dataclass(frozen=True)
class WaNet(BackdoorTrigger):
    """Fixed warping field: ``k x k`` control grid, strength ``s``, from ``field_seed``."""

    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    field_seed: int = 0
    cross_ratio: float = 0.0
    name = "wanet"

    def __post_init__(self) -> None:
        if self.k < 2 or self.s <= 0 or self.cross_ratio < 0:
            raise UsageError("wanet: k must be >= 2, s > 0 and cross_ratio >= 0")

    def grid(self, height: int, width: int) -> Tensor:
        """The sampling grid ``(1, H, W, 2)`` in [-1, 1] (x, y), for ``grid_sample``."""
        gen = torch.Generator().manual_seed(int(self.field_seed))
        control = torch.rand(1, 2, self.k, self.k, generator=gen) * 2 - 1
        control = control / control.abs().mean()
        offsets = F.interpolate(
            control, size=(height, width), mode="bicubic", align_corners=True
        ).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij"
        )
        identity = torch.stack([xs, ys], dim=-1)[None]
        return (identity + self.s * offsets / height * self.grid_rescale).clamp(-1, 1)

    def _warp(self, images: Tensor, grid: Tensor) -> Tensor:
        out = F.grid_sample(images, grid.to(images.device, images.dtype), align_corners=True)
        return out.clamp(0, 1)

    def apply(self, images: Tensor) -> Tensor:  # noqa: D102
        _check_images(images)
        b, _, h, w = images.shape
        return self._warp(images, self.grid(h, w).expand(b, -1, -1, -1))

    def noise_apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The warp plus per-image random jitter of up to one pixel (labels are kept)."""
        _check_images(images)
        b, _, h, w = images.shape
        jitter = (torch.rand(b, h, w, 2, generator=generator) * 2 - 1) / h
        return self._warp(images, (self.grid(h, w) + jitter).clamp(-1, 1))


def make_backdoor(name: str, **parameters: Any) -> BackdoorTrigger:
    """Build the registered trigger ``name`` (``UsageError`` for unknown names or parameters)."""
    try:
        factory = BACKDOORS.get(name)
    except KeyError as exc:
        raise UsageError(str(exc).strip('"')) from None
    fields = getattr(factory, "__dataclass_fields__", {})
    unknown = sorted(set(parameters) - set(fields)) if fields else []
    if unknown:
        raise UsageError(
            f"{name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(fields)}"
        )
    for key, value in parameters.items():
        default = getattr(fields.get(key), "default", None)
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{name}: {key} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and value != int(value):
            raise UsageError(f"{name}: {key} must be a whole number, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise UsageError(f"{name}: {key} must be a name, got {value!r}")
    try:
        return factory(**parameters)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name}: {exc}") from None


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def backdoor_from_spec(spec: str | Path | dict[str, Any]) -> BackdoorTrigger:
    """A trigger from a description: a dict from :meth:`BackdoorTrigger.describe` (extra keys
    such as ``target`` are ignored), a JSON file holding one (or ``{"trigger": {...}}``), or text
    ``NAME[:KEY=VALUE,...]`` such as ``"blend:alpha=0.1,pattern_seed=3"``."""
    if isinstance(spec, (str, Path)) and Path(spec).is_file():
        try:
            spec = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read the trigger description {spec}: {exc}") from None
        if isinstance(spec, dict) and isinstance(spec.get("trigger"), dict):
            spec = spec["trigger"]
    if isinstance(spec, dict):
        if "name" not in spec:
            raise UsageError("a trigger description needs a 'name'")
        name = str(spec["name"])
        factory = BACKDOORS.get(name) if name in BACKDOORS else None
        known = set(getattr(factory, "__dataclass_fields__", {}))
        return make_backdoor(name, **{k: v for k, v in spec.items() if k in known})
    name, _, rest = str(spec).partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"trigger parameter {item!r} is not KEY=VALUE")
        params[key.strip()] = _value(value.strip())
    return make_backdoor(name.strip(), **params)


def trigger_and_target(
    trigger: str | None, target: str | None, classes: tuple[str, ...] | list[str]
) -> tuple[str | dict[str, Any] | None, int | None]:
    """``(trigger spec, target index)`` from purify's ``--trigger`` / ``--target`` options
    (``(None, None)`` without a trigger). ``trigger``: a trigger.json of ``backdoor train`` or
    ``NAME[:KEY=VALUE,...]``; ``target``: a class name or index of ``classes`` (default: the
    trigger file's). :class:`UsageError` for an unreadable file, a bad spec or target."""
    if trigger is None:
        if target is not None:
            raise UsageError("--target needs --trigger")
        return None, None
    spec: str | dict[str, Any] = trigger
    path = Path(trigger)
    if path.is_file():
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"cannot read the trigger description {path}: {exc}") from None
        if not isinstance(spec, dict):
            raise UsageError(
                f"{path} is not a trigger description (a JSON object such as the trigger.json "
                "of `backdoor train`)"
            )
    index = None
    if target is not None:
        index = _class_index(target, classes)
        if index is None:
            raise UsageError(f"--target {target!r} is not a class of the model")
    elif isinstance(spec, dict):
        index = _class_index(spec.get("target_name"), classes)
        if index is None and spec.get("target") is not None:
            index = _class_index(spec["target"], classes)
            if index is None:
                raise UsageError(
                    f"the trigger's target {spec['target']!r} is not a class of the model "
                    f"({len(classes)} classes); give --target"
                )
    if index is None:
        raise UsageError("give --target with --trigger (the trigger names no target)")
    backdoor_from_spec(spec)  # a bad spec is a usage error before any work
    return spec, index


def _class_index(value: object, classes: tuple[str, ...] | list[str]) -> int | None:
    """The index of a class given by name or by index (int or digits), else ``None``."""
    if value is None:
        return None
    if str(value) in classes:
        return list(classes).index(str(value))
    text = str(value).strip()
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    return None


# ------------------------------------------------------------------------------- poisoning


@dataclass(frozen=True)
class PoisonConfig:
    """All-to-one poisoning: ``rate`` = poisoned images / all training images (taken from the
    non-target classes), relabelled ``target``; ``seed`` picks the images."""

    target: int = 0
    rate: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rate < 1:
            raise UsageError(f"poison rate must be in [0, 1), got {self.rate}")
        if self.target < 0:
            raise UsageError(f"target must be a class index >= 0, got {self.target}")


@dataclass
class PoisonedSet:
    """A poisoned training set: ``images`` like the input (uint8 or float), int64 ``labels``,
    ``poisoned`` and ``cross`` (noise-mode) indices, int64 ``(P,)``."""

    images: Tensor
    labels: Tensor
    poisoned: Tensor
    cross: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))


def _stamp(images: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    out = fn(to_float_images(images))
    return to_uint8(out) if images.dtype == torch.uint8 else out.to(images.dtype)


def poison_training_set(
    images: Tensor, labels: Tensor, trigger: BackdoorTrigger, config: PoisonConfig
) -> PoisonedSet:
    """Stamp ``trigger`` on ``round(rate * N)`` random non-target images and relabel them.

    ``images``: ``(N, C, H, W)`` uint8 or float in [0, 1]; ``labels``: int64 ``(N,)``. uint8
    images come back uint8 (the triggered pixels rounded). Raises ``UsageError`` when there are
    too few non-target images. The inputs are not modified.
    """
    n = images.shape[0]
    if int(config.target) >= int(labels.max()) + 1 and n:
        raise UsageError(f"target class {config.target} does not occur in the labels")
    gen = torch.Generator().manual_seed(int(config.seed))
    candidates = torch.nonzero(labels != config.target).flatten()
    count = round(config.rate * n)
    cross_count = round(getattr(trigger, "cross_ratio", 0.0) * config.rate * n)
    if count + cross_count > candidates.numel():
        raise UsageError(
            f"cannot poison {count} (+{cross_count} cross) of {candidates.numel()} "
            "non-target images; lower the rate"
        )
    order = candidates[torch.randperm(candidates.numel(), generator=gen)]
    chosen, cross = order[:count].sort().values, order[count : count + cross_count].sort().values
    out_images, out_labels = images.clone(), labels.clone()
    if count:
        out_images[chosen] = _stamp(images[chosen], trigger.apply)
        out_labels[chosen] = config.target
    if cross_count:
        out_images[cross] = _stamp(images[cross], lambda x: trigger.noise_apply(x, gen))
    return PoisonedSet(out_images, out_labels, chosen, cross)


def triggered_test_set(
    images: Tensor, labels: Tensor, trigger: BackdoorTrigger, target: int
) -> tuple[Tensor, Tensor]:
    """The ASR test set: the non-target images with the trigger (float ``(M, C, H, W)`` in
    [0, 1]) and their true labels (int64 ``(M,)``, for robust accuracy)."""
    keep = labels != target
    return _stamp(to_float_images(images[keep]), trigger.apply), labels[keep]


def attack_success_rate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    trigger: BackdoorTrigger,
    target: int,
    batch_size: int = 256,
) -> float:
    """Fraction of triggered **non-target** images that ``model`` classifies as ``target`` (in
    [0, 1]; 0.0 when there is none). ``images``: ``(N, C, H, W)`` uint8 or float in [0, 1] at
    the model's input size."""
    keep = torch.nonzero(labels != target).flatten()
    if keep.numel() == 0:
        return 0.0
    hits = 0
    for start in range(0, keep.numel(), batch_size):
        idx = keep[start : start + batch_size]
        triggered = trigger.apply(to_float_images(images[idx]))
        hits += int((predict(model, triggered, batch_size) == target).sum())
    return hits / keep.numel()


__all__ = [
    "BACKDOORS",
    "BackdoorTrigger",
    "BadNets",
    "Blend",
    "PoisonConfig",
    "PoisonedSet",
    "WaNet",
    "attack_success_rate",
    "backdoor_from_spec",
    "make_backdoor",
    "poison_training_set",
    "trigger_and_target",
    "triggered_test_set",
]
