"""Photo data for ``real_photos.py``: the flowers archive (or ``--data``), loaded as tensors.

The archive ``../shared/data/flowers12-jpeg.tar.gz`` is extracted once into
``~/.cache/unlearnable/flowers12-jpeg``. ``--data FOLDER`` may point at any folder with
``train/<class>/*`` and ``test/<class>/*`` images (or at a .tar.gz holding one). Nothing from
the data is ever written into the repository.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from unlearnable.imageops import square_rgb, to_uint8

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "flowers12-jpeg.tar.gz"
CACHE = Path.home() / ".cache" / "unlearnable" / "flowers12-jpeg"
_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class Split:
    """uint8 ``images (N, 3, S, S)``, int64 ``labels (N,)``, the class names (sorted folders)."""

    images: Tensor
    labels: Tensor
    classes: list[str]


def photos_root(data: str | None) -> Path:
    """A folder holding ``train/`` and ``test/`` class folders."""
    if data:
        root = Path(data).expanduser()
        if root.is_file():
            return _find_root(_extract(root, CACHE.parent / (root.name.split(".")[0])))
        return _find_root(root)
    if CACHE.is_dir():
        try:
            return _find_root(CACHE)
        except SystemExit:
            pass
    if not ARCHIVE.exists():
        raise SystemExit(f"no data: pass --data FOLDER (train/, test/) or provide {ARCHIVE}")
    return _find_root(_extract(ARCHIVE, CACHE))


def _extract(archive: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    print(f"extracting {archive} into {target} (once)", flush=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def _find_root(folder: Path) -> Path:
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise SystemExit(f"{folder}: expected train/ and test/ class folders inside")


def load_split(folder: Path, size: int, classes: list[str] | None = None) -> Split:
    """Every image of ``folder/<class>/`` centre-cropped to a square and resized to ``size``."""
    classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() not in _SUFFIXES:
                continue
            with Image.open(path) as img:
                pixels = np.array(img.convert("RGB"))
            images.append(to_uint8(square_rgb(pixels, size)))
            labels.append(index)
    if not images:
        raise SystemExit(f"{folder}: no images found")
    return Split(torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes)


def roundtrip(images: Tensor, fmt: str, quality: int = 75) -> Tensor:
    """uint8 ``(N, 3, H, W)`` through an encode/decode: ``png`` (lossless: unchanged) or
    ``jpeg`` at ``quality`` with 4:2:0 chroma subsampling (the flowers files are q~75)."""
    if fmt == "png":
        return images.clone()
    if fmt != "jpeg":
        raise ValueError(f"format must be png or jpeg, got {fmt!r}")
    out = []
    for hwc in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(hwc).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def fingerprint(*tensors: Tensor) -> str:
    """A short content hash of tensors (keys the run cache)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
