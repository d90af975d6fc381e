"""Shared fixtures: keys, small synthetic image folders, and an in-process CLI runner."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from unlearnable.keys import SecretKey, write_key_file

FIXED_KEY = SecretKey(bytes(range(32)))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "secret.bin"
    path.parent.mkdir()
    write_key_file(path)
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def random_image(size=(24, 20), mode="RGB", seed=0) -> Image.Image:
    """A random-noise image of ``size`` (width, height) in ``mode``."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode in ("RGB", "RGBA", "L", "LA"):
        channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
        data = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        return Image.fromarray(data[..., 0] if channels == 1 else data, mode)
    return random_image(size, "RGB", seed).convert(mode)


def make_labelled_folder(
    root: Path, classes=("cat", "dog"), per_class=3, size=(24, 20), fmt="PNG"
) -> Path:
    """An ImageFolder tree of random images; returns ``root``."""
    ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}[fmt]
    for c_index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            random_image(size, seed=100 * c_index + i).save(
                root / name / f"img{i}.{ext}", format=fmt
            )
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` by relative path (to prove nothing changed)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def one_torch_thread():
    """One torch thread during a test, restored after it: tiny models gain nothing from
    intra-op threads, and on a loaded 2-core machine OpenMP spinning makes them many times
    slower. Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
