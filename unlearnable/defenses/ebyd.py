"""Expose Before You Defend (EBYD, Li et al., arXiv 2410.19427) as two library calls.

* :func:`scan_model`: expose a copy of the model with clean unlearning (:mod:`.exposure`), or
  several copies independently on ``exposures`` disjoint parts of the defense set, then read
  where the exposed models send held-out clean images, less where the original model sends
  featureless images (a natural sink is not a backdoor): target label and backdoored / clean
  verdict (:mod:`.detection`, which says how the defaults were calibrated).
* :func:`purify_model`: expose, learn batch-norm masks on the exposed model, prune the lowest
  channels of the **original** model with a threshold chosen from clean accuracy only
  (:mod:`.removal`, RNP), then recover a trigger toward the detected target and unlearn it
  (:mod:`.trigger_unlearn`); report clean accuracy before/after on held-out clean images and,
  for a known trigger, the attack success rate.

The clean data is split once (seeded, class-balanced): ``defense_images`` (default 500, the
EBYD/RNP budget) drive unlearning, masks and the pruning choice; the rest is held out for the
histogram and the reported accuracies. :mod:`.ebyd_report` writes the run folders.

Example::

    from unlearnable.defenses.ebyd import scan_model, purify_model
    result = scan_model("suspect-model/", "clean-images/")
    print(result.detection.verdict, result.target_name)
    purified = purify_model("suspect-model/", "clean-images/")
    save_purified(purified, "purified-model/")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..training.classification import to_float_images
from ..training.modes import kept_modes
from .detection import (
    Detection,
    DetectionConfig,
    detect_exposures,
    featureless_prior,
    read_out,
)
from .ebyd_data import CleanSet, load_clean_folder, split_defense, split_parts
from .exposure import ExposureConfig, ExposureResult, clone_model, expose, stop_threshold

REPORT_VERSION = 2

#: ``progress(stage, epoch, epochs, row)``: stage ``"expose"``, ``"masks"`` or ``"unlearn"``.
StageProgress = Callable[[str, int, int, dict[str, Any]], None]


@dataclass(frozen=True)
class ScanConfig:
    """``exposure`` and ``detection`` settings, the defense-set size, the split seed and the
    number of independent ``exposures`` (each on its own disjoint, class-balanced part of the
    defense set, with exposure seed ``exposure.seed + j``; 1 = a single exposure on all of
    it)."""

    exposure: ExposureConfig = field(default_factory=ExposureConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    defense_images: int = 500
    seed: int = 0
    exposures: int = 1

    def __post_init__(self) -> None:
        if self.defense_images < 2:
            raise UsageError(f"defense_images must be >= 2, got {self.defense_images}")
        if not 1 <= self.exposures <= self.defense_images // 2:
            raise UsageError(f"exposures must be in [1, defense_images / 2], got {self.exposures}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "exposure": self.exposure.to_dict(),
            "detection": self.detection.to_dict(),
            "defense_images": self.defense_images,
            "seed": self.seed,
            "exposures": self.exposures,
        }


@dataclass
class Subject:
    """The model under test, its class names and the clean data split."""

    model: nn.Module
    classes: tuple[str, ...]
    defense: CleanSet
    holdout: CleanSet
    source: str | None


def _model_and_data(
    model: Any,
    clean: Any,
    defense_images: int,
    seed: int,
    device: str | None,
    load_progress: Callable[[int, int], None] | None,
) -> Subject:
    from ..checkpoints import LoadedModel, load_model

    source = None
    if isinstance(model, (str, Path)):
        source = str(model)
        model = load_model(model, device=device or "cpu")
    elif not isinstance(model, nn.Module):
        raise UsageError(f"model must be a path or an nn.Module, not {type(model).__name__}")
    else:
        model = _working_model(model, device)
    if isinstance(clean, (str, Path)):
        if not isinstance(model, LoadedModel):
            raise UsageError("give the clean data as a CleanSet for a model without a spec")
        clean = load_clean_folder(clean, model.spec.classes, model.spec.input_size, load_progress)
    if not isinstance(clean, CleanSet):
        raise UsageError("clean data must be a folder or a CleanSet")
    if isinstance(model, LoadedModel):
        if tuple(model.spec.classes) != tuple(clean.classes):
            raise UsageError(
                "the CleanSet's classes are not the model's classes (by name, in output order)"
            )
        source = source or str(model.source)
    _check_outputs(model, clean)
    defense_idx, holdout_idx = split_defense(clean.labels, defense_images, seed)
    return Subject(
        model, tuple(clean.classes), clean.subset(defense_idx), clean.subset(holdout_idx), source
    )


def _working_model(model: nn.Module, device: str | None) -> nn.Module:
    """``model`` itself, or a copy on ``device`` when it is elsewhere, in float32 when it is in
    another precision (a float64 ``nn.Module``, say): the caller's model is never moved or
    converted. A LoadedModel keeps its precision (it feeds its network in it)."""
    from ..checkpoints import LoadedModel

    params = [p for p in model.parameters() if p.is_floating_point()]
    here = params[0].device if params else torch.device("cpu")
    moved = device is not None and torch.device(device) != here
    convert = not isinstance(model, LoadedModel) and any(p.dtype != torch.float32 for p in params)
    if not moved and not convert:
        return model
    copy = clone_model(model).to(device=device or here)
    return copy.to(dtype=torch.float32) if convert else copy


@torch.no_grad()
def _check_outputs(model: nn.Module, clean: CleanSet) -> None:
    """``UsageError`` unless ``model`` gives ``(B, len(clean.classes))`` logits on the clean
    images (one eval-mode forward on a single image; the model's mode is restored)."""
    if len(clean) == 0:
        raise UsageError("the clean data holds no images")
    with kept_modes(model):
        model.train(False)
        try:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            out = model(to_float_images(clean.images[:1]).to(device))
        except Exception as exc:
            raise UsageError(
                f"the model fails on a clean image of shape {tuple(clean.images[:1].shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[1] != len(clean.classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UsageError(
            f"class count does not match: the clean data has {len(clean.classes)} classes, "
            f"but the model gives outputs of shape {shape}"
        )


def _stage(progress: StageProgress | None, stage: str):
    if progress is None:
        return None
    return lambda epoch, epochs, row: progress(stage, epoch, epochs, row)


def _observed(subject: Subject) -> CleanSet:
    """The clean images accuracies and histograms are read on: held out, else the defense set."""
    return subject.holdout if len(subject.holdout) else subject.defense


def _prior(subject: Subject, detection: DetectionConfig) -> tuple[float, ...] | None:
    """The original model's featureless prior on the observed images, when ``detection`` uses
    one (:func:`~.detection.featureless_prior`)."""
    if not detection.prior:
        return None
    return featureless_prior(subject.model, _observed(subject).images, len(subject.classes))


@dataclass
class ScanResult:
    """What :func:`scan_model` found: the :class:`Detection`, the exposure runs (one per
    disjoint part of the defense set) and the facts of the data. ``to_report()`` is the
    ``report.json`` body."""

    detection: Detection
    exposures: list[ExposureResult]
    classes: tuple[str, ...]
    defense_size: int
    holdout_size: int
    config: ScanConfig
    source: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exposure(self) -> ExposureResult:
        """The first exposure run."""
        return self.exposures[0]

    @property
    def flagged(self) -> bool:
        return self.detection.flagged

    @property
    def target_name(self) -> str | None:
        t = self.detection.target
        return None if t is None else self.classes[t]

    def _exposure_summary(self, index: int, run: ExposureResult) -> dict[str, Any]:
        first, final = run.rows[0], run.final
        readout, epoch = read_out(run.rows, self.config.detection)
        top = max(range(len(readout)), key=lambda k: readout[k])
        return {
            "index": index + 1,
            "method": run.config.method,
            "seed": run.config.seed,
            "epochs": run.epochs,
            "stopped_early": run.stopped_early,
            "stop_reason": run.stop_reason,
            "clean_acc_before": first["clean_acc"],
            "clean_acc_after": final["clean_acc"],
            "holdout_acc_before": first["holdout_acc"],
            "holdout_acc_after": final["holdout_acc"],
            "readout_epoch": epoch,
            "readout_histogram": list(readout),
            "top_class": top,
            "top_share": readout[top],
        }

    def to_report(self) -> dict[str, Any]:
        summaries = [self._exposure_summary(i, r) for i, r in enumerate(self.exposures)]
        return {
            "model": self.source,
            "verdict": self.detection.verdict,
            "flagged": self.flagged,
            "target": self.detection.target,
            "target_name": self.target_name,
            "score": self.detection.score,
            "score_name": self.detection.score_name,
            "threshold": self.detection.threshold,
            "detection": self.detection.to_dict(),
            "classes": list(self.classes),
            "data": {"defense_images": self.defense_size, "holdout_images": self.holdout_size},
            "exposure": summaries[0],
            "exposures": summaries,
            "epochs": [
                {"exposure": i + 1, **row}
                for i, run in enumerate(self.exposures)
                for row in run.rows
            ],
            "notes": list(self.notes),
        }


def _exposure_notes(result: ExposureResult, detection: Detection | None = None) -> list[str]:
    """What a report should say about an exposure run; the model-at-chance line is left out
    when ``detection`` is already inconclusive for that reason (its verdict says it)."""
    notes = []
    threshold = result.stop_threshold
    if threshold is not None and not result.stopped_early:
        notes.append(
            f"defense-set accuracy never fell to {threshold:.3g} within {result.config.max_epochs} "
            f"epochs (last: {result.final['clean_acc']:.3f}); raise the learning rate or the "
            "epochs, the verdict reads an incompletely exposed model"
        )
    at_chance = result.rows[0]["clean_acc"] <= (threshold or 0)
    if at_chance and not (detection is not None and detection.inconclusive):
        notes.append(
            "the model's clean accuracy on the defense set is already at or below the stop "
            "threshold before exposure: check the class names and the data"
        )
    return notes


def _unless_at_chance(
    detection: Detection, runs: list[ExposureResult], subject: Subject
) -> Detection:
    """``detection``, or an unflagged ``"inconclusive"`` one when the original model classifies
    the defense images no better than the exposure's stop level (that of a model predicting
    one class for everything, see :func:`~.exposure.stop_threshold`) before any exposure: its
    collapse then says nothing about a backdoor (class names in another order, other data, an
    untrained model)."""
    auto = dataclasses.replace(runs[0].config, early_stop=True, stop_accuracy=None)
    level = stop_threshold(auto, subject.defense.labels) or 0.0
    before = max(run.rows[0]["clean_acc"] for run in runs)
    if before > level:
        return detection
    return dataclasses.replace(
        detection,
        flagged=False,
        target=None,
        inconclusive=(
            f"the model classifies the clean defense images at {before:.3f} before any "
            f"exposure, no better than predicting one class for all ({level:.3f}): check that "
            "--classes names its outputs in order and that the data is what it was trained on"
        ),
    )


def scan_model(
    model: Any,
    clean: Any,
    config: ScanConfig | None = None,
    *,
    device: str | None = None,
    progress: StageProgress | None = None,
    load_progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Expose copies of ``model`` on disjoint parts of the defense set and detect a backdoor
    from the clean-prediction histograms they agree on.

    ``model``: a :class:`~unlearnable.checkpoints.LoadedModel` (any format
    :func:`~unlearnable.checkpoints.load_model` reads, TorchScript and ``torch.export``
    included), a path to our model format, or a classifier ``nn.Module`` (then ``clean`` must be
    a :class:`CleanSet`). ``clean``: a folder ``<class name>/<images>`` matched to the model's
    classes by name, or a :class:`CleanSet`. The model itself is not changed. ``progress``
    gets stage ``"expose"`` (``"expose 2"``, ... for the further exposures).
    """
    config = config or ScanConfig()
    with kept_modes(model) if isinstance(model, nn.Module) else nullcontext():
        return _scan(model, clean, config, device, progress, load_progress)


def _scan(
    model: Any,
    clean: Any,
    config: ScanConfig,
    device: str | None,
    progress: StageProgress | None,
    load_progress: Callable[[int, int], None] | None,
) -> ScanResult:
    subject = _model_and_data(
        model, clean, config.defense_images, config.seed, device, load_progress
    )
    parts = split_parts(subject.defense.labels, config.exposures, config.seed)
    if min(len(part) for part in parts) < 2:
        raise UsageError(
            f"{config.exposures} exposures split the {len(subject.defense)} defense images "
            f"into parts of {min(len(part) for part in parts)} image(s); each needs at least 2: "
            "lower --exposures, or give more clean images (--defense-images)"
        )
    runs = []
    for j, part in enumerate(parts):
        defense = subject.defense.subset(part)
        runs.append(
            expose(
                subject.model,
                defense.images,
                defense.labels,
                len(subject.classes),
                dataclasses.replace(config.exposure, seed=config.exposure.seed + j),
                subject.holdout.images,
                subject.holdout.labels,
                progress=_stage(progress, "expose" if j == 0 else f"expose {j + 1}"),
            )
        )
    detection = _unless_at_chance(
        detect_exposures(
            [r.rows for r in runs], config.detection, _prior(subject, config.detection)
        ),
        runs,
        subject,
    )
    which: dict[str, list[str]] = {}
    for j, run in enumerate(runs):
        for text in _exposure_notes(run, detection):
            which.setdefault(text, []).append(str(j + 1))
    notes = [
        text if len(runs) == 1 else f"exposure {', '.join(numbers)}: {text}"
        for text, numbers in which.items()
    ]
    if detection.inconclusive:
        notes.insert(0, f"verdict inconclusive: {detection.inconclusive}")
    if len(runs) > 1 and not detection.agree:
        notes.append(
            "the exposures disagree on where clean images collapse (top classes "
            f"{', '.join(subject.classes[t] for t in detection.tops)}): the sink is not "
            "stable, as for a clean model"
        )
    if subject.defense.missing:
        notes.append(
            f"no clean images of {len(subject.defense.missing)} model class(es): "
            f"{', '.join(subject.defense.missing[:8])}"
        )
    if len(subject.holdout) == 0:
        notes.append("no held-out clean images: the histogram is read on the defense set")
    skipped = subject.defense.skipped_note()
    if skipped:
        notes.append(skipped)
    return ScanResult(
        detection,
        runs,
        subject.classes,
        len(subject.defense),
        len(subject.holdout),
        config,
        subject.source,
        notes,
    )


_PURIFY = ("PurifyConfig", "PurifyResult", "purify_model", "save_purified")


def __getattr__(name: str) -> Any:
    """The purify names live in :mod:`.purify` (imported on first use)."""
    if name in _PURIFY:
        from . import purify

        return getattr(purify, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REPORT_VERSION",
    "ScanConfig",
    "ScanResult",
    "scan_model",
]
