"""Audit a model: was it trained on the images you protected with your key?

Makes a tiny labelled WebDataset shard (4 classes of synthetic 16x16 images), protects it,
plays the scraper (trains a small CNN on the protected shard), then audits that model and a
model trained on clean images with ``unlearnable.audit``: marked clean probes, compared against
the marks of other keys, give a p-value::

    python examples/audit_model.py
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import unlearnable as ul
from unlearnable.attacks.training import TrainConfig, train_classifier
from unlearnable.datasets import make_demo_images
from unlearnable.io.formats.webdataset import write_shard

CLASSES = ("circle", "square", "triangle", "cross")
SIZE = 16


def shard_images(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``(N, 3, SIZE, SIZE)`` and labels ``(N,)`` of a shard's samples."""
    with tarfile.open(path) as tar:
        found = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    keys = sorted(name[:-4] for name in found if name.endswith(".png"))
    pixels = [np.asarray(Image.open(io.BytesIO(found[f"{k}.png"])).convert("RGB")) for k in keys]
    labels = [CLASSES.index(found[f"{k}.cls"].decode()) for k in keys]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, len(CLASSES)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="unlearnable-audit-"))
    images, labels = make_demo_images(150, size=SIZE, seed=0, classes=CLASSES)
    samples = []
    for pixels, label in zip(images, labels, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        samples.append({"png": buffer.getvalue(), "cls": CLASSES[label].encode()})
    (work / "shards").mkdir(parents=True, exist_ok=True)
    (work / "shards" / "train-0000.tar").write_bytes(write_shard(samples))
    key = ul.write_key_file(work / "secret.bin")
    ul.protect_dataset(work / "shards", work / "protected", key, "cuda", ul.RunOptions(workers=1))

    probe_pixels, probe_labels = make_demo_images(20, size=SIZE, seed=1, classes=CLASSES)
    probes = torch.from_numpy(probe_pixels).permute(0, 3, 1, 2).contiguous()
    probe_y = torch.from_numpy(probe_labels)
    config = TrainConfig(epochs=6, batch_size=32, lr=0.05, augment=False)
    audit = ul.AuditConfig(null_keys=19, alpha=0.05)  # small for the example; use 100+ and 0.01
    for name, shards in (
        ("trained on the protected shard", work / "protected"),
        ("trained on the clean shard", work / "shards"),
    ):
        train_x, train_y = shard_images(shards / "train-0000.tar")
        model = small_cnn()
        train_classifier(model, train_x, train_y, probes, probe_y, config, seed=0)
        result = ul.audit_model(
            model.eval(),
            key,
            work / "protected",
            probes,
            model_classes=list(CLASSES),
            probe_labels=[CLASSES[i] for i in probe_labels],
            config=audit,
        )
        print(f"model {name}: p = {result.p_value:.3f}, flagged = {result.flagged}")


if __name__ == "__main__":
    main()
