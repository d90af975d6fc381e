"""Frozen surrogate feature extractors for Unlearnable Clusters (UC).

A :class:`Surrogate` maps images ``(B, C, H, W)`` float in [0, 1] to embeddings ``(B, D)``. It
crops and resizes the images to its own input size and applies its own mean/std normalisation,
so callers always hand in plain [0, 1] pixels. It is differentiable with respect to the images
(UC optimises perturbations through it) and frozen: eval mode, no parameter gradients.

Surrogate specs (``load_surrogate``)
------------------------------------
``MODEL:TAG``
    An open_clip model with pretrained weights, e.g. ``ViT-B-32:openai`` or ``RN50:openai``
    (UC-CLIP in the paper used the OpenAI CLIP RN50 visual tower). The weights are downloaded by
    open_clip on first use and cached (``~/.cache/huggingface`` or ``~/.cache/clip``).
``MODEL:/path/to/checkpoint``
    An open_clip architecture with local weights, read by
    :func:`unlearnable.checkpoints.read_state_dict` (the format is judged by content): a
    safetensors file is loaded directly; a pickle-based file (``.pt``, ``.pth``, ``.bin``,
    ``.ckpt``) needs ``allow_pickle=True`` and is then read with
    ``torch.load(weights_only=True)``. The file may hold a whole CLIP model (only the
    ``visual.*`` entries are used) or the visual tower alone.
``hf-hub:ORG/REPO``
    An open_clip model from the Hugging Face hub (downloaded by open_clip).
``tv:NAME`` / ``tv:NAME:random`` / ``tv:NAME:/path``
    A torchvision classifier (ImageNet ``weights="DEFAULT"``, random init, or local weights);
    the features are the input of its last ``nn.Linear`` (the penultimate layer, 2048-d for
    ``tv:resnet50``, the paper's "UC" surrogate).
``random`` / ``random:MODEL``
    A randomly initialised open_clip visual tower, for tests and offline trials only (the
    protection is weak; a :class:`WeakSurrogateWarning` says so). ``random`` is a tiny ViT
    (:data:`TINY_RANDOM_CONFIG`: 32 px input, patch 8, width 64, 2 layers, 64-d output) that runs
    fast on a CPU; ``random:RN50`` etc. build the named open_clip architecture. Random weights are
    drawn under ``torch.random.fork_rng`` from the fixed seed :data:`RANDOM_INIT_SEED` (0), so two
    loads give identical surrogates (for a given torch/open_clip version) and the caller's global
    RNG is left untouched.

Your own feature extractor (no spec): :func:`surrogate_from_module` wraps any ``nn.Module`` that
maps ``[0, 1]`` images to logits or features (e.g. a small CNN trained on other images), dropping
its last ``nn.Linear`` by default; its ``cache_id`` hashes the weights.

Offline use: before open_clip downloads pretrained weights, the Hugging Face endpoint is probed
for :data:`NETWORK_PROBE_SECONDS`. When it cannot be reached, the hub's offline mode is switched on
for that load only, so weights already in the local cache load at once and missing ones fail at
once with a :class:`SurrogateError` (instead of about a minute of retries).

Embeddings are the raw (not L2-normalised) outputs: ``encode_image(normalize=False)`` for
open_clip, the penultimate activations for torchvision. UC clusters and anchors live in this
space (see :mod:`unlearnable.protect.clusters`).

Layout: :class:`Surrogate` and the errors live in :mod:`.surrogate_model`, the loaders in
:mod:`.surrogate_loaders`; this module dispatches specs to them, wraps your own modules and
extracts features (the public names are all importable from here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..imageops import resize_center_crop
from .surrogate_loaders import (
    NETWORK_PROBE_SECONDS,
    PICKLE_SUFFIXES,
    RANDOM_INIT_SEED,
    SAFE_SUFFIXES,
    TINY_RANDOM_CONFIG,
    _check_open_clip_name,
    _load_open_clip_local,
    _load_open_clip_pretrained,
    _load_random_open_clip,
    _load_torchvision,
    _looks_like_path,
    _missing_tag_message,
    _refuse_input_size,
    _replace_last_linear,
    torchvision_weights_only,
)
from .surrogate_model import Surrogate, SurrogateError, WeakSurrogateWarning, _check_float_images

__all__ = [
    "NETWORK_PROBE_SECONDS",
    "PICKLE_SUFFIXES",
    "RANDOM_INIT_SEED",
    "SAFE_SUFFIXES",
    "TINY_RANDOM_CONFIG",
    "ProgressCallback",
    "Surrogate",
    "SurrogateError",
    "WeakSurrogateWarning",
    "extract_features",
    "load_surrogate",
    "resize_center_crop",
    "surrogate_from_module",
    "torchvision_weights_only",
]

ProgressCallback = Callable[[int, int | None], None]
"""``progress(done, total)``; ``total`` is ``None`` when it is not known in advance."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_surrogate(
    spec: str,
    device: str | torch.device = "cpu",
    *,
    allow_pickle: bool = False,
    input_size: int | None = None,
    cache_dir: str | None = None,
) -> Surrogate:
    """Build the surrogate named by ``spec`` (see the module docstring), frozen, on ``device``.

    ``input_size`` overrides the input resolution of *random* surrogates only (pretrained ones run
    at the size they were trained at). ``allow_pickle`` permits pickle-based local checkpoints.
    ``cache_dir`` is handed to open_clip's downloader. Raises :class:`SurrogateError` with an
    actionable message (offline use, unknown names, unsafe files).
    """
    spec = spec.strip()
    if not spec:
        raise SurrogateError(
            "empty surrogate spec; e.g. 'ViT-B-32:openai', 'tv:resnet50' or 'random'"
        )
    if input_size is not None and input_size < 8:
        raise SurrogateError(f"input_size must be >= 8, got {input_size}")
    if spec == "random" or spec.startswith("random:"):
        model_name = spec.partition(":")[2] or "tiny"
        surrogate = _load_random_open_clip(spec, model_name, input_size)
    elif spec.startswith("tv:"):
        surrogate = _load_torchvision(spec, allow_pickle=allow_pickle, input_size=input_size)
    elif spec.startswith("hf-hub:"):
        _refuse_input_size(spec, input_size)
        surrogate = _load_open_clip_pretrained(spec, spec, None, cache_dir)
    else:
        model_name, sep, rest = spec.partition(":")
        if not sep or not rest:
            raise SurrogateError(_missing_tag_message(model_name))
        _check_open_clip_name(model_name)
        _refuse_input_size(spec, input_size)
        if _looks_like_path(rest):
            surrogate = _load_open_clip_local(spec, model_name, Path(rest), allow_pickle)
        else:
            surrogate = _load_open_clip_pretrained(spec, model_name, rest, cache_dir)
    return surrogate.to(device)


