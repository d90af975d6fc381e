"""Protect WebDataset tar shards (the img2dataset / LAION layout) and look inside one.

Makes two tiny shards of its own (synthetic 32x32 JPEGs with ``.cls`` labels, ``.txt``
captions and ``.json`` metadata), protects them into shards of the same names, and prints the
members of the first sample before and after::

    python examples/protect_webdataset.py               # local process pool
    python examples/protect_webdataset.py --engine ray  # needs pip install "unlearnable[ray]"
    python examples/protect_webdataset.py --output s3://bucket/out/  # any fsspec URL (s3fs)

The same from the command line::

    unlearnable protect shards/ -o shards-protected/ --key secret.bin [--engine ray]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
from pathlib import Path

import fsspec
from PIL import Image

import unlearnable as ul
from unlearnable.datasets import make_demo_images
from unlearnable.io.formats.webdataset import write_shard


def make_shards(folder: Path, shards: int = 2) -> Path:
    images, labels = make_demo_images(6, size=32, seed=0, classes=("circle", "square", "h-stripes"))
    samples = []
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        samples.append(
            {
                "jpg": buffer.getvalue(),
                "cls": str(int(label)).encode(),
                "txt": f"a synthetic picture of class {int(label)}".encode(),
                "json": json.dumps({"key": f"{index:06d}", "width": 32, "height": 32}).encode(),
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(samples) // shards)
    for shard in range(shards):
        chunk = range(shard * per_shard, min(len(samples), (shard + 1) * per_shard))
        data = write_shard([samples[i] for i in chunk], [f"{i:06d}" for i in chunk])
        (folder / f"train-{shard:04d}.tar").write_bytes(data)
    return folder


def members(path: str) -> dict[str, bytes]:
    """The members of the shard at ``path`` (a local path or an fsspec URL)."""
    with fsspec.open(path, "rb") as handle, tarfile.open(fileobj=handle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--output", help="a folder or an fsspec URL such as s3://bucket/out/ (default: in workdir)"
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="unlearnable-wds-"))
    source = make_shards(work / "shards")
    key = ul.write_key_file(work / "secret.bin")
    run_options = ul.RunOptions(
        workers=1, executor=ul.RayExecutor(workers=2) if args.engine == "ray" else None
    )
    output = (args.output or str(work / "protected")).rstrip("/")
    run = ul.protect_dataset(source, output, key, "cuda", run_options)
    print(
        f"{run.manifest.summary['ok']} images protected into {output} "
        f"(labels from {run.manifest.label_mode}; manifest {run.manifest_path})"
    )
    before = members(str(source / "train-0000.tar"))
    after = members(f"{output}/train-0000.tar")
    assert list(before) == list(after)
    for name in list(before)[:4]:
        state = "unchanged" if before[name] == after[name] else "protected"
        print(f"  {name:<14} {state}")
    assert not run.failed


if __name__ == "__main__":
    main()
