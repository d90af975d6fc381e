"""Classification pieces on top of :func:`~unlearnable.training.loop.fit`: image tensors to
float batches, crop + flip augmentation, accuracy, the prediction histogram, training accuracy
from the forward passes a loss makes, and a shuffled mini-batch source over in-memory tensors.

Images are ``(N, C, H, W)`` ``uint8`` (4x less memory) or float in ``[0, 1]``; each mini-batch is
converted to float ``[0, 1]`` on its own. Labels are ``int64`` ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import index_batches
from .modes import kept_modes


def to_float_images(images: Tensor) -> Tensor:
    """``uint8`` ``(B, C, H, W)`` -> float32 in [0, 1] (``/ 255``); float input is returned as
    float32 (a new tensor only if the dtype changes). Never modifies ``images``."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images.float()


def random_crop_flip(
    images: Tensor, generator: torch.Generator, padding: int | None = None
) -> Tensor:
    """Batched random crop with zero padding and random horizontal flip.

    ``images``: float ``(B, C, H, W)``; returns a new tensor of the same shape. Each image gets
    its own offset in ``[0, 2 * padding]`` (both axes) and is flipped with probability 1/2.
    ``padding`` defaults to ``max(1, min(H, W) // 8)`` (4 at 32 px). The random numbers come
    from ``generator`` (on any device; they are moved to the images' device).
    """
    b, c, h, w = images.shape
    pad = max(1, min(h, w) // 8) if padding is None else padding
    dev = images.device
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=generator.device)
    flips = torch.rand(b, generator=generator, device=generator.device) < 0.5
    offsets, flips = offsets.to(dev), flips.to(dev)
    out = images
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = offsets[0][:, None] + torch.arange(h, device=dev)  # (B, H)
        cols = offsets[1][:, None] + torch.arange(w, device=dev)  # (B, W)
        out = padded[
            torch.arange(b, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> Tensor:
    """Top-1 predictions, int64 ``(N,)`` on the CPU, of ``model`` in eval mode (its mode is
    restored afterwards, each submodule's own). ``images``: ``(N, C, H, W)`` uint8, or float in [0, 1]."""
    device = _device_of(model, device)
    out = []
    with kept_modes(model):
        model.eval()
        for start in range(0, images.shape[0], batch_size):
            x = to_float_images(images[start : start + batch_size].to(device))
            out.append(model(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (in eval mode; every submodule's mode is restored afterwards).

    ``images``: ``(N, C, H, W)`` uint8, or float in [0, 1]; ``labels``: int64 ``(N,)``.
    ``device`` defaults to the model's parameter device. Returns 0.0 for an empty set.
    """
    n = images.shape[0]
    if n == 0:
        return 0.0
    device = _device_of(model, device)
    correct = 0
    with kept_modes(model):
        model.eval()
        for start in range(0, n, batch_size):
            x = to_float_images(images[start : start + batch_size].to(device))
            y = labels[start : start + batch_size].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / n


def prediction_histogram(predictions: Tensor, num_classes: int) -> list[float]:
    """Fraction of ``predictions`` (int64 ``(N,)``) per class ``0 .. num_classes - 1`` (sums to
    1; all zeros for ``N = 0``)."""
    counts = torch.bincount(predictions.cpu(), minlength=num_classes)[:num_classes]
    n = max(int(predictions.numel()), 1)
    return [int(c) / n for c in counts]


class LogitsTap:
    """Keeps the last training-mode ``(B, K)`` output of ``model`` whose batch size is the one
    given to :meth:`reset` (training accuracy of whatever forward passes a loss makes, e.g. the
    adversarial batch of PGD training). Call :meth:`remove` when done."""

    def __init__(self, model: nn.Module) -> None:
        self.logits: Tensor | None = None
        self.batch: int = -1
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and isinstance(output, Tensor) and output.dim() == 2:
            if output.shape[0] == self.batch:
                self.logits = output.detach()

    def reset(self, batch: int) -> None:
        """Forget the last logits; watch for outputs of ``batch`` rows."""
        self.batch, self.logits = batch, None

    def remove(self) -> None:
        """Unregister the hook."""
        self.handle.remove()


class ClassifierBatches:
    """Shuffled mini-batches ``(images, labels)`` over in-memory tensors, re-drawn per epoch.

    Every iteration draws a permutation from ``shuffle``, cuts it into batches of
    ``batch_size`` (a last batch of one image is dropped, see
    :func:`~unlearnable.training.batches.index_batches`), and yields float images in [0, 1] on
    ``device`` (crop + flip augmented from ``augment`` when given) and int64 labels on
    ``device``. ``images``/``labels`` may live on the CPU or on ``device``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        device: torch.device | str,
        shuffle: torch.Generator,
        augment: torch.Generator | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle, self.augment = shuffle, augment

    def __len__(self) -> int:
        n = self.images.shape[0]
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > 1 or (rest == 1 and n < 2) else 0)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.images.shape[0]
        perm = torch.randperm(n, generator=self.shuffle)
        for idx in index_batches(perm, self.batch_size):
            x = to_float_images(self.images[idx.to(self.images.device)].to(self.device))
            y = self.labels[idx.to(self.labels.device)].to(self.device)
            if self.augment is not None:
                x = random_crop_flip(x, self.augment)
            yield x, y


__all__ = [
    "ClassifierBatches",
    "LogitsTap",
    "evaluate",
    "predict",
    "prediction_histogram",
    "random_crop_flip",
    "to_float_images",
]
