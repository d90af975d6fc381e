"""Per-file cost of the quality metrics a protect run records, against the I/O floor.

For CIFAR-10 JPEG files (32 px, in batches of ``CHUNK_FILES`` as the runner's chunks make them)
and for large photos (``--photo-size``, one per batch), times per file and one torch thread:

* ``floor``: decode + re-encode the JPEG with Pillow (what ``protect_throughput.py`` calls the
  I/O floor, without the file reads and writes);
* ``re-decode``: decoding the written JPEG again (the metrics describe the file as written);
* ``psnr+ssim``: the two metrics of the manifest record (``unlearnable.metrics``);
* ``visual cost``: ``unlearnable.visual_cost.visual_cost``;
* ``all (quality)``: ``unlearnable.metrics.quality`` on uint8 images, as the runner calls it
  (PSNR, SSIM and the visual cost sharing one pooling) -- absent in versions before it existed;
* ``record/floor``: what the runner computes per file (``quality``, or PSNR + SSIM in older
  versions) as a share of the floor.

The protected image is the original blurred and shifted by 2 px (a CUDA-like change).

    OMP_NUM_THREADS=1 python benchmarks/quality_cost.py --limit 640 --photos 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cifar10_root  # noqa: E402

from unlearnable import metrics  # noqa: E402
from unlearnable.io.discover import discover_images  # noqa: E402
from unlearnable.io.images import decode_pixels  # noqa: E402
from unlearnable.io.runner import CHUNK_FILES  # noqa: E402
from unlearnable.visual_cost import visual_cost  # noqa: E402


def _per_file(function, files: int, repeats: int) -> float:
    """Median over ``repeats`` of the seconds per file of ``function()`` (which does ``files``)."""
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) / files)
    return statistics.median(times)


def _protected(images: torch.Tensor) -> torch.Tensor:
    """A CUDA-like change: a 3x3 blur and a 2 px shift."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.roll(blurred, shifts=(2, 2), dims=(-2, -1))


def _floor(blobs: list[bytes]) -> None:
    for data in blobs:
        image = Image.open(io.BytesIO(data))
        image.load()
        image.save(io.BytesIO(), format="JPEG", quality="keep")


def _redecode(blobs: list[bytes], size: tuple[int, int]) -> None:
    for data in blobs:
        decode_pixels(data, 3, size)


def measure(name: str, blobs: list[bytes], batch: int, repeats: int) -> dict[str, float | None]:
    pixels = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs[:batch]]
    original_u8 = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)  # as the runner holds it
    original = original_u8.float().div(255)
    protected = _protected(original).mul(255).round().div(255)
    protected_hwc = protected.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    protected_u8 = protected_hwc.permute(0, 3, 1, 2)
    count = original.shape[0]
    size = (original.shape[3], original.shape[2])
    quality = getattr(metrics, "quality", None)
    row: dict[str, float | None] = {
        "floor": _per_file(lambda: _floor(blobs[:batch]), count, repeats),
        "re-decode": _per_file(lambda: _redecode(blobs[:batch], size), count, repeats),
        "psnr+ssim": _per_file(
            lambda: (metrics.psnr(original, protected), metrics.ssim(original, protected)),
            count,
            repeats,
        ),
        "visual cost": _per_file(lambda: visual_cost(original, protected), count, repeats),
        "all (quality)": None
        if quality is None
        else _per_file(lambda: quality(original_u8, protected_u8), count, repeats),
    }
    cost = float(visual_cost(original, protected).mean())
    print(f"{name}: {count} files per batch, mean visual cost {cost:.4f}", flush=True)
    return row


def _photo_jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (np.sin(xx / rng.uniform(20, 200)) + np.cos(yy / rng.uniform(20, 200))) * 60 + 128
    pixels = np.stack([base + rng.uniform(-40, 40) for _ in range(3)], axis=-1)
    pixels += rng.normal(0, 6, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/ inside) or its .tar.gz")
    parser.add_argument(
        "--limit", type=int, default=640, help="CIFAR files (in batches of the runner's chunks)"
    )
    parser.add_argument("--photos", type=int, default=3, help="large photos (0: skip)")
    parser.add_argument("--photo-size", default="3000x2000", help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=5, help="timings per cell (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows: list[tuple[str, dict[str, float | None]]] = []
    if args.limit:
        train = cifar10_root(args.data) / "train"
        files = discover_images(train).files[: args.limit]
        blobs = [(train / f).read_bytes() for f in files]
        size = CHUNK_FILES
        batches = [blobs[i : i + size] for i in range(0, len(blobs), size)]
        per_batch = [measure("cifar10 32 px", b, size, args.repeats) for b in batches]
        rows.append(
            (
                "cifar10 32 px",
                {
                    k: None
                    if per_batch[0][k] is None
                    else statistics.median(r[k] for r in per_batch)  # type: ignore[misc]
                    for k in per_batch[0]
                },
            )
        )
    if args.photos:
        width, height = map(int, args.photo_size.lower().split("x"))
        per_photo = [
            measure(f"photo {args.photo_size}", [_photo_jpeg(width, height, s)], 1, args.repeats)
            for s in range(args.photos)
        ]
        rows.append(
            (
                f"photo {args.photo_size}",
                {
                    k: None
                    if per_photo[0][k] is None
                    else statistics.median(r[k] for r in per_photo)  # type: ignore[misc]
                    for k in per_photo[0]
                },
            )
        )

    columns = list(rows[0][1]) if rows else []
    print(f"\nper-file cost in ms, {args.threads} torch thread(s), median of {args.repeats}")
    print(f"{'data':<20}" + "".join(f"{c:>15}" for c in columns) + f"{'record/floor':>15}")
    for name, row in rows:
        cells = "".join(
            f"{'-':>15}" if row[c] is None else f"{1e3 * row[c]:>15.3f}"  # type: ignore[operator]
            for c in columns
        )
        # what the runner computes per file: quality(), or PSNR + SSIM before it existed
        spent = row["all (quality)"] if row["all (quality)"] is not None else row["psnr+ssim"]
        print(f"{name:<20}{cells}{spent / row['floor']:>15.2f}")  # type: ignore[operator]


if __name__ == "__main__":
    main()
