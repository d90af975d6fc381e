"""``audit_model``: was this model trained on images protected with my key? A p-value.

The test, for a suspect model, the owner's key, the protection's manifest and clean probe
images (see :mod:`unlearnable.audit.stats` for the statistics):

1. For the owner's key and for ``J`` null keys (:mod:`unlearnable.audit.null_keys`, derived
   from the public ``seed``), mark every probe with every class's transform of that key (the
   manifest method's :class:`~unlearnable.audit.methods.AuditPlan`: for CUDA, the class's blur
   filter at the probe size) and record the model's top-1 class.
2. Labelled statistic: how often a class's mark moves probes the model does not already put in
   that class into it, averaged over classes. Label-free statistic: the same move rate over
   the best one-to-one pairing of marks with model classes (no class names needed).
3. p-value: the owner key's rank among all ``J + 1`` keys. A model trained on images protected
   with the key learned "this mark means this class" and ranks the owner's key first; for any
   other model the owner's key is one random key among ``J + 1`` and the p-value is uniform.

Only top-1 predictions are used, so any ``predict(images) -> labels`` callable works (a model
behind an API). The cost is ``(J + 1) * classes * probes`` predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..io.manifest import Manifest, read_manifest
from ..keys import SecretKey
from ..training.modes import kept_modes
from .classes import ClassMatch, match_classes, probe_targets, read_class_map
from .methods import AuditPlan, audit_plan
from .null_keys import null_keys
from .result import AuditResult, build_result, statistic_values, stop_index
from .stats import eligible_counts, move_rates

STATISTICS = ("auto", "labelled", "label-free")
"""``auto``: labelled when every manifest class has a model class, label-free when none has."""

Predictor = Callable[[Tensor], Tensor]
"""``images (B, C, H, W) float [0, 1] -> (B,)`` int class indices (or ``(B, K)`` scores)."""

# Probes are marked in units of about this many marked images (one convolution each, fewer and
# larger operations for small probe sets), capped at this many float values (memory).
_WORK_UNIT = 4096
_MAX_CHUNK_VALUES = 1 << 25


@dataclass(frozen=True)
class AuditConfig:
    """How the audit runs.

    ``null_keys``: how many other keys sample the null distribution (the smallest p-value is
    ``1 / (null_keys + 1)``, so it must be at most ``alpha``). ``seed``: public seed of the null
    keys and of the probe subsample. ``alpha``: significance level of the verdict.
    ``statistic``: ``auto``, ``labelled`` or ``label-free`` (see :data:`STATISTICS`).
    ``max_probes``: use a seeded random subset of at most this many probes. ``batch_size``:
    images per ``predict`` call. ``allow_other_key``: test with a key whose fingerprint differs
    from the manifest's (otherwise refused). ``device``: where probes are marked.
    ``early_stop``: stop sampling null keys once the verdict can no longer be "evidence" (more
    than ``alpha * (null_keys + 1) - 1`` null keys reached the owner's value; the p-value is then
    the sequential ``h / l`` of Besag and Clifford, 1991). Same verdict, far fewer predictions
    for models that show no evidence (useful for models behind a paid API).
    """

    null_keys: int = 100
    seed: int = 0
    alpha: float = 0.01
    statistic: str = "auto"
    max_probes: int | None = None
    batch_size: int = 256
    allow_other_key: bool = False
    device: str = "cpu"
    early_stop: bool = False

    def __post_init__(self) -> None:
        if self.null_keys < 1:
            raise UsageError(f"null_keys must be >= 1, got {self.null_keys}")
        if not 0 < self.alpha < 1:
            raise UsageError(f"alpha must be in (0, 1), got {self.alpha}")
        if 1 / (self.null_keys + 1) > self.alpha:
            need = math.ceil(1 / self.alpha) - 1
            raise UsageError(
                f"with {self.null_keys} null keys the smallest possible p-value is "
                f"1/{self.null_keys + 1} = {1 / (self.null_keys + 1):.4f} > alpha {self.alpha}: "
                f"use at least {need} null keys"
            )
        if self.statistic not in STATISTICS:
            raise UsageError(
                f"statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}"
            )
        if self.max_probes is not None and self.max_probes < 1:
            raise UsageError(f"max_probes must be >= 1, got {self.max_probes}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")


def as_predictor(model: Any) -> Predictor:
    """A ``predict(images) -> labels`` callable for a :class:`~unlearnable.LoadedModel`
    (its ``predict``), a plain ``nn.Module`` (eval mode, argmax of its output), or a callable
    (used as it is)."""
    if isinstance(model, nn.Module) and not hasattr(model, "predict"):
        module = model

        @torch.no_grad()
        def predict(images: Tensor) -> Tensor:
            from ..checkpoints.loaded import _logits

            param = next((p for p in module.parameters() if p.is_floating_point()), None)
            if param is not None:  # the module's own device and precision (float64, say)
                images = images.to(device=param.device, dtype=param.dtype)
            with kept_modes(module):
                module.eval()
                return _logits(module(images)).argmax(dim=1)

        return predict
    if hasattr(model, "predict") and callable(model.predict):
        return model.predict
    if callable(model):
        return model
    raise UsageError(f"cannot get predictions from a {type(model).__name__}")


def _labels_of(output: Any, count: int) -> np.ndarray:
    values = torch.as_tensor(output)
    if values.ndim == 2:
        values = values.argmax(dim=1)
    if values.shape != (count,):
        raise UsageError(
            f"predict must return {count} class indices, got shape {tuple(values.shape)}"
        )
    return values.detach().cpu().numpy().astype(np.int64)


def select_probes(count: int, max_probes: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``min(count, max_probes)`` probes."""
    if max_probes is None or max_probes >= count:
        return np.arange(count)
    rng = np.random.default_rng([seed, 0x9B0BE])
    return np.sort(rng.choice(count, size=max_probes, replace=False))


