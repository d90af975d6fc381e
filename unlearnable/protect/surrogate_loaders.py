"""Surrogate loaders behind :func:`unlearnable.protect.surrogate.load_surrogate`.

open_clip models (pretrained tags and the Hugging Face hub, local checkpoints, random init),
torchvision classifiers (``tv:`` specs), spec parsing helpers, the offline hub probe and the safe
weights readers. Every loader returns a frozen :class:`~.surrogate_model.Surrogate` on the CPU and
raises :class:`~.surrogate_model.SurrogateError` with an actionable message.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..checkpoints import UntrustedPickleError, read_state_dict
from ..errors import ModelFileError
from ..models import IMAGENET_MEAN, IMAGENET_STD
from .surrogate_model import Surrogate, SurrogateError, WeakSurrogateWarning

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
