"""Where benchmark data comes from: ``--data PATH`` or the CIFAR-10 JPEG archive in ../shared/data.

The archive is extracted once into ``~/.cache/unlearnable/cifar10-jpeg`` (train/ and test/ in
ImageFolder layout). Nothing from it is ever written into the repository.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CACHE = Path.home() / ".cache" / "unlearnable" / "cifar10-jpeg"


def cifar10_root(data: str | None) -> Path:
    """A folder holding ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``."""
    if data:
        root = Path(data)
        if root.is_file():
            return _extract(root)
        if not (root / "train").is_dir():
            raise SystemExit(f"--data {root}: expected train/ and test/ folders inside")
        return root
    if (CACHE / "train").is_dir() and (CACHE / "test").is_dir():
        return CACHE
    if not ARCHIVE.exists():
        raise SystemExit(f"no data: pass --data PATH (CIFAR-10 JPEG folder) or provide {ARCHIVE}")
    return _extract(ARCHIVE)


def _extract(archive: Path) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"extracting {archive} into {CACHE} (once)")
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return CACHE