def _weights_digest(module: nn.Module) -> str:
    """SHA-256 over the module's state dict (names, dtypes, shapes and bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def surrogate_from_module(
    module: nn.Module,
    *,
    name: str,
    input_size: int,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    strip_classifier: bool = True,
) -> Surrogate:
    """Wrap your own feature extractor as a frozen :class:`Surrogate`.

    ``module`` maps ``(B, 3, input_size, input_size)`` float images to ``(B, D)`` (after the
    ``(x - mean) / std`` normalisation given here; the defaults pass ``[0, 1]`` pixels through,
    for models that normalise inside, like :mod:`unlearnable.models`). With ``strip_classifier``
    (default) a copy of the module has its last ``nn.Linear`` replaced by ``nn.Identity`` so the
    features are the penultimate activations; the caller's module is never changed. ``spec`` is
    ``module:NAME`` and ``cache_id`` includes the SHA-256 of the weights, so a retrained module
    does not reuse cached features.
    """
    import copy

    if input_size < 8:
        raise SurrogateError(f"input_size must be >= 8, got {input_size}")
    backbone = copy.deepcopy(module).to("cpu")
    if strip_classifier:
        _replace_last_linear(backbone)
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, input_size, input_size))
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim != 2:
        raise SurrogateError(
            f"module {name!r} gives outputs of shape {tuple(out.shape)}; a surrogate needs (B, D)"
        )
    return Surrogate(
        backbone,
        name=name,
        spec=f"module:{name}",
        input_size=input_size,
        embed_dim=int(out.shape[-1]),
        mean=mean,
        std=std,
        weights_id=f"sha256={_weights_digest(backbone)}",
    )


# --------------------------------------------------------------------------------------------
# Batched feature extraction
# --------------------------------------------------------------------------------------------


def _batches(
    surrogate: Surrogate, images: Tensor | Iterable[Tensor], batch_size: int
) -> Iterator[Tensor]:
    """Yield prepared batches ``(b, 3, S, S)`` on the surrogate's device, in input order."""
    if torch.is_tensor(images):
        _check_float_images(images)
        for start in range(0, images.shape[0], batch_size):
            yield surrogate.prepare(images[start : start + batch_size])
        return
    pending: list[Tensor] = []
    for item in images:
        if not torch.is_tensor(item):
            raise TypeError(f"expected tensors from the image iterable, got {type(item).__name__}")
        if item.ndim == 3:
            pending.append(surrogate.prepare(item.unsqueeze(0)))
            if len(pending) == batch_size:
                yield torch.cat(pending)
                pending = []
        else:
            if pending:
                yield torch.cat(pending)
                pending = []
            for start in range(0, item.shape[0], batch_size):
                yield surrogate.prepare(item[start : start + batch_size])
    if pending:
        yield torch.cat(pending)


def extract_features(
    surrogate: Surrogate,
    images: Tensor | Iterable[Tensor],
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
    *,
    total: int | None = None,
) -> np.ndarray:
    """Embed images without gradients: returns ``(N, D)`` float32 numpy, in input order.

    ``images`` is a tensor ``(N, C, H, W)`` float in [0, 1] or an iterable of tensors, each one
    image ``(C, H, W)`` (sizes may differ: each is centre-cropped and resized on its own) or a
    batch ``(B, C, H, W)``; ``C`` is 1 or 3. ``progress(done, total)`` is called after every
    batch with the number of images embedded so far; ``total`` defaults to ``len(images)`` when
    the input has a length.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if total is None and hasattr(images, "__len__"):
        total = len(images)  # type: ignore[arg-type]
    chunks: list[np.ndarray] = []
    done = 0
    with torch.no_grad():
        for batch in _batches(surrogate, images, batch_size):
            chunks.append(surrogate.embed(batch).cpu().numpy().astype(np.float32, copy=False))
            done += batch.shape[0]
            if progress is not None:
                progress(done, total)
    if not chunks:
        return np.zeros((0, surrogate.embed_dim), dtype=np.float32)
    return np.concatenate(chunks, axis=0)
