"""What every scraper-side attack looks like to ``verify``.

An *attack* is what a scraper does to learn from protected data anyway. ``verify`` trains one
victim per attack on the protected training set and one on the clean training set, the same way,
and compares their clean test accuracy. An attack can act at three points:

1. ``prepare_train`` transforms the whole training set once before training (JPEG, grayscale,
   sharpening + frequency filtering, mixing in clean data, ...);
2. ``prepare_test`` transforms the test set the same way where the attack needs it (a model
   trained on grayscale images is tested on grayscale images);
3. ``policy`` gives the :class:`TrainingPolicy` that turns each mini-batch into a loss (plain
   ERM, PGD adversarial training, mixup, deconvolution AT, ...);
   :func:`unlearnable.attacks.training.train_classifier` calls it as the loss function of the
   one training loop, :func:`unlearnable.training.fit`.

All images are float tensors ``(N, C, H, W)`` in ``[0, 1]``; no method changes its input in place.
Randomness comes only from the ``torch.Generator`` handed in, so a run is repeatable for a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry


class TrainingPolicy(Protocol):
    """Turns one (already crop+flip augmented) mini-batch into the loss to minimise."""

    def loss(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        """images: ``(B, C, H, W)`` float in [0, 1]; labels: ``(B,)`` int64; returns a scalar."""
        ...


class ERMPolicy:
    """Empirical risk minimisation: cross-entropy on the batch as it is."""

    def loss(self, model, images, labels, num_classes, generator):  # noqa: D102
        return F.cross_entropy(model(images), labels)


class Attack:
    """Base class of registered attacks: identity data, ERM training. Subclasses override."""

    name: str = "erm"
    summary: str = "plain training (empirical risk minimisation)"

    def prepare_train(
        self, images: Tensor, clean_images: Tensor, generator: torch.Generator
    ) -> Tensor:
        """The training set the victim sees: ``(N, C, H, W)`` float in [0, 1].

        ``clean_images`` is the unprotected training set, aligned with ``images`` (same order);
        only attacks that model a partly protected set use it.
        """
        return images

    def prepare_test(self, images: Tensor) -> Tensor:
        """The test set as the victim sees it (identity for most attacks)."""
        return images

    def policy(self) -> TrainingPolicy:
        return ERMPolicy()

    def describe(self) -> dict:
        """Name and hyperparameters, for reports (JSON-serialisable)."""
        return {"name": self.name, "summary": self.summary}


AttackFactory = Callable[..., Attack]

#: name -> factory. Factories take keyword options (e.g. ``ratio=0.5``) and return an Attack.
ATTACKS: Registry[AttackFactory] = Registry("attack")


@ATTACKS.register("erm")
def _erm() -> Attack:
    return Attack()


def make_attack(name: str, **options) -> Attack:
    """Build the registered attack ``name`` with ``options``."""
    return ATTACKS.get(name)(**options)
