"""Training-time augmentation attacks: the scraper re-draws a strong augmentation for every batch.

Each attack here is a :class:`~unlearnable.attacks.base.TrainingPolicy` (it turns the already
crop+flip augmented mini-batch into a loss) plus a registered :class:`Attack` that hands it out.

Registered names and the papers they come from:

* ``mixup`` -- Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
* ``cutout`` -- DeVries & Taylor, "Improved Regularization of CNNs with Cutout", arXiv 1708.04552.
* ``cutmix`` -- Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features", ICCV 2019.
* ``trivialaugment`` -- Mueller & Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art Data
  Augmentation", ICCV 2021 (torchvision's ``TrivialAugmentWide``).
* ``ueraser-lite`` -- Qin et al., "Learning the Unlearnable: Adversarial Augmentations Suppress
  Unlearnable Example Attacks" (UEraser), arXiv 2303.15127. ``repeats=K>1`` is UEraser-Max.

The CUDA paper (Sadasivan et al., CVPR 2023, section 5.2) reports mixup / cutout / cutmix as
failing against CUDA on CIFAR-10 (25.5 / 25.8 / 26.9 % clean test accuracy), so these are
baselines a verifier should show, not expected breakers.

All randomness comes from the ``torch.Generator`` handed to ``loss``. Library augmentations that
draw from torch's global RNG (torchvision, kornia) run inside :func:`global_rng_from`, which forks
the global RNG and seeds it from that generator, so a run is repeatable for a seed and the caller's
global RNG state is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..imageops import to_uint8
from .base import ATTACKS, Attack, TrainingPolicy

__all__ = [
    "AugmentThenERM",
    "DescribedAttack",
    "MixPolicy",
    "PolicyAttack",
    "UEraserPolicy",
    "beta_sample",
    "cutmix_batch",
    "cutout_batch",
    "global_rng_from",
    "mixup_batch",
    "rand_int",
    "rand_perm",
    "rand_uniform",
    "soft_cross_entropy",
    "trivial_augment_batch",
    "ueraser_augment",
    "ueraser_pipeline",
]

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]
"""``(images (B, C, H, W) in [0, 1], generator) -> images of the same shape, dtype and range``."""

BatchMix = Callable[[Tensor, Tensor, int, torch.Generator], "tuple[Tensor, Tensor]"]
"""``(images, labels, num_classes, generator) -> (mixed images, soft targets (B, num_classes))``."""


# --------------------------------------------------------------------------------------------
# Randomness helpers: draw on the generator's device, then move to where the data lives.
# --------------------------------------------------------------------------------------------


def rand_uniform(
    shape: Sequence[int],
    generator: torch.Generator,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``U[0, 1)`` samples of ``shape`` drawn from ``generator``, returned on ``device``."""
    out = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return out.to(device) if device is not None else out


def rand_int(
    low: int,
    high: int,
    shape: Sequence[int],
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Integers uniform in ``[low, high)`` (int64) drawn from ``generator``, on ``device``."""
    out = torch.randint(low, high, tuple(shape), generator=generator, device=generator.device)
    return out.to(device) if device is not None else out


def rand_perm(
    n: int, generator: torch.Generator, device: torch.device | str | None = None
) -> Tensor:
    """A random permutation of ``range(n)`` (int64) drawn from ``generator``, on ``device``."""
    out = torch.randperm(n, generator=generator, device=generator.device)
    return out.to(device) if device is not None else out


def _seed_from(generator: torch.Generator) -> int:
    """A 62-bit integer seed drawn from ``generator`` (advances it by one draw)."""
    return int(rand_int(0, 2**62, (1,), generator).item())


def beta_sample(alpha: float, generator: torch.Generator) -> float:
    """One draw of ``Beta(alpha, alpha)`` from ``generator``.

    torch's Beta/Gamma samplers take no generator, so a numpy ``Generator`` seeded from one draw
    of ``generator`` does the sampling; the result is deterministic for the torch generator state.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return float(np.random.default_rng(_seed_from(generator)).beta(alpha, alpha))


@contextmanager
def global_rng_from(
    generator: torch.Generator, device: torch.device | str = "cpu"
) -> Iterator[None]:
    """Run a block that uses torch's *global* RNG deterministically from ``generator``.

    The global CPU RNG (and the RNG of ``device`` when it is a CUDA device) is forked, seeded from
    one draw of ``generator``, and restored on exit, so the caller's global state is unchanged.
    """
    seed = _seed_from(generator)
    device = torch.device(device)
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"expected float images (N, C, H, W), got {tuple(images.shape)} {images.dtype}"
        )


