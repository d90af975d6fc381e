"""The EBYD benchmark's data and test subjects: CIFAR-10 JPEG subsets and trained models cached
on disk (``WORK/models/<name>-<key>/``, our safetensors format), so a rerun does not retrain.

The cache key hashes everything that shapes a model (trigger, target, rate, seed, architecture,
training images per class, epochs, lr, augmentation); change any of them and the model is
trained again under a new folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from unlearnable.attacks.backdoor import PoisonConfig, attack_success_rate
from unlearnable.checkpoints import ModelSpec, load_model, save_model
from unlearnable.defenses.ebyd_data import CleanSet, load_clean_folder
from unlearnable.defenses.ebyd_subjects import train_backdoored
from unlearnable.training.classification import evaluate


def _links(split: Path, target: Path, start: int, stop: int) -> Path:
    for class_dir in sorted(p for p in split.iterdir() if p.is_dir()):
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        for file in sorted(class_dir.iterdir())[start:stop]:
            link = target / class_dir.name / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return target


def load_data(
    root: Path, train_per_class: int, defense_per_class: int, test_per_class: int, work: Path
) -> tuple[tuple[str, ...], dict[str, CleanSet]]:
    """``train`` (the first ``train_per_class`` training images of each class), ``defense``
    (the next ``defense_per_class``: never trained on) and ``test`` (the first
    ``test_per_class`` test images), uint8 ``(N, 3, 32, 32)``; decoded tensors are cached in
    ``work`` (plain tensors, read back with ``weights_only=True``)."""
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    t, d = train_per_class, defense_per_class
    cache = work / f"data-{t}-{d}-{test_per_class}.pt"
    if cache.exists():
        raw = torch.load(cache, weights_only=True)
        return classes, {k: CleanSet(v[0], v[1], classes) for k, v in raw.items()}
    parts = {
        "train": _links(root / "train", work / f"train-{t}", 0, t),
        "defense": _links(root / "train", work / f"defense-{t}-{d}", t, t + d),
        "test": _links(root / "test", work / f"test-{test_per_class}", 0, test_per_class),
    }
    data = {k: load_clean_folder(v, classes, 32) for k, v in parts.items()}
    work.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({k: (v.images, v.labels) for k, v in data.items()}, tmp)
    tmp.replace(cache)
    return classes, data


def subject_key(name, trigger, target, rate, seed, arch, train_per_class, config) -> str:
    facts = {
        "name": name,
        "trigger": trigger.describe(),
        "target": target,
        "rate": rate,
        "seed": seed,
        "arch": arch,
        "train_per_class": train_per_class,
        "train": config.to_dict(),
    }
    text = json.dumps(facts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def trained_subject(
    name,
    trigger,
    target,
    rate,
    seed,
    arch,
    train_per_class,
    config,
    classes,
    data,
    work: Path,
    log=print,
) -> tuple[torch.nn.Module, dict]:
    """The subject model (cached, or trained now and cached) and its facts
    ``{"CA", "ASR", "train_seconds", "cached"}`` (CA/ASR on ``data["test"]``)."""
    key = subject_key(name, trigger, target, rate, seed, arch, train_per_class, config)
    folder = work / "models" / f"{name}-{key}"
    test = data["test"]
    if (folder / "model.json").exists():
        loaded = load_model(folder)
        model = loaded.module.train(False)
        facts = dict(loaded.spec.metadata["facts"])
        facts["cached"] = True
        return model, facts
    t0 = time.time()
    train = data["train"]
    run = train_backdoored(
        train.images,
        train.labels,
        test.images[:500],
        test.labels[:500],
        trigger,
        PoisonConfig(target, rate, seed),
        arch,
        config,
        seed=seed,
        num_classes=len(classes),
    )
    model = run.model.train(False)
    facts = {
        "CA": evaluate(model, test.images, test.labels),
        "ASR": attack_success_rate(model, test.images, test.labels, trigger, target),
        "train_seconds": time.time() - t0,
    }
    spec = ModelSpec(
        classes=classes,
        input_size=32,
        arch=arch,
        metadata={
            "facts": facts,
            "trigger": trigger.describe(),
            "target": target,
            "rate": rate,
            "seed": seed,
        },
    )
    save_model(model, folder, spec)
    log(
        f"trained {name}: CA {facts['CA']:.3f} ASR {facts['ASR']:.3f} "
        f"({facts['train_seconds']:.0f}s) -> {folder}"
    )
    return model, {**facts, "cached": False}


__all__ = ["load_data", "subject_key", "trained_subject"]