def audit_model(
    model: Any,
    key: SecretKey,
    manifest: Manifest | str | Path,
    probes: Tensor,
    *,
    model_classes: Sequence[str] | None = None,
    probe_labels: Sequence[str | None] | None = None,
    class_map: Mapping[str, str] | str | Path | None = None,
    config: AuditConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """Test whether ``model`` was trained on images protected with ``key`` (see the module
    docstring).

    ``model``: a :class:`~unlearnable.LoadedModel`, an ``nn.Module`` or a ``predict(images) ->
    labels`` callable. ``manifest``: the protection's :class:`~unlearnable.io.manifest.Manifest`
    (or its path, or the protected folder). ``probes``: clean images ``(N, C, H, W)``, uint8 or
    float in [0, 1], at the size the model takes (they are marked at that size).
    ``model_classes``: the model's class names in output order (default: ``model.spec.classes``
    when present). ``probe_labels``: optional true class name per probe (owner or model names).
    ``class_map``: owner class -> model class (a mapping or a CSV path), when names differ.
    ``progress(done, total)`` counts keys. Raises ``UsageError`` subclasses for a method the
    audit does not support, classes that cannot be matched, or a key that did not make the
    manifest (unless ``config.allow_other_key``).
    """
    config = config or AuditConfig()
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(Path(manifest))
    if probes.ndim != 4 or probes.shape[0] < 1:
        raise UsageError(f"probes must be (N, C, H, W) with N >= 1, got {tuple(probes.shape)}")
    notes: list[str] = []
    if key.fingerprint != manifest.key_fingerprint:
        message = (
            f"the key's fingerprint {key.fingerprint} differs from the manifest's "
            f"{manifest.key_fingerprint}: this key did not make this protection"
        )
        if not config.allow_other_key:
            raise UsageError(message + " (allow_other_key / --allow-other-key tests it anyway)")
        notes.append(message + "; tested anyway as asked")

    size = int(min(probes.shape[-2:]))
    plan = audit_plan(manifest, size)
    if model_classes is None:
        spec = getattr(model, "spec", None)
        model_classes = getattr(spec, "classes", None)
    if isinstance(class_map, (str, Path)):
        class_map = read_class_map(class_map)
    match = match_classes(plan.classes, model_classes, class_map)
    statistic = _choose_statistic(config.statistic, match, notes)

    chosen = select_probes(probes.shape[0], config.max_probes, config.seed)
    images = probes[torch.from_numpy(chosen)]
    images = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    images = images.to(config.device)
    predict = as_predictor(model)
    labels = np.full(len(chosen), -1, dtype=np.int64)
    if probe_labels is not None:
        if len(probe_labels) != probes.shape[0]:
            raise UsageError(
                f"got {len(probe_labels)} probe labels for {probes.shape[0]} probe images"
            )
        labels = probe_targets([probe_labels[i] for i in chosen], match)

    clean = _predict_all(predict, images, config.batch_size)
    if model_classes is not None and clean.size and int(clean.max()) >= len(model_classes):
        raise UsageError(
            f"the model predicts class index {int(clean.max())}, but {len(model_classes)} model "
            "class names were given: name every output of the model, in order"
        )
    keys = [key, *null_keys(config.seed, config.null_keys, exclude=key)]
    group = _keys_per_group(len(plan.classes), images)
    parts: list[np.ndarray] = []
    stopped = False
    for first in range(0, len(keys), group):
        some = keys[first : first + group]
        parts.append(_marked_predictions(predict, plan, some, images, config.batch_size))
        if progress is not None:
            progress(first + len(some), len(keys))
        if config.early_stop and first + len(some) < len(keys):
            preds = np.concatenate(parts)
            rates, eligible, _ = _rates(preds, clean, labels, model_classes)
            values = statistic_values(rates, match, eligible)[statistic]
            seen = stop_index(values, config.alpha, config.null_keys)
            if seen is not None:
                parts, stopped = [preds[: 1 + seen]], True
                break
    rates, eligible, num_classes = _rates(np.concatenate(parts), clean, labels, model_classes)
    return build_result(
        config,
        plan,
        key.fingerprint,
        manifest.key_fingerprint,
        match,
        statistic,
        rates,
        eligible,
        probes={
            "count": int(len(chosen)),
            "available": int(probes.shape[0]),
            "size": size,
            "labelled": int((labels >= 0).sum()),
            "clean_accuracy": (
                float((clean[labels >= 0] == labels[labels >= 0]).mean())
                if (labels >= 0).any()
                else None
            ),
            "clean_prediction_histogram": np.bincount(clean, minlength=num_classes).tolist(),
        },
        notes=notes,
        model_classes=model_classes,
        stopped_early=stopped,
    )


def _rates(
    preds: np.ndarray, clean: np.ndarray, labels: np.ndarray, model_classes: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(rates, eligible counts, number of model classes)`` of the predictions so far."""
    top = max(int(clean.max()), int(preds.max())) + 1
    num_classes = max(len(model_classes), top) if model_classes is not None else top
    return (
        move_rates(preds, clean, labels, num_classes),
        eligible_counts(clean, labels, num_classes),
        num_classes,
    )


def _choose_statistic(requested: str, match: ClassMatch, notes: list[str]) -> str:
    from .classes import AuditClassError

    if requested == "label-free":
        return "label-free"
    if match.complete:
        return "labelled"
    if requested == "auto" and match.how == "none":
        notes.append(
            "no manifest class is a class of the model (the scraper used other labels, or the "
            "model has no class names): the verdict uses the label-free statistic"
        )
        return "label-free"
    missing = ", ".join(match.missing[:8])
    raise AuditClassError(
        f"manifest class(es) without a class in the model: {missing}. Map them with a class map "
        "CSV (owner_class,model_class rows; --class-map) or use the label-free statistic "
        "(--statistic label-free)"
    )


def _predict_all(predict: Predictor, images: Tensor, batch_size: int) -> np.ndarray:
    parts = [
        _labels_of(
            predict(images[start : start + batch_size]), min(batch_size, len(images) - start)
        )
        for start in range(0, images.shape[0], batch_size)
    ]
    return np.concatenate(parts)


def _keys_per_group(classes: int, images: Tensor) -> int:
    """Keys marked together (one convolution): about :data:`_WORK_UNIT` marked images, within
    the memory cap; at least 1."""
    n = images.shape[0]
    values = classes * images[0].numel() * n  # float values of all probes marked with one key
    return max(1, min(_WORK_UNIT // (classes * n), _MAX_CHUNK_VALUES // max(1, values)))


def _marked_predictions(
    predict: Predictor,
    plan: AuditPlan,
    keys: Sequence[SecretKey],
    images: Tensor,
    batch_size: int,
) -> np.ndarray:
    """``(G, C, N)``: the model's class for every probe marked with each of ``keys``' class
    marks; probes are marked in chunks within the memory cap, ``predict`` gets ``batch_size``
    images at a time."""
    classes, n = len(plan.classes), images.shape[0]
    values = len(keys) * classes * images[0].numel()  # float values of one probe's marks
    chunk = max(1, min(n, max(1, _WORK_UNIT // (len(keys) * classes)), _MAX_CHUNK_VALUES // values))
    transform = plan.transforms(keys)
    out = np.empty((len(keys), classes, n), dtype=np.int64)
    for start in range(0, n, chunk):
        batch = images[start : start + chunk]
        marked = transform(batch)  # (G * C, b, ...)
        flat = marked.reshape(marked.shape[0] * batch.shape[0], *batch.shape[1:])
        labels = _predict_all(predict, flat, batch_size)
        out[:, :, start : start + batch.shape[0]] = labels.reshape(len(keys), classes, -1)
    return out


__all__ = [
    "STATISTICS",
    "AuditConfig",
    "AuditResult",
    "Predictor",
    "as_predictor",
    "audit_model",
    "select_probes",
]
