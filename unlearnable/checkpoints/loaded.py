"""A loaded classifier with its spec: images in [0, 1] in, logits or class indices out."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..imageops import resize_center_crop
from ..training.modes import kept_modes
from .formats import FORMAT_EXPORT
from .spec import ModelSpec

# ITU-R BT.601 luma weights, to feed colour images to a one-channel model.
_LUMA = (0.299, 0.587, 0.114)


class LoadedModel(nn.Module):
    """A classifier read by :func:`~unlearnable.checkpoints.load_model`, in eval mode.

    Attributes: ``module`` (the network itself: it takes ``(B, in_channels, S, S)`` inputs,
    normalised by the caller when ``spec.normalized_by_model`` is false), ``spec``
    (:class:`~unlearnable.checkpoints.ModelSpec`), ``source`` (the file read), ``source_format``
    (``"unlearnable"``, ``"safetensors"``, ``"pickle"``, ``"torchscript"``,
    ``"torch-export"``), ``sha256`` (of the weights or archive file) and ``fixed_batch`` (the
    batch size a ``torch.export`` archive was exported with when it is static, else ``None``).

    Getting predictions from images ``(B, C, H, W)`` float in [0, 1] (any size; C = 1 or 3)::

        loaded = load_model("runs/victim")
        logits = loaded(images)            # (B, num_classes), differentiable w.r.t. images
        labels = loaded.predict(images)    # (B,) int64 class indices, no gradients, batched
        names = loaded.class_names(labels) # ["cat", "dog", ...]

    Both go through :meth:`prepare`: grey images are repeated to RGB (colour to luma for a
    one-channel model), the images are centre-cropped to a square and resized to
    ``spec.input_size`` (bilinear, antialiased), and ``(x - mean) / std`` is applied when the
    network does not normalise itself.
    """

    def __init__(
        self,
        module: nn.Module,
        spec: ModelSpec,
        *,
        source: str | Path,
        source_format: str,
        sha256: str,
        fixed_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.spec = spec
        self.source = Path(source)
        self.source_format = source_format
        self.sha256 = sha256
        self.fixed_batch = fixed_batch
        self.external_normalization = not spec.normalized_by_model
        channels = spec.in_channels
        mean = spec.mean if self.external_normalization and spec.mean else (0.0,)
        std = spec.std if self.external_normalization and spec.std else (1.0,)
        self.register_buffer("mean", _per_channel(mean, channels), persistent=False)
        self.register_buffer("std", _per_channel(std, channels), persistent=False)
        self.train(False)

    # ------------------------------------------------------------------ modes and devices

    def train(self, mode: bool = True) -> LoadedModel:
        """Set train/eval mode; an exported program keeps the mode it was exported in."""
        self.training = mode
        if self.source_format != FORMAT_EXPORT:
            self.module.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def input_dtype(self) -> torch.dtype:
        """The float precision the network takes: that of its first floating parameter
        (float32 for most models, float64 for a double-precision archive)."""
        return next(
            (p.dtype for p in self.module.parameters() if p.is_floating_point()), torch.float32
        )

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    # ------------------------------------------------------------------ forward

    def prepare(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` float [0, 1] -> ``(B, in_channels, S, S)`` on the model's device in
        its :attr:`input_dtype` (float32 for most models), as the network takes it (normalised
        when the network does not). Differentiable; the input is not modified."""
        if not torch.is_tensor(images) or not images.is_floating_point():
            raise TypeError("images must be a float tensor with values in [0, 1]")
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        images = images.to(device=self.device, dtype=self.input_dtype)
        want, have = self.spec.in_channels, images.shape[1]
        if have != want:
            if have == 1:
                images = images.expand(-1, want, -1, -1)
            elif have == 3 and want == 1:
                luma = torch.tensor(_LUMA, device=images.device).view(1, 3, 1, 1)
                images = (images * luma).sum(dim=1, keepdim=True)
            else:
                raise ValueError(f"the model takes {want}-channel images, got {have} channels")
        size = self.spec.input_size
        if images.shape[-2:] != (size, size):
            images = resize_center_crop(images, size)
        if self.external_normalization:
            images = (images - self.mean) / self.std
        return images

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` float [0, 1] -> logits ``(B, num_classes)`` float32.

        Differentiable with respect to ``images`` (and the weights, in whatever mode the model
        is in). ``(B, C, H, W)`` is prepared by :meth:`prepare` first.
        """
        return self.run_prepared(self.prepare(images))

    def run_prepared(self, prepared: Tensor) -> Tensor:
        """The network on inputs from :meth:`prepare`: ``(B, in_channels, S, S)`` ->
        ``(B, num_classes)`` float32. Splits (and pads) batches for fixed-batch exports."""
        if self.fixed_batch is None or prepared.shape[0] == self.fixed_batch:
            return _logits(self.module(prepared))
        chunks = []
        for start in range(0, prepared.shape[0], self.fixed_batch):
            chunk = prepared[start : start + self.fixed_batch]
            short = self.fixed_batch - chunk.shape[0]
            if short:
                chunk = torch.cat([chunk, chunk[-1:].expand(short, -1, -1, -1)])
            chunks.append(_logits(self.module(chunk))[: self.fixed_batch - short])
        return torch.cat(chunks) if chunks else prepared.new_zeros(0, self.num_classes)

    @torch.no_grad()
    def predict_logits(self, images: Tensor, *, batch_size: int = 256) -> Tensor:
        """Logits ``(B, num_classes)`` float32 on the CPU for ``(B, C, H, W)`` float [0, 1]
        images, in batches of ``batch_size``, in eval mode (the mode is restored), no
        gradients."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        with kept_modes(self):
            self.train(False)
            outs = [
                self(images[start : start + batch_size]).cpu()
                for start in range(0, images.shape[0], batch_size)
            ]
        return torch.cat(outs) if outs else torch.zeros(0, self.num_classes)

    def predict(self, images: Tensor, *, batch_size: int = 256) -> Tensor:
        """Predicted class indices ``(B,)`` int64 on the CPU (argmax of :meth:`predict_logits`)."""
        return self.predict_logits(images, batch_size=batch_size).argmax(dim=1)

    def class_names(self, indices: Tensor | list[int]) -> list[str]:
        """Class names for class indices (e.g. from :meth:`predict`)."""
        values = indices.tolist() if torch.is_tensor(indices) else list(indices)
        return [self.spec.classes[int(i)] for i in values]

    def extra_repr(self) -> str:
        return (
            f"arch={self.spec.arch!r}, classes={self.num_classes}, "
            f"input_size={self.spec.input_size}, format={self.source_format!r}"
        )


def _per_channel(values: tuple[float, ...], channels: int) -> Tensor:
    t = torch.tensor(values, dtype=torch.float32)
    if t.numel() == 1:
        t = t.repeat(channels)
    return t.view(1, channels, 1, 1)


def _logits(out: object) -> Tensor:
    """The logits in a network's output: the tensor itself, the first of a tuple or list, the
    ``"logits"`` entry (or only entry) of a dict; ``(B, K, 1, 1)`` is flattened to ``(B, K)``."""
    if isinstance(out, dict):
        tensors = [v for v in out.values() if torch.is_tensor(v)]
        out = out.get("logits", tensors[0] if len(tensors) == 1 else out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out):
        raise TypeError(
            f"the model returned {type(out).__name__}, not a tensor of logits (nor a tuple or "
            "a dict with 'logits')"
        )
    if out.ndim == 4 and out.shape[-2:] == (1, 1):
        out = out.flatten(1)
    return out.float()


__all__ = ["LoadedModel"]