# --------------------------------------------------------------------------------------------
# Losses and batch augmentations (pure functions)
# --------------------------------------------------------------------------------------------


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against soft targets.

    logits: ``(B, K)``; targets: ``(B, K)`` non-negative rows summing to 1. Returns the mean over
    the batch of ``-sum_k targets * log_softmax(logits)`` (a scalar).
    """
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def mixup_batch(
    images: Tensor, labels: Tensor, num_classes: int, generator: torch.Generator, alpha: float = 1.0
) -> tuple[Tensor, Tensor]:
    """mixup (Zhang et al., ICLR 2018): convex mix of the batch with a shuffled copy of itself.

    images: ``(B, C, H, W)`` float in [0, 1]; labels: ``(B,)`` int64. One ``lam ~ Beta(alpha,
    alpha)`` per batch. Returns ``(lam * x + (1 - lam) * x[perm], lam * onehot(y) + (1 - lam) *
    onehot(y[perm]))``: images of the same shape/dtype in [0, 1] and soft targets ``(B,
    num_classes)`` whose rows sum to 1.
    """
    _check_images(images)
    lam = beta_sample(alpha, generator)
    perm = rand_perm(images.shape[0], generator, images.device)
    onehot = F.one_hot(labels, num_classes).to(images.dtype)
    mixed = lam * images + (1.0 - lam) * images[perm]
    targets = lam * onehot + (1.0 - lam) * onehot[perm]
    return mixed.clamp(0.0, 1.0), targets


def cutmix_batch(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    generator: torch.Generator,
    alpha: float = 1.0,
    prob: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """CutMix (Yun et al., ICCV 2019): paste a random box from a shuffled copy of the batch.

    With probability ``prob`` (per batch) draw ``lam ~ Beta(alpha, alpha)``, a box of side
    ``sqrt(1 - lam)`` times the image side centred uniformly (clipped at the border), paste it from
    ``x[perm]``, and mix the one-hot labels by the box's actual area. Otherwise the batch is
    returned with one-hot targets. images ``(B, C, H, W)`` in [0, 1] -> same; targets ``(B,
    num_classes)`` with rows summing to 1.
    """
    _check_images(images)
    onehot = F.one_hot(labels, num_classes).to(images.dtype)
    if float(rand_uniform((1,), generator).item()) >= prob:
        return images.clone(), onehot
    _, _, h, w = images.shape
    lam = beta_sample(alpha, generator)
    perm = rand_perm(images.shape[0], generator, images.device)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy = int(rand_int(0, h, (1,), generator).item())
    cx = int(rand_int(0, w, (1,), generator).item())
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = images.clone()
    mixed[:, :, y1:y2, x1:x2] = images[perm][:, :, y1:y2, x1:x2]
    lam_area = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
    targets = lam_area * onehot + (1.0 - lam_area) * onehot[perm]
    return mixed, targets


def cutout_batch(images: Tensor, generator: torch.Generator, fraction: float = 0.5) -> Tensor:
    """Cutout (DeVries & Taylor 2017): zero one square hole per image.

    The hole side is ``round(fraction * min(H, W))`` (16 px at 32 px, the paper's CIFAR-10
    setting), its centre uniform over the image, clipped at the border. images ``(B, C, H, W)``
    float in [0, 1] -> same shape, dtype and range (a new tensor).
    """
    _check_images(images)
    b, _, h, w = images.shape
    side = max(1, round(fraction * min(h, w)))
    cy = rand_int(0, h, (b, 1, 1), generator, images.device)
    cx = rand_int(0, w, (b, 1, 1), generator, images.device)
    ys = torch.arange(h, device=images.device).view(1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, w)
    lo = side // 2
    hole = (ys >= cy - lo) & (ys < cy - lo + side) & (xs >= cx - lo) & (xs < cx - lo + side)
    return images * (~hole).unsqueeze(1).to(images.dtype)


def trivial_augment_batch(images: Tensor, generator: torch.Generator) -> Tensor:
    """TrivialAugment-Wide (Mueller & Hutter, ICCV 2021) with one op and magnitude per image.

    Uses torchvision's ``transforms.v2.TrivialAugmentWide`` on each image quantised to uint8
    (torchvision draws a single op per call, so images are passed one by one to get the paper's
    per-image sampling; about 0.15 ms per 32x32 image on CPU). images ``(B, C, H, W)`` float in
    [0, 1] -> same shape and dtype, values on the uint8 grid in [0, 1].
    """
    from torchvision.transforms import v2

    _check_images(images)
    augment = v2.TrivialAugmentWide()
    u8 = to_uint8(images).cpu()
    with global_rng_from(generator):
        out = torch.stack([augment(im) for im in u8])
    return out.to(device=images.device, dtype=images.dtype) / 255.0


def ueraser_pipeline() -> nn.Module:
    """The strong kornia augmentation of UEraser (arXiv 2303.15127): plasma brightness, plasma
    contrast, channel shuffle (each with probability 0.5), then TrivialAugment.

    Parameters are kornia's defaults; the composition follows the paper's description, not its code.
    """
    import kornia.augmentation as K
    from kornia.augmentation.auto import TrivialAugment

    return K.AugmentationSequential(
        K.RandomPlasmaBrightness(p=0.5),
        K.RandomPlasmaContrast(p=0.5),
        K.RandomChannelShuffle(p=0.5),
        TrivialAugment(),
    )


def ueraser_augment(
    images: Tensor, generator: torch.Generator, pipeline: nn.Module | None = None
) -> Tensor:
    """One UEraser augmentation of the batch. images ``(B, C, H, W)`` float in [0, 1] -> same
    shape and dtype, clamped to [0, 1]; deterministic for the generator state."""
    _check_images(images)
    pipeline = pipeline if pipeline is not None else ueraser_pipeline()
    with global_rng_from(generator, images.device):
        out = pipeline(images)
    return out.to(images.dtype).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------


class AugmentThenERM:
    """A :class:`TrainingPolicy`: apply a random batch transform, then cross-entropy (ERM).

    ``augment(images, generator)`` must map ``(B, C, H, W)`` in [0, 1] to the same; it is re-drawn
    for every mini-batch (fresh randomness every step and epoch).
    """

    def __init__(self, augment: BatchTransform) -> None:
        self.augment = augment

    def loss(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Mean cross-entropy of ``model`` on ``augment(images)``; a scalar."""
        return F.cross_entropy(model(self.augment(images, generator)), labels)


