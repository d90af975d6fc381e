"""PGD adversarial training: the scraper trains on worst-case perturbed batches.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018; the
CUDA paper (Sadasivan et al., CVPR 2023) evaluates L-inf and L2 adversarial training as
countermeasures (see ``research/methods-protect.md`` A.3). :class:`AdversarialTrainingPolicy` is
a :class:`~unlearnable.attacks.base.TrainingPolicy`, so adversarial victims train on the same
loop as every other victim (:func:`unlearnable.attacks.training.train_classifier`, which runs on
:func:`unlearnable.training.fit`). Registered attacks: ``at-linf-4``, ``at-linf-8``,
``at-l2-0.25``, ``at-l2-0.5``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ATTACKS, Attack, TrainingPolicy

Norm = Literal["linf", "l2"]

__all__ = [
    "AdversarialTraining",
    "AdversarialTrainingPolicy",
    "Norm",
    "default_step_size",
    "pgd_attack",
]


def default_step_size(eps: float, steps: int) -> float:
    """Our default PGD step size ``2.5 * eps / steps`` (Madry et al.'s rule; enough to walk from
    one side of the ball to the other). The CUDA code used ``1.5 * eps / steps``: pass
    ``step_size=1.5 * eps / steps`` to reproduce it."""
    return 2.5 * eps / steps


def pgd_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    norm: Norm,
    eps: float,
    steps: int,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    random_start: bool = True,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy, untargeted.

    ``images``: float ``(B, C, H, W)`` in [0, 1]; ``labels``: int64 ``(B,)``. Returns detached
    adversarial images, same shape, in [0, 1], with ``||x_adv - images|| <= eps`` per sample in
    ``norm`` (``"linf"``: max over C, H, W; ``"l2"``: L2 norm over C, H, W).

    * ``"linf"`` (torchattacks ``PGD``): start at ``images + U(-eps, eps)`` clamped to [0, 1];
      each step adds ``step_size * sign(grad)``, projects onto the eps-box and clamps to [0, 1].
    * ``"l2"`` (torchattacks ``PGDL2``): start at a random point of the eps-ball (uniform
      direction, radius ``U(0, eps)``), clamped to [0, 1]; each step adds ``step_size *
      grad / ||grad||_2`` (per sample), projects onto the L2 ball and clamps to [0, 1]. Note that
      torchattacks 3.2.6, which the CUDA paper used, computed the L2 random start but never added
      it: pass ``random_start=False`` to reproduce that.

    ``step_size`` defaults to :func:`default_step_size` (``2.5 * eps / steps``). The model runs in
    eval mode (batch-norm running statistics, no dropout) during the attack and is put back in
    its previous mode afterwards; parameter gradients are not touched. ``images`` is unchanged.
    Random starts come from ``generator`` (a fresh unseeded one if ``None``).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or steps < 0:
        raise ValueError("eps and steps must be >= 0")
    x0 = images.detach()
    if eps == 0 or steps == 0:
        return x0.clone()
    alpha = default_step_size(eps, steps) if step_size is None else step_size
    gen = generator if generator is not None else torch.Generator()
    shape = (x0.shape[0],) + (1,) * (x0.dim() - 1)

    def l2(t: Tensor) -> Tensor:
        return t.flatten(1).norm(dim=1).view(shape)

    def project(x: Tensor) -> Tensor:
        delta = x - x0
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            delta = delta * (eps / l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x0 + delta).clamp(0.0, 1.0)

    x = x0.clone()
    if random_start:
        if norm == "linf":
            noise = torch.rand(x0.shape, generator=gen, device=gen.device) * (2 * eps) - eps
        else:
            direction = torch.randn(x0.shape, generator=gen, device=gen.device)
            radius = torch.rand(shape, generator=gen, device=gen.device) * eps
            noise = direction / l2(direction).clamp_min(1e-12) * radius
        x = project(x0 + noise.to(x0.device, x0.dtype))

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                x.requires_grad_(True)
                loss = F.cross_entropy(model(x), labels)
                (grad,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    if norm == "linf":
                        x = x + alpha * grad.sign()
                    else:
                        x = x + alpha * grad / l2(grad).clamp_min(1e-12)
                    x = project(x)
    finally:
        model.train(was_training)
    return x.detach()


class AdversarialTrainingPolicy:
    """PGD adversarial training (Madry et al.): the loss is the cross-entropy on the PGD
    adversarial batch only (no clean term), as in the CUDA code. See :func:`pgd_attack`."""

    def __init__(
        self,
        norm: Norm,
        eps: float,
        steps: int,
        step_size: float | None = None,
        random_start: bool = True,
    ) -> None:
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        self.norm: Norm = norm
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = (
            default_step_size(eps, steps) if step_size is None and steps > 0 else step_size
        )
        self.random_start = random_start

    def loss(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        """images: ``(B, C, H, W)`` float in [0, 1]; labels: ``(B,)`` int64; returns a scalar."""
        adv = pgd_attack(
            model,
            images,
            labels,
            self.norm,
            self.eps,
            self.steps,
            self.step_size,
            generator,
            self.random_start,
        )
        return F.cross_entropy(model(adv), labels)


class AdversarialTraining(Attack):
    """The scraper trains with PGD adversarial training (on the data as it is)."""

    def __init__(
        self,
        name: str,
        norm: Norm,
        eps: float,
        steps: int = 5,
        step_size: float | None = None,
        random_start: bool = True,
        eps_label: str | None = None,
    ) -> None:
        self.name = name
        self.norm: Norm = norm
        self.eps = float(eps)
        self.steps = int(steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.step_size = (
            default_step_size(self.eps, self.steps) if step_size is None else float(step_size)
        )
        self.random_start = random_start
        label = eps_label or f"{eps:g}"
        self.summary = (
            f"PGD-{self.steps} adversarial training, {'L-inf' if norm == 'linf' else 'L2'} "
            f"eps {label}"
        )

    def policy(self) -> TrainingPolicy:  # noqa: D102
        return AdversarialTrainingPolicy(
            self.norm, self.eps, self.steps, self.step_size, self.random_start
        )

    def describe(self) -> dict:  # noqa: D102
        return {
            "name": self.name,
            "summary": self.summary,
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
        }


def _register_at(name: str, norm: Norm, eps: float, eps_label: str) -> None:
    def factory(steps: int = 5, step_size: float | None = None) -> Attack:
        return AdversarialTraining(name, norm, eps, steps, step_size, eps_label=eps_label)

    factory.__doc__ = (
        f"PGD adversarial training, {norm} eps {eps_label}. Options: ``steps`` (default 5, to "
        f"fit CPU budgets; the CUDA paper used 10) and ``step_size`` (default 2.5 * eps / steps; "
        f"the CUDA code used 1.5 * eps / steps)."
    )
    ATTACKS.add(name, factory)


_register_at("at-linf-4", "linf", 4 / 255, "4/255")
_register_at("at-linf-8", "linf", 8 / 255, "8/255")
_register_at("at-l2-0.25", "l2", 0.25, "0.25")
_register_at("at-l2-0.5", "l2", 0.5, "0.5")
