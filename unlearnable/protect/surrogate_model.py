"""The :class:`Surrogate` module (a frozen feature extractor with its own preprocessing) and the
surrogate errors and warnings, shared by :mod:`.surrogate` and :mod:`.surrogate_loaders`.

See :mod:`unlearnable.protect.surrogate` for the surrogate specs and how surrogates are loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..imageops import resize_center_crop

__all__ = ["Surrogate", "SurrogateError", "WeakSurrogateWarning"]


class SurrogateError(UsageError, RuntimeError):
    """A surrogate spec cannot be parsed or its weights cannot be loaded."""


class WeakSurrogateWarning(UserWarning):
    """The surrogate has random weights: fine for tests, weak as a protection."""


# --------------------------------------------------------------------------------------------
# Image preparation
# --------------------------------------------------------------------------------------------


def _check_float_images(images: Tensor) -> None:
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise TypeError("images must be a float tensor with values in [0, 1]")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected images of shape (B, 1 or 3, H, W), got {tuple(images.shape)} "
            "(drop the alpha channel before calling)"
        )


# --------------------------------------------------------------------------------------------
# The surrogate module
# --------------------------------------------------------------------------------------------


class Surrogate(nn.Module):
    """A frozen feature extractor with its own preprocessing.

    Attributes: ``name`` (human readable), ``spec`` (what it was loaded from), ``input_size``
    (square side in pixels), ``embed_dim`` (D), ``cache_id`` (identifies the weights for the
    feature cache: the spec plus the input size and, for local files, their SHA-256; for random
    weights also the torch and open_clip versions).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str,
        spec: str,
        input_size: int,
        embed_dim: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_id: str,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.spec = spec
        self.input_size = int(input_size)
        self.embed_dim = int(embed_dim)
        self.cache_id = f"{spec}|size={self.input_size}|{weights_id}"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Surrogate:
        """A surrogate stays in eval mode (frozen BN/dropout); ``train(True)`` is ignored."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def prepare(self, images: Tensor) -> Tensor:
        """``(B, 1|3, H, W)`` float [0, 1] -> ``(B, 3, S, S)`` on the surrogate's device.

        Grey images are repeated to three channels; non-square images are centre-cropped; the
        result is resized to ``S = input_size`` (bilinear, antialiased). Differentiable.
        """
        _check_float_images(images)
        images = images.to(device=self.device, dtype=torch.float32)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = resize_center_crop(images, self.input_size)
        return images

    def embed(self, prepared: Tensor) -> Tensor:
        """``(B, 3, S, S)`` float [0, 1] (from :meth:`prepare`) -> ``(B, D)`` float32."""
        out = self.backbone((prepared - self.mean) / self.std)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()

    def features(self, images: Tensor) -> Tensor:
        """``(B, 1|3, H, W)`` float [0, 1] -> embeddings ``(B, D)`` float32 (not normalised).

        Differentiable with respect to ``images``; the images are not modified.
        """
        return self.embed(self.prepare(images))

    def forward(self, images: Tensor) -> Tensor:  # noqa: D102
        return self.features(images)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, embed_dim={self.embed_dim}"