class MixPolicy:
    """A :class:`TrainingPolicy` for label-mixing augmentations (mixup, CutMix): soft-target CE."""

    def __init__(self, mix: BatchMix) -> None:
        self.mix = mix

    def loss(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Soft-target cross-entropy of ``model`` on the mixed batch; a scalar."""
        mixed, targets = self.mix(images, labels, num_classes, generator)
        return soft_cross_entropy(model(mixed), targets)


class UEraserPolicy:
    """UEraser (arXiv 2303.15127) as a :class:`TrainingPolicy`.

    ``repeats == 1`` is UEraser-Lite (ERM on one strong augmentation of the batch); ``repeats = K >
    1`` is UEraser-Max: K independent augmentations of the batch, per-sample cross-entropy on
    each, and the loss is the batch mean of the per-sample maximum over the K copies (an
    adversarial choice of augmentation). Each copy is a separate forward pass (same BN behaviour
    as Lite). Deviation: the paper uses the adversarial augmentation only for its first
    ``aa_epochs``; a policy does not know the epoch, so it is applied throughout.
    """

    def __init__(self, repeats: int = 1) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.repeats = repeats
        self._pipeline: nn.Module | None = None

    def loss(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Max over ``repeats`` augmented copies of the per-sample CE, averaged over the batch."""
        if self._pipeline is None:
            self._pipeline = ueraser_pipeline()
        per_copy = [
            F.cross_entropy(
                model(ueraser_augment(images, generator, self._pipeline)), labels, reduction="none"
            )
            for _ in range(self.repeats)
        ]
        return torch.stack(per_copy).amax(dim=0).mean()


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------


class DescribedAttack(Attack):
    """An :class:`Attack` that carries its paper and hyperparameters for :meth:`describe`."""

    paper: str = ""

    def __init__(self, name: str, summary: str, paper: str, params: dict[str, Any]) -> None:
        self.name = name
        self.summary = summary
        self.paper = paper
        self.params = dict(params)

    def describe(self) -> dict:
        """``{"name", "summary", "params", "paper"}`` (JSON-serialisable)."""
        return {
            "name": self.name,
            "summary": self.summary,
            "params": dict(self.params),
            "paper": self.paper,
        }


class PolicyAttack(DescribedAttack):
    """Identity data, a custom training policy (a fresh one per :meth:`policy` call)."""

    def __init__(
        self,
        name: str,
        summary: str,
        paper: str,
        params: dict[str, Any],
        make_policy: Callable[[], TrainingPolicy],
    ) -> None:
        super().__init__(name, summary, paper, params)
        self._make_policy = make_policy

    def policy(self) -> TrainingPolicy:  # noqa: D102
        return self._make_policy()


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@ATTACKS.register("mixup")
def _mixup(alpha: float = 1.0) -> Attack:
    _check_positive("alpha", alpha)
    return PolicyAttack(
        "mixup",
        "mixup: train on convex mixes of image pairs with mixed soft labels",
        "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018",
        {"alpha": alpha},
        lambda: MixPolicy(lambda x, y, k, g: mixup_batch(x, y, k, g, alpha=alpha)),
    )


@ATTACKS.register("cutout")
def _cutout(fraction: float = 0.5) -> Attack:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return PolicyAttack(
        "cutout",
        "Cutout: zero a random square (half the image side) in every training image",
        "DeVries & Taylor, Improved Regularization of CNNs with Cutout, arXiv 1708.04552",
        {"fraction": fraction},
        lambda: AugmentThenERM(lambda x, g: cutout_batch(x, g, fraction=fraction)),
    )


@ATTACKS.register("cutmix")
def _cutmix(alpha: float = 1.0, prob: float = 1.0) -> Attack:
    _check_positive("alpha", alpha)
    if not 0 <= prob <= 1:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    return PolicyAttack(
        "cutmix",
        "CutMix: paste a random box from another image, mix labels by area",
        "Yun et al., CutMix, ICCV 2019",
        {"alpha": alpha, "prob": prob},
        lambda: MixPolicy(lambda x, y, k, g: cutmix_batch(x, y, k, g, alpha=alpha, prob=prob)),
    )


@ATTACKS.register("trivialaugment")
def _trivialaugment() -> Attack:
    return PolicyAttack(
        "trivialaugment",
        "TrivialAugment-Wide: one random op with a random magnitude per image, every batch",
        "Mueller & Hutter, TrivialAugment, ICCV 2021",
        {"implementation": "torchvision.transforms.v2.TrivialAugmentWide, per image"},
        lambda: AugmentThenERM(trivial_augment_batch),
    )


def _ueraser_attack(name: str, repeats: int) -> Attack:
    repeats = int(repeats)
    variant = "UEraser-Lite" if repeats == 1 else f"UEraser-Max (K={repeats})"
    return PolicyAttack(
        name,
        f"{variant}: plasma brightness/contrast, channel shuffle, TrivialAugment"
        + ("" if repeats == 1 else "; loss = max over K augmented copies"),
        "Qin et al., Learning the Unlearnable: Adversarial Augmentations Suppress Unlearnable "
        "Example Attacks (UEraser), arXiv 2303.15127",
        {"repeats": repeats},
        lambda: UEraserPolicy(repeats=repeats),
    )


@ATTACKS.register("ueraser-lite")
def _ueraser_lite(repeats: int = 1) -> Attack:
    return _ueraser_attack("ueraser-lite", repeats)


@ATTACKS.register("ueraser-max")
def _ueraser_max(repeats: int = 5) -> Attack:
    """UEraser-Max: K = ``repeats`` (default 5) augmented copies, loss = per-sample max (K x cost)."""
    return _ueraser_attack("ueraser-max", repeats)
