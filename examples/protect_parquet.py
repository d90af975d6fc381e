"""Protect a Parquet dataset (the Hugging Face ``datasets`` layout) and check what changed.

Makes a tiny dataset of its own (4 classes of synthetic 32x32 images, PNG bytes in an ``image``
struct column, a ``label`` column and a ``caption`` column), protects it with a new key, and
shows that only the image bytes changed::

    python examples/protect_parquet.py                  # local process pool
    python examples/protect_parquet.py --engine ray     # needs pip install "unlearnable[ray]"
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

import unlearnable as ul
from unlearnable.datasets import make_demo_images
from unlearnable.io.formats.parquet import write_parquet


def make_dataset(folder: Path) -> Path:
    images, labels = make_demo_images(
        8, size=32, seed=0, classes=("circle", "square", "h-stripes", "ring")
    )
    encoded = []
    for index, pixels in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": f"{index:04d}.png"})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-00000-of-00001.parquet"
    path.write_bytes(
        write_parquet(
            {
                "image": encoded,
                "label": labels.tolist(),
                "caption": [f"synthetic picture {i}" for i in range(len(labels))],
            }
        )
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="unlearnable-parquet-"))
    source = make_dataset(work / "dataset")
    key = ul.write_key_file(work / "secret.bin")  # keep it: it is the only way to audit
    run_options = ul.RunOptions(
        workers=1, executor=ul.RayExecutor(workers=2) if args.engine == "ray" else None
    )
    run = ul.protect_dataset(
        source, work / "protected", key, "cuda", run_options, ul.FormatOptions(label_column="label")
    )
    print(
        f"protected {len(run.succeeded)} of {len(run.manifest.files)} rows, "
        f"mean PSNR {run.manifest.summary['mean_psnr']} dB, key {key.fingerprint}"
    )

    before = pq.read_table(source / "train-00000-of-00001.parquet")
    after = pq.read_table(work / "protected" / "train-00000-of-00001.parquet")
    assert after.column("caption").equals(before.column("caption"))
    assert after.column("label").equals(before.column("label"))
    changed = sum(
        a["bytes"] != b["bytes"]
        for a, b in zip(
            after.column("image").to_pylist(), before.column("image").to_pylist(), strict=True
        )
    )
    print(
        f"captions and labels unchanged; {changed} images changed; output in {work / 'protected'}"
    )
    assert changed == len(run.succeeded) and not run.failed


if __name__ == "__main__":
    main()
