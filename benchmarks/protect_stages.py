"""Where a protected file's time goes, stage by stage, against the floor's decode + encode.

In one process at one torch thread, for the same files ``protect_throughput.py`` uses (the
CIFAR-10 JPEG train files and generated 3000 x 2000 JPEG photos), the CPU time per file of:

* the floor's work: Pillow decode (``Image.open`` + ``load``) and encode (JPEG with the source's
  tables), and a plain file write;
* the runner's stages (:mod:`unlearnable.io.work`): ``decode_image`` (the floor's decode plus
  the copy to numpy, EXIF and save options), the protection (``apply_uint8`` of the method's
  protector, batched as the runner batches), ``encode_image``, the quality of the file as
  written (:func:`unlearnable.io.measure.written_quality`: the read-back of a lossy file and
  PSNR, SSIM and visual cost) for each metrics version, the two SHA-256 and the atomic write;
* for the photos, how much metrics version 2 changes PSNR, SSIM and visual cost against
  version 1 at each strength.

The sum of the runner's stages over the floor's is the ratio one worker could reach at best
(no start-up, no manifest); ``protect_throughput.py`` measures the whole run.

    python benchmarks/protect_stages.py                      # both datasets
    python benchmarks/protect_stages.py --cifar-files 640 --photos 4
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cifar10_root  # noqa: E402


def _cpu(function, repeats: int) -> float:
    """Median CPU seconds of ``function()`` over ``repeats`` calls (after one call to warm up)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return statistics.median(times)


def stages(files: list[bytes], labels: list[int], protector, batch: int, repeats: int, scratch):
    """CPU microseconds per file of each stage (see the module docstring)."""
    import torch

    from unlearnable.io.atomic import atomic_write_bytes
    from unlearnable.io.hashing import sha256_bytes
    from unlearnable.io.images import decode_image, encode_image
    from unlearnable.io.measure import written_quality

    n = len(files)
    pictures = [Image.open(io.BytesIO(data)) for data in files]
    for picture in pictures:
        picture.load()

    def floor_encode() -> list[bytes]:
        out = []
        for picture in pictures:
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality="keep")
            out.append(buffer.getvalue())
        return out

    def load_all() -> None:
        for data in files:
            Image.open(io.BytesIO(data)).load()

    images = [decode_image(data) for data in files]
    groups = [list(range(i, min(n, i + batch))) for i in range(0, n, batch)]
    pixels = [torch.from_numpy(np.stack([images[i].pixels for i in g])) for g in groups]
    plan = protector.plan(images[0].height, images[0].width)
    ids = [torch.tensor([labels[i] for i in g]) for g in groups]
    protected = [protector.apply_uint8(p, y, plan) for p, y in zip(pixels, ids, strict=True)]
    flat = [out[j] for out in protected for j in range(len(out))]
    encoded = [encode_image(flat[i], images[i], "JPEG") for i in range(n)]
    folder = Path(scratch)
    runs = iter(range(1_000_000))

    def write(writer) -> None:  # a fresh folder each time (removed at the end, not timed)
        target = folder / f"run{next(runs)}"
        target.mkdir(parents=True)
        for i, data in enumerate(encoded):
            writer(target / f"f{i:05d}.jpg", data)

    def quality(version: int) -> None:
        for g, p in zip(groups, pixels, strict=True):
            written_quality(
                p.permute(0, 3, 1, 2),
                [flat[i] for i in g],
                [encoded[i] for i in g],
                [True] * len(g),
                version,
            )

    rows = {
        "floor: decode": _cpu(load_all, repeats),
        "floor: encode": _cpu(floor_encode, repeats),
        "floor: write file": _cpu(lambda: write(lambda p, d: p.write_bytes(d)), repeats),
        "decode_image": _cpu(lambda: [decode_image(d) for d in files], repeats),
        "protect (apply_uint8)": _cpu(
            lambda: [protector.apply_uint8(p, y, plan) for p, y in zip(pixels, ids, strict=True)],
            repeats,
        ),
        "encode_image": _cpu(
            lambda: [encode_image(flat[i], images[i], "JPEG") for i in range(n)], repeats
        ),
        "quality, metrics v1": _cpu(lambda: quality(1), repeats),
        "quality, metrics v2": _cpu(lambda: quality(2), repeats),
        "sha256 in + out": _cpu(
            lambda: [
                (sha256_bytes(a), sha256_bytes(b)) for a, b in zip(files, encoded, strict=True)
            ],
            repeats,
        ),
        "atomic write": _cpu(lambda: write(atomic_write_bytes), repeats),
    }
    shutil.rmtree(folder, ignore_errors=True)
    return {name: seconds / n * 1e6 for name, seconds in rows.items()}


