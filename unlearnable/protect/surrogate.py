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
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoints import UntrustedPickleError, read_state_dict
from ..errors import ModelFileError, UsageError
from ..imageops import resize_center_crop
from ..models import IMAGENET_MEAN, IMAGENET_STD

ProgressCallback = Callable[[int, int | None], None]
"""``progress(done, total)``; ``total`` is ``None`` when it is not known in advance."""

RANDOM_INIT_SEED = 0
"""Seed of the CPU generator used (inside ``fork_rng``) to initialise random surrogates."""

TINY_RANDOM_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 32,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 8,
        "mlp_ratio": 2.0,
    },
}
"""open_clip config of the default ``random`` surrogate: a ViT small enough for CPU tests."""

# A small text tower: open_clip always builds one, we drop it right away.
_TINY_TEXT_CONFIG = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

NETWORK_PROBE_SECONDS = 3.0
"""How long the Hugging Face endpoint is probed before open_clip downloads pretrained weights."""


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


def _refuse_input_size(spec: str, input_size: int | None) -> None:
    if input_size is not None:
        raise SurrogateError(
            f"input_size can only be set for random surrogates; {spec!r} runs at its native size"
        )


def _looks_like_path(text: str) -> bool:
    lowered = text.lower()
    return (
        "/" in text
        or "\\" in text
        or lowered.endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES)
        or os.path.exists(text)
    )


def _missing_tag_message(model_name: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    hint = f" (tags for {model_name}: {', '.join(tags)})" if tags else ""
    return (
        f"surrogate {model_name!r} needs weights: write MODEL:TAG (e.g. 'ViT-B-32:openai'), "
        f"MODEL:/path/to/weights.safetensors, 'tv:resnet50', or 'random' for tests{hint}"
    )


def _check_open_clip_name(model_name: str) -> None:
    import open_clip

    if model_name not in open_clip.list_models():
        raise SurrogateError(
            f"unknown open_clip model {model_name!r}; see open_clip.list_models() "
            "(e.g. ViT-B-32, RN50), or use 'tv:NAME' for torchvision models"
        )


class _DropOpenClipLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's root-logger chatter ("initialized randomly", download errors that we
    re-raise with our own message) for the duration of a model build."""
    root = logging.getLogger()
    log_filter = _DropOpenClipLogs()
    root.addFilter(log_filter)
    try:
        yield
    finally:
        root.removeFilter(log_filter)


@contextmanager
def _seeded_init() -> Iterator[None]:
    """Draw module initialisations from :data:`RANDOM_INIT_SEED`, restoring the global CPU RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(RANDOM_INIT_SEED)
        yield


def _image_size(visual: nn.Module, fallback: int) -> int:
    size = getattr(visual, "image_size", fallback)
    if isinstance(size, (tuple, list)):
        if size[0] != size[-1]:
            raise SurrogateError(f"non-square surrogate input {tuple(size)} is not supported")
        size = size[0]
    return int(size)


def _open_clip_surrogate(model: nn.Module, *, name: str, spec: str, weights_id: str) -> Surrogate:
    import open_clip

    visual = model.visual
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = _image_size(visual, 224)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    with torch.no_grad():
        probe = torch.zeros(1, 3, size, size)
        out = visual.eval()(probe)
        embed_dim = (out[0] if isinstance(out, (tuple, list)) else out).shape[-1]
    return Surrogate(
        visual,
        name=name,
        spec=spec,
        input_size=size,
        embed_dim=embed_dim,
        mean=mean,
        std=std,
        weights_id=weights_id,
    )


def _load_random_open_clip(spec: str, model_name: str, input_size: int | None) -> Surrogate:
    import open_clip

    warnings.warn(
        f"surrogate {spec!r} has random weights: the clusters and perturbations it gives are a "
        "weak protection; use a pretrained surrogate (e.g. 'RN50:openai') for real data",
        WeakSurrogateWarning,
        stacklevel=3,
    )
    kwargs: dict = {}
    if model_name == "tiny":
        base = "RN50"  # any built-in name; its config is replaced by the overrides below
        kwargs.update(TINY_RANDOM_CONFIG)
        kwargs["text_cfg"] = _TINY_TEXT_CONFIG
        if input_size is not None:
            kwargs["vision_cfg"] = {**TINY_RANDOM_CONFIG["vision_cfg"], "image_size": input_size}
    else:
        _check_open_clip_name(model_name)
        base = model_name
        if input_size is not None:
            kwargs["force_image_size"] = input_size
    with _quiet_open_clip(), _seeded_init():
        try:
            model = open_clip.create_model(base, pretrained=None, **kwargs)
        except Exception as exc:  # open_clip raises assorted errors for bad sizes
            raise SurrogateError(f"cannot build random surrogate {spec!r}: {exc}") from exc
    versions = f"random-seed={RANDOM_INIT_SEED}|torch={torch.__version__}|open_clip={open_clip.__version__}"
    return _open_clip_surrogate(
        model, name=f"open_clip {model_name} (random init)", spec=spec, weights_id=versions
    )


