"""Subsets of the CIFAR-10 JPEG folders (symbolic links, nothing copied) for benchmarks."""

from __future__ import annotations

from pathlib import Path

ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLES = ("airplane", "automobile", "ship", "truck")


def link_subset(split_dir: Path, target: Path, per_class: int | None) -> Path:
    """``target/<class>/<file>`` links to the first ``per_class`` files of each class
    (all of them for None), in sorted order, i.e. canonical CIFAR-10 order."""
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        chosen = files if per_class is None else files[:per_class]
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        for file in chosen:
            (target / class_dir.name / file.name).symlink_to(file.resolve())
    return target


def coarse_label_csv(path: Path) -> Path:
    """owner label -> scraper label CSV: animals vs vehicles."""
    rows = [f"{name},animal" for name in ANIMALS] + [f"{name},vehicle" for name in VEHICLES]
    path.write_text("\n".join(rows) + "\n")
    return path
