"""Test subjects for EBYD: train a backdoored (or, with rate 0, a clean) classifier on a
labelled folder and save it with its trigger, clean accuracy (CA) and attack success rate (ASR).

``train_backdoored`` works on tensors; ``train_backdoor_folder`` reads ``DATA/<class>/...``,
holds out a class-balanced test split (or reads ``test``), trains with
:func:`unlearnable.attacks.training.train_classifier`, and writes ``output/`` with
``model.json`` + ``model.safetensors`` (the trigger and the metrics in the spec's metadata),
``trigger.json`` (for ``purify --trigger``), ``epochs.csv``, ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.backdoor import (
    BackdoorTrigger,
    PoisonConfig,
    attack_success_rate,
    make_backdoor,
    poison_training_set,
)
from ..attacks.training import TrainConfig, train_classifier
from ..errors import InputError, UsageError
from ..io.discover import discover_images
from ..io.images import ImageDecodeError, decode_image
from ..training.classification import evaluate
from .ebyd_data import check_utf8_names, load_clean_folder, split_defense


@dataclass
class BackdoorRun:
    """A trained subject: the model, its CA and ASR on the test set, the history rows, the
    poisoned training indices."""

    model: nn.Module
    clean_accuracy: float
    attack_success_rate: float
    rows: list[dict[str, Any]]
    poisoned: Tensor


def train_backdoored(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    trigger: BackdoorTrigger,
    poison: PoisonConfig,
    arch: str = "small-cnn",
    train: TrainConfig | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> BackdoorRun:
    """Poison the training set (``poison.rate`` may be 0 for a clean control), train ``arch``
    from a ``seed``-initialised model and measure CA (all test images) and ASR (triggered
    non-target test images). Images: uint8 or float ``(N, C, S, S)``; labels int64 ``(N,)``."""
    from ..models import build_victim

    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    poisoned = poison_training_set(train_images, train_labels, trigger, poison)
    model = build_victim(
        arch, num_classes, train_images.shape[-1], train_images.shape[1], seed=seed
    )
    history = train_classifier(
        model,
        poisoned.images,
        poisoned.labels,
        test_images,
        test_labels,
        train or TrainConfig(),
        seed=seed,
        progress=progress,
        num_classes=num_classes,
    )
    device = (train or TrainConfig()).device
    ca = evaluate(model, test_images, test_labels, device=device)
    asr = attack_success_rate(model, test_images, test_labels, trigger, poison.target)
    return BackdoorRun(model, ca, asr, history.epochs, poisoned.poisoned)


@dataclass(frozen=True)
class BackdoorTrainOptions:
    """What ``unlearnable backdoor train`` does (see :func:`train_backdoor_folder`).

    ``target``: class name or index; ``parameters``: trigger parameters (``size``, ``alpha``,
    ...); ``image_size``: ``None`` = the first image's short side (at most 224);
    ``test_fraction``: held-out share of DATA when no test folder is given."""

    attack: str = "badnets"
    target: str = "0"
    rate: float = 0.1
    parameters: dict[str, Any] = field(default_factory=dict)
    arch: str = "small-cnn"
    train: TrainConfig = field(default_factory=TrainConfig)
    image_size: int | None = None
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise UsageError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def _first_size(root: Path) -> int:
    """The short side (at most 224) of the first readable image below ``root``."""
    found = discover_images(root)
    if not found.files:
        raise InputError(f"no images found in {root}")
    problem = ""
    for rel in found.files:
        try:
            pixels = decode_image((root / rel).read_bytes()).pixels
        except (OSError, ImageDecodeError) as exc:
            problem = problem or f"{root / rel}: {exc}"
            continue
        return int(min(min(pixels.shape[:2]), 224))
    raise InputError(f"no image below {root} can be read (e.g. {problem})")


def _check_device(device: str | None) -> None:
    """``UsageError`` now, not after loading the data, for a device torch cannot use."""
    if device is None:
        return
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UsageError(f"cannot train on device {device!r}: {first.strip()}") from None


def _class_names(root: Path) -> tuple[str, ...]:
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    found = discover_images(root)
    names = sorted({f.split("/", 1)[0] for f in found.files if "/" in f})
    check_utf8_names(names, root)
    if len(names) < 2:
        raise InputError(f"{root} needs class subfolders with images of at least 2 classes")
    return tuple(names)


def _target_index(target: str, classes: tuple[str, ...]) -> int:
    if target in classes:
        return classes.index(target)
    if target.isdigit() and int(target) < len(classes):
        return int(target)
    raise UsageError(
        f"target {target!r} is neither a class name nor an index below "
        f"{len(classes)} (classes: {', '.join(classes[:10])})"
    )


def train_backdoor_folder(
    data: str | Path,
    output: str | Path,
    options: BackdoorTrainOptions | None = None,
    test: str | Path | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    load_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train a backdoored subject on ``data`` and save it in ``output``; returns the report."""
    from ..checkpoints import ModelSpec, save_model
    from ..io.atomic import atomic_write_text
    from ..run_folder import RunFolder

    options = options or BackdoorTrainOptions()
    _check_device(options.train.device)
    data = Path(data)
    classes = _class_names(data)
    size = options.image_size or _first_size(data)
    target = _target_index(str(options.target), classes)
    trigger = make_backdoor(options.attack, **options.parameters)
    clean = load_clean_folder(data, classes, size, load_progress)
    if test is not None:
        test_set = load_clean_folder(test, classes, size)
        train_set = clean
    else:
        if len(clean) < 5:
            raise InputError(
                f"{data} has {len(clean)} readable image(s): too few to hold out a test set; "
                "give more images or a separate --test folder"
            )
        n_test = max(len(classes), round(options.test_fraction * len(clean)))
        test_idx, train_idx = split_defense(clean.labels, n_test, options.seed)
        train_set, test_set = clean.subset(train_idx), clean.subset(test_idx)
    if len(train_set) < 2 or len(test_set) < 1:
        raise InputError(
            f"{len(train_set)} training and {len(test_set)} test image(s): backdoor train needs "
            "at least 2 and 1; give more images"
        )
    poison = PoisonConfig(target=target, rate=options.rate, seed=options.seed)
    run = train_backdoored(
        train_set.images,
        train_set.labels,
        test_set.images,
        test_set.labels,
        trigger,
        poison,
        options.arch,
        options.train,
        options.seed,
        len(classes),
        progress,
    )
    trigger_spec = {**trigger.describe(), "target": target, "target_name": classes[target]}
    report = {
        "attack": trigger_spec,
        "rate": options.rate,
        "poisoned_images": int(run.poisoned.numel()),
        "train_images": len(train_set),
        "test_images": len(test_set),
        "clean_accuracy": run.clean_accuracy,
        "attack_success_rate": run.attack_success_rate,
        "classes": list(classes),
        "arch": options.arch,
        "image_size": size,
        "skipped": {**clean.skipped, **({} if test is None else test_set.skipped)},
        "epochs": run.rows,
    }
    spec = ModelSpec(
        classes=classes,
        input_size=size,
        arch=options.arch,
        metadata={
            "trained_on": str(data),
            "backdoor": trigger_spec,
            "poison_rate": options.rate,
            "clean_accuracy": run.clean_accuracy,
            "attack_success_rate": run.attack_success_rate,
            "seed": options.seed,
        },
    )
    out = Path(output)
    save_model(run.model.cpu(), out, spec)
    folder = RunFolder(out, kind="backdoor")
    folder.write_config(
        {"options": {**asdict(options), "test": None if test is None else str(test)}},
        seeds=[options.seed],
    )
    folder.write_rows("epochs.csv", run.rows)
    folder.write_report(report, version=1)
    atomic_write_text(out / "trigger.json", json.dumps(trigger_spec, indent=2) + "\n")
    folder.write_markdown(
        "\n".join(
            [
                f"# Backdoored model ({trigger.name}, target {classes[target]}, rate {options.rate:g})",
                "",
                f"- clean accuracy: {100 * run.clean_accuracy:.1f}% on {len(test_set)} test images",
                f"- attack success rate: {100 * run.attack_success_rate:.1f}% on the non-target test "
                "images",
                f"- {int(run.poisoned.numel())} of {len(train_set)} training images poisoned",
                "- trigger: `trigger.json` (for `unlearnable purify --trigger`)",
            ]
        )
    )
    return report


__all__ = ["BackdoorRun", "BackdoorTrainOptions", "train_backdoor_folder", "train_backdoored"]