def _load_open_clip_pretrained(
    spec: str, model_name: str, tag: str | None, cache_dir: str | None
) -> Surrogate:
    import open_clip

    if tag is not None and not open_clip.is_pretrained_cfg(model_name, tag):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise SurrogateError(
            f"unknown pretrained tag {tag!r} for open_clip model {model_name!r}; "
            f"known tags: {', '.join(tags) or 'none'} (or give a path to a local checkpoint)"
        )
    with _quiet_open_clip(), _seeded_init(), _hub_offline_when_unreachable() as offline:
        try:
            model = open_clip.create_model(
                model_name, pretrained=tag, cache_dir=cache_dir, weights_only=True
            )
        except Exception as exc:
            reason = (
                "no network (the Hugging Face hub cannot be reached, or HF_HUB_OFFLINE is set) "
                "and the weights are not in the local cache"
                if offline
                else str(exc)
            )
            raise SurrogateError(
                f"could not load the pretrained surrogate {spec!r}: {reason}\n"
                "The weights are downloaded on first use, which needs network access. "
                "For offline use: download them once on a connected machine (open_clip caches "
                "them under ~/.cache/huggingface or ~/.cache/clip, or cache_dir), or pass a local "
                "checkpoint as MODEL:/path/to/weights.safetensors. HF_HUB_OFFLINE=1 skips the "
                "network check and uses the local cache only. For tests only, the 'random' "
                "surrogate needs no download (weak protection)."
            ) from exc
    return _open_clip_surrogate(
        model, name=f"open_clip {model_name} ({tag or 'hub'})", spec=spec, weights_id="pretrained"
    )


def _network_reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline_when_unreachable() -> Iterator[bool]:
    """Yield whether the Hugging Face hub is used offline (local cache only) for this block.

    If ``HF_HUB_OFFLINE`` is already set, yields True. Otherwise the hub endpoint is probed
    (:data:`NETWORK_PROBE_SECONDS`); when it is unreachable, ``huggingface_hub``'s offline flag is
    set for the block and restored afterwards, so a cached file loads and a missing one fails at
    once rather than after retries with back-off.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # open_clip then downloads from plain URLs
        yield False
        return
    if constants.HF_HUB_OFFLINE:
        yield True
        return
    if _network_reachable(constants.ENDPOINT, NETWORK_PROBE_SECONDS):
        yield False
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = False


def _load_open_clip_local(spec: str, model_name: str, path: Path, allow_pickle: bool) -> Surrogate:
    import open_clip

    state, digest = _read_state_dict(path, allow_pickle)
    with _quiet_open_clip(), _seeded_init():
        model = open_clip.create_model(model_name, pretrained=None)
    visual_state = _visual_entries(state)
    try:
        model.visual.load_state_dict(visual_state, strict=True)
    except RuntimeError as exc:
        raise SurrogateError(
            f"checkpoint {path} does not fit the open_clip {model_name} visual tower: {exc}"
        ) from exc
    return _open_clip_surrogate(
        model,
        name=f"open_clip {model_name} ({path.name})",
        spec=spec,
        weights_id=f"sha256={digest}",
    )


def _visual_entries(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The visual-tower part of a (whole-CLIP or visual-only) state dict."""
    if any(key.startswith("visual.") for key in state):
        return {
            key[len("visual.") :]: value
            for key, value in state.items()
            if key.startswith("visual.")
        }
    return state


def _read_state_dict(path: Path, allow_pickle: bool) -> tuple[dict[str, Tensor], str]:
    """Read a weights file with :func:`unlearnable.checkpoints.read_state_dict` (safetensors, or
    with ``allow_pickle`` a pickle read by ``torch.load(weights_only=True)``; the format is
    judged by content). Returns the state dict and the file's SHA-256."""
    try:
        weights = read_state_dict(path, trust_pickle=allow_pickle)
    except UntrustedPickleError as exc:
        raise SurrogateError(
            f"refusing to load {path}: it is a pickle-based file and loading one can run "
            "arbitrary code. Convert it to .safetensors, or, if you trust the file, allow it "
            "explicitly (allow_pickle=True / --allow-pickle)."
        ) from exc
    except ModelFileError as exc:
        raise SurrogateError(str(exc)) from exc
    return weights.tensors, weights.sha256


