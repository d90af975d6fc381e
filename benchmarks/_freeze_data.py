"""Data and θ_pre for ``freeze_cifar10.py``: CIFAR-10 JPEG class splits (decoded once, cached
as tensors) and the pretrained model (cached through ``checkpoints``)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CACHE = Path.home() / ".cache" / "unlearnable" / "freeze-cifar10"

T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {message}", flush=True)


def class_images(root: Path, split: str, c: int, count: int) -> torch.Tensor:
    """uint8 (count, 3, 32, 32): the first ``count`` files of class ``c`` (decoded once and
    cached as a tensor file)."""
    from unlearnable.imageops import square_rgb, to_uint8
    from unlearnable.io.images import decode_image

    cached = CACHE / f"{split}-{CLASSES[c]}-{count}.pt"
    if cached.exists():
        return torch.load(cached, weights_only=True)
    files = sorted((root / split / CLASSES[c]).iterdir())[:count]
    images = torch.stack([
        to_uint8(square_rgb(decode_image(f.read_bytes()).pixels, 32)) for f in files
    ])  # fmt: skip
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(images, cached)
    return images


def load_split(root: Path, split: str, classes, start: int, count: int):
    """ClassificationData: files start..start+count of each class."""
    from unlearnable.defenses.freeze import ClassificationData

    images = [class_images(root, split, c, start + count)[start:] for c in classes]
    labels = [torch.full((count,), c, dtype=torch.long) for c in classes]
    return ClassificationData(torch.cat(images), torch.cat(labels))


def pretrain(root: Path, classes, args):
    """θ_pre trained on ``classes`` (cached in ``CACHE/models``) and its test accuracy."""
    from unlearnable.checkpoints import ModelSpec, load_model, save_model
    from unlearnable.defenses.freeze import ClassificationAdapter
    from unlearnable.models import build_victim
    from unlearnable.training import FitConfig, fit, stream_generator

    recipe = f"small-cnn|{classes}|{args.pretrain_per_class}|{args.pretrain_epochs}|{args.seed}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    folder = CACHE / "models" / f"pretrain-{key}"
    if (folder / "model.json").exists():
        loaded = load_model(folder)
        log(f"θ_pre from the cache {folder}")
        return loaded.module.train(False), float(loaded.spec.metadata["test_acc"])
    train = load_split(root, "train", classes, 0, args.pretrain_per_class)
    model = build_victim("small-cnn", 10, 32, seed=args.seed)
    adapter = ClassificationAdapter(readout=classes)
    device = torch.device(args.device)
    batches = adapter.batches(train, 64, device, stream_generator(args.seed, "pre"))
    fit(
        model,
        batches,
        adapter.loss,
        lambda ps: torch.optim.AdamW(ps, lr=2e-3, weight_decay=5e-4),
        FitConfig(epochs=args.pretrain_epochs, seed=args.seed, device=str(device)),
    )
    model.train(False)
    test = load_split(root, "test", classes, 0, args.test)
    acc = adapter.evaluate(model, test, device)["acc"]
    model.cpu()
    spec = ModelSpec(classes=CLASSES, input_size=32, arch="small-cnn",
                     metadata={"recipe": recipe, "test_acc": acc})  # fmt: skip
    save_model(model, folder, spec)
    log(f"θ_pre trained and cached in {folder}")
    return model, acc
