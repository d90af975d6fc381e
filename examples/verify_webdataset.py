"""Verify a protected WebDataset release before publishing it: would a scraper learn from it?

Makes tiny shards (3 classes of synthetic 32x32 images), protects them, unpacks the clean and
the protected shards into class folders, and runs ``unlearnable.verify_folders``: a victim
model is trained on each copy and tested on clean test images. The ``smoke`` budget used here
takes seconds and only shows the workflow; use ``--budget quick`` or more (and real data) for a
verdict you can rely on::

    python examples/verify_webdataset.py [--budget quick]
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

import unlearnable as ul
from unlearnable.datasets import make_demo_images
from unlearnable.io.formats.webdataset import split_member, write_shard

CLASSES = ("circle", "square", "h-stripes")


def make_shard(path: Path, per_class: int, seed: int) -> Path:
    images, labels = make_demo_images(per_class, size=32, seed=seed, classes=CLASSES)
    samples = []
    for pixels, label in zip(images, labels, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        samples.append({"png": buffer.getvalue(), "cls": CLASSES[label].encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(write_shard(samples))
    return path.parent


def unpack(shards: Path, folder: Path) -> Path:
    """Shards -> ``folder/<label>/<key>.png`` (an ImageFolder tree, which verify reads)."""
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            found = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in found.items():
            key, extension = split_member(name)
            if extension == "png":
                label = found[f"{key}.cls"].decode()
                (folder / label).mkdir(parents=True, exist_ok=True)
                (folder / label / f"{shard.stem}-{key}.png").write_bytes(data)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="unlearnable-verify-"))
    shards = make_shard(work / "shards" / "train-0000.tar", per_class=40, seed=0)
    key = ul.write_key_file(work / "secret.bin")
    run = ul.protect_dataset(
        shards, work / "protected-shards", key, "cuda", ul.RunOptions(workers=1)
    )
    assert not run.failed

    clean = unpack(shards, work / "clean")
    protected = unpack(work / "protected-shards", work / "protected")
    test = unpack(
        make_shard(work / "test-shards" / "test-0000.tar", per_class=20, seed=1), work / "test"
    )
    options = ul.VerifyOptions(attacks=("erm",), budget=args.budget, device="cpu")
    result = ul.verify_folders(protected, clean, test, options, output=work / "verify-run")
    print(f"verdict: {result.result.verdict} (report: {result.folder / 'report.md'})")


if __name__ == "__main__":
    main()