def _replace_last_linear(model: nn.Module) -> int:
    """Replace the last ``nn.Linear`` (the classifier) by ``nn.Identity``; return its in_features."""
    last_name = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name = name
    if last_name is None:
        raise SurrogateError("this torchvision model has no linear classifier to strip")
    parent_name, _, child = last_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    in_features = parent.get_submodule(child).in_features
    setattr(parent, child, nn.Identity())
    return int(in_features)


def _load_torchvision(spec: str, *, allow_pickle: bool, input_size: int | None) -> Surrogate:
    import torchvision

    _, _, rest = spec.partition(":")
    name, _, weights = rest.partition(":")
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise SurrogateError(
            f"unknown torchvision classification model {name!r}; "
            "see torchvision.models.list_models()"
        )
    try:
        default = torchvision.models.get_model_weights(name).DEFAULT
        preset = default.transforms()
        native = int(preset.crop_size[0])
        mean, std = tuple(preset.mean), tuple(preset.std)
    except Exception:  # a model without published weights
        default, native, mean, std = None, 224, IMAGENET_MEAN, IMAGENET_STD
    random_init = weights == "random"
    if input_size is not None and not random_init:
        _refuse_input_size(spec, input_size)
    size = input_size or native
    with _seeded_init():
        if random_init:
            warnings.warn(
                f"surrogate {spec!r} has random weights: a weak protection, for tests only",
                WeakSurrogateWarning,
                stacklevel=3,
            )
            model = torchvision.models.get_model(name, weights=None)
            weights_id = f"random-seed={RANDOM_INIT_SEED}|torch={torch.__version__}|torchvision={torchvision.__version__}"
        elif weights and weights != "default" and not _looks_like_path(weights):
            try:  # a named weights enum entry, e.g. tv:resnet50:IMAGENET1K_V1
                with torchvision_weights_only():
                    model = torchvision.models.get_model(name, weights=weights)
            except Exception as exc:
                raise SurrogateError(
                    f"could not load torchvision weights {weights!r} for {name}: {exc} "
                    "(unknown name, or no network to download them; see the offline hints for "
                    f"'tv:{name}')"
                ) from exc
            weights_id = f"weights={weights}"
        elif weights and weights != "default":
            path = Path(weights)
            state, digest = _read_state_dict(path, allow_pickle)
            model = torchvision.models.get_model(name, weights=None)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise SurrogateError(
                    f"checkpoint {path} does not fit torchvision {name}: {exc}"
                ) from exc
            weights_id = f"sha256={digest}"
        else:
            if default is None:
                raise SurrogateError(
                    f"torchvision {name} has no pretrained weights; use {spec}:random"
                )
            try:
                with torchvision_weights_only():
                    model = torchvision.models.get_model(name, weights="DEFAULT")
            except Exception as exc:
                raise SurrogateError(
                    f"could not load the pretrained surrogate {spec!r}: {exc}\n"
                    "torchvision downloads the weights on first use, which needs network access. "
                    "For offline use: download them once on a connected machine (cached under "
                    "~/.cache/torch/hub/checkpoints), or pass local weights as "
                    f"'tv:{name}:/path/to/weights.safetensors'. For tests only, "
                    f"'tv:{name}:random' or 'random' need no download (weak protection)."
                ) from exc
            weights_id = f"weights={default}"
    embed_dim = _replace_last_linear(model)
    return Surrogate(
        model,
        name=f"torchvision {name} ({weights or 'DEFAULT'})",
        spec=spec,
        input_size=size,
        embed_dim=embed_dim,
        mean=mean,
        std=std,
        weights_id=weights_id,
    )


@contextmanager
def torchvision_weights_only() -> Iterator[None]:
    """Make torchvision's pretrained-weights loader unpickle with ``weights_only=True``.

    ``get_model(name, weights=...)`` reads the downloaded (or cached, under
    ``~/.cache/torch/hub/checkpoints``) file with ``torch.hub.load_state_dict_from_url``, whose
    default is ``weights_only=False``: a file planted in the cache would run code. Every
    torchvision builder loads through ``WeightsEnum.get_state_dict``, so in this block that
    method passes ``weights_only=True`` (a planted pickle fails with an error instead).
    """
    from torchvision.models._api import WeightsEnum

    original = WeightsEnum.__dict__["get_state_dict"]

    def get_state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        kwargs["weights_only"] = True
        return original(self, *args, **kwargs)

    WeightsEnum.get_state_dict = get_state_dict
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = original


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