def report(name: str, rows: dict[str, float]) -> None:
    floor = rows["floor: decode"] + rows["floor: encode"] + rows["floor: write file"]
    runner = {k: v for k, v in rows.items() if not k.startswith("floor") and "v1" not in k}
    runner_v1 = {k: v for k, v in rows.items() if not k.startswith("floor") and "v2" not in k}
    total, total_v1 = sum(runner.values()), sum(runner_v1.values())
    print(f"\n{name}: CPU per file at one thread (median), load average {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<28}{'us/file':>10}")
    for stage, value in rows.items():
        print(f"{stage:<28}{value:>10.0f}")
    print(f"{'floor total':<28}{floor:>10.0f}")
    print(f"{'runner total, metrics v2':<28}{total:>10.0f}   floor / runner {floor / total:.2f}")
    print(
        f"{'runner total, metrics v1':<28}{total_v1:>10.0f}   floor / runner {floor / total_v1:.2f}"
    )


def metric_changes(files: list[bytes], protector) -> None:
    """How metrics version 2 changes the recorded values against version 1 (JPEG outputs of
    the photos, at each strength)."""
    import torch

    from unlearnable.io.images import decode_image, encode_image
    from unlearnable.io.measure import written_quality

    print(f"\nmetrics v2 - v1 on {len(files)} photos (JPEG output; mean [min, max])")
    print(
        f"{'strength':<10}{'cost v1':>9}{'PSNR dB':>28}{'SSIM x 1000':>28}{'cost v2 / v1 - 1 (%)':>28}"
    )
    for strength in ("high", "mid", "low"):
        plan = protector.params.scaled(strength)
        changes = []
        for data in files:
            image = decode_image(data)
            pixels = torch.from_numpy(image.pixels[None])
            out = protector.apply_uint8(pixels, torch.tensor([0]), plan)
            encoded = encode_image(out[0], image, "JPEG")
            v1, v2 = (
                written_quality(pixels.permute(0, 3, 1, 2), [out[0]], [encoded], [True], version)
                for version in (1, 2)
            )
            changes.append(
                (
                    float(v1.visual_cost),
                    float(v2.psnr - v1.psnr),
                    float(v2.ssim - v1.ssim) * 1000,
                    float(v2.visual_cost / v1.visual_cost - 1) * 100,
                )
            )
        table = np.array(changes)
        cells = [
            f"{col.mean():+.3f} [{col.min():+.3f}, {col.max():+.3f}]" for col in table[:, 1:].T
        ]
        print(f"{strength:<10}{table[:, 0].mean():>9.4f}" + "".join(f"{c:>28}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/ inside) or its .tar.gz")
    parser.add_argument("--cifar-files", type=int, default=640, help="0: skip CIFAR-10")
    parser.add_argument("--photos", type=int, default=4, help="0: skip the photos")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args()
    import torch

    from unlearnable.keys import SecretKey
    from unlearnable.protect.photo import PhotoProtector

    torch.set_num_threads(args.threads)
    key = SecretKey(bytes(32))
    with tempfile.TemporaryDirectory(prefix="unlearnable-stages-") as tmp:
        if args.cifar_files:
            train = cifar10_root(args.data) / "train"
            classes = sorted(p.name for p in train.iterdir() if p.is_dir())
            per_class = max(1, args.cifar_files // len(classes))
            paths = [
                (index, path)
                for index, name in enumerate(classes)
                for path in sorted((train / name).iterdir())[:per_class]
            ]
            rows = stages(
                [p.read_bytes() for _, p in paths],
                [i for i, _ in paths],
                PhotoProtector(key, classes),
                64,
                args.repeats,
                Path(tmp) / "cifar",
            )
            report(f"CIFAR-10 JPEG, {len(paths)} files of 32x32, batches of 64", rows)
        if args.photos:
            from protect_throughput import make_photos

            folder = make_photos(Path(tmp) / "photos", args.photos, 3000, 2000)
            paths = sorted((folder / "photos").glob("*.jpg"))
            rows = stages(
                [p.read_bytes() for p in paths],
                [0] * len(paths),
                PhotoProtector(key, ["photos"]),
                1,
                args.repeats,
                Path(tmp) / "photo-out",
            )
            report(f"{len(paths)} photos of 3000x2000 JPEG q90, one per batch", rows)
            metric_changes([p.read_bytes() for p in paths], PhotoProtector(key, ["photos"]))


if __name__ == "__main__":
    main()
