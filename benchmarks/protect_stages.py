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
  version 1, and version 3 against version 2, at each strength, and at which rung of the
  strength ladder each file would end under a ``--max-visual-cost`` budget with either version
  (``--flowers N``: the same v3 - v2 table on N photos of the flowers archive).

The sum of the runner's stages over the floor's is the ratio one worker could reach at best
(no start-up, no manifest); ``protect_throughput.py`` measures the whole run. The two write
rows are the file system's cost of creating a file: on this machine's ext4 root, within a few
minutes of deleting many files, they were 10x their usual cost (see ``protect_throughput.py``),
and then they, not the work per file, make the ratio.

    python benchmarks/protect_stages.py                      # both datasets
    python benchmarks/protect_stages.py --cifar-files 640 --photos 4
    python benchmarks/protect_stages.py --cifar-files 0 --photos 12 --flowers 120
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


def stages(
    files: list[bytes],
    labels: list[int],
    protector,
    batch: int,
    repeats: int,
    scratch,
    other=None,
):
    """CPU microseconds per file of each stage (see the module docstring); ``other``: a second
    protector whose protection is timed too (e.g. another stack version), or None."""
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
        **(
            {
                f"protect, stack v{other.stack_version}": _cpu(
                    lambda: [
                        other.apply_uint8(p, y, plan) for p, y in zip(pixels, ids, strict=True)
                    ],
                    repeats,
                )
            }
            if other is not None
            else {}
        ),
        "encode_image": _cpu(
            lambda: [encode_image(flat[i], images[i], "JPEG") for i in range(n)], repeats
        ),
        "quality, metrics v1": _cpu(lambda: quality(1), repeats),
        "quality, metrics v2": _cpu(lambda: quality(2), repeats),
        "quality, metrics v3": _cpu(lambda: quality(3), repeats),
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
    own = {k: v for k, v in rows.items() if not k.startswith(("floor", "protect, stack"))}
    common = sum(v for k, v in own.items() if not k.startswith("quality, metrics"))
    versions = [k.rsplit(" ", 1)[1] for k in own if k.startswith("quality, metrics")]
    totals = {v: common + own[f"quality, metrics {v}"] for v in versions}
    newest = versions[-1]
    total = totals[newest]
    print(f"\n{name}: CPU per file at one thread (median), load average {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<28}{'us/file':>10}")
    for stage, value in rows.items():
        print(f"{stage:<28}{value:>10.0f}")
    print(f"{'floor total':<28}{floor:>10.0f}")
    for version in reversed(versions):
        label = f"runner total, metrics {version}"
        print(f"{label:<28}{totals[version]:>10.0f}   floor / runner {floor / totals[version]:.2f}")
    for name in (k for k in rows if k.startswith("protect, stack")):
        other = total - rows["protect (apply_uint8)"] + rows[name]
        label = f"runner total, {name.split(', ')[1]}"
        print(f"{label:<28}{other:>10.0f}   floor / runner {floor / other:.2f}  (metrics {newest})")


BUDGETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
"""``--max-visual-cost`` budgets at which :func:`metric_changes` compares each file's rung."""


def metric_changes(
    files: list[bytes], labels: list[int], protector, name: str, old: int, new: int
) -> None:
    """How metrics version ``new`` changes the recorded values against version ``old`` (JPEG
    outputs, at each strength), and at which rung of the strength ladder (the first of high,
    mid, low whose visual cost fits a budget of :data:`BUDGETS`; ``over`` when none does) each
    file would end under either version."""
    import torch

    from unlearnable.io.images import decode_image, encode_image
    from unlearnable.io.measure import written_quality

    print(f"\nmetrics v{new} - v{old} on {name} (JPEG output; mean [min, max])")
    print(
        f"{'strength':<10}{'cost v' + str(old):>9}{'PSNR dB':>28}{'SSIM x 1000':>28}"
        f"{f'cost v{new} / v{old} - 1 (%)':>28}{'|cost change| max':>19}"
    )
    ladder = ("high", "mid", "low")
    costs = {version: np.zeros((len(files), len(ladder))) for version in (old, new)}
    for column, strength in enumerate(ladder):
        plan = protector.params.scaled(strength)
        changes = []
        for row, (data, label) in enumerate(zip(files, labels, strict=True)):
            image = decode_image(data)
            pixels = torch.from_numpy(image.pixels[None])
            out = protector.apply_uint8(pixels, torch.tensor([label]), plan)
            encoded = encode_image(out[0], image, "JPEG")
            a, b = (
                written_quality(pixels.permute(0, 3, 1, 2), [out[0]], [encoded], [True], version)
                for version in (old, new)
            )
            costs[old][row, column] = round(float(a.visual_cost), 5)  # as records hold them
            costs[new][row, column] = round(float(b.visual_cost), 5)
            changes.append(
                (
                    float(a.visual_cost),
                    float(b.psnr - a.psnr),
                    float(b.ssim - a.ssim) * 1000,
                    float(b.visual_cost / a.visual_cost - 1) * 100,
                )
            )
        table = np.array(changes)
        cells = [
            f"{col.mean():+.3f} [{col.min():+.3f}, {col.max():+.3f}]" for col in table[:, 1:].T
        ]
        biggest = np.abs(costs[new][:, column] - costs[old][:, column]).max()
        print(
            f"{strength:<10}{table[:, 0].mean():>9.4f}"
            + "".join(f"{c:>28}" for c in cells)
            + f"{biggest:>19.5f}"
        )

    def rungs(version: int, budget: float) -> np.ndarray:
        fits = costs[version] <= budget
        return np.where(fits.any(axis=1), fits.argmax(axis=1), len(ladder))

    moved = []
    for budget in BUDGETS:
        a, b = rungs(old, budget), rungs(new, budget)
        changed = int((a != b).sum())
        moved.append(
            f"{budget:g}: {changed}" + (f" ({np.flatnonzero(a != b).tolist()})" if changed else "")
        )
    print(f"files whose rung changes, by budget (of {len(files)}): " + ", ".join(moved))


def flowers(count: int) -> tuple[list[bytes], list[int], list[str]]:
    """Up to ``count`` train photos (224 x 224 JPEG) of the flowers archive in ../shared/data,
    spread over its classes, with their label ids and the class names; empty when the archive
    is not there."""
    import tarfile

    archive = Path(__file__).resolve().parents[1].parent / "shared/data/flowers12-jpeg.tar.gz"
    if not archive.exists() or count <= 0:
        return [], [], []
    with tarfile.open(archive) as tar:
        names = sorted(n for n in tar.getnames() if "/train/" in n and n.endswith(".jpg"))
        names = names[:: max(1, len(names) // count)][:count]
        classes = sorted({n.split("/")[-2] for n in names})
        files = [tar.extractfile(n).read() for n in names]  # type: ignore[union-attr]
    return files, [classes.index(n.split("/")[-2]) for n in names], classes


def upscaled(files: list[bytes], side: int) -> list[bytes]:
    """The JPEG ``files`` resized to ``side`` x ``side`` (Lanczos, saved at quality 90), e.g.
    2048 for viewing factor 8."""
    out = []
    for data in files:
        buffer = io.BytesIO()
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        picture.resize((side, side), Image.LANCZOS).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/ inside) or its .tar.gz")
    parser.add_argument("--cifar-files", type=int, default=640, help="0: skip CIFAR-10")
    parser.add_argument("--photos", type=int, default=4, help="0: skip the photos")
    parser.add_argument("--flowers", type=int, default=0, help="flowers photos for v3 - v2")
    parser.add_argument(
        "--flowers-side", type=int, default=2048, help="the flowers again upscaled (0: not)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args()
    import torch

    from unlearnable.io.runner import CHUNK_FILES
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
                CHUNK_FILES,
                args.repeats,
                Path(tmp) / "cifar",
            )
            report(
                f"CIFAR-10 JPEG, {len(paths)} files of 32x32, batches of {CHUNK_FILES}", rows
            )
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
                PhotoProtector(key, ["photos"], stack_version=2),  # the previous default stack
            )
            report(f"{len(paths)} photos of 3000x2000 JPEG q90, one per batch", rows)
            photos = [p.read_bytes() for p in paths]
            label = f"{len(paths)} photos of 3000x2000"
            for old, new in ((1, 2), (2, 3)):
                metric_changes(
                    photos, [0] * len(photos), PhotoProtector(key, ["photos"]), label, old, new
                )
        files, labels, classes = flowers(args.flowers)  # the archive is read once
        sides = [0] + ([args.flowers_side] if args.flowers_side else [])
        for side in sides if files else []:
            chosen = upscaled(files, side) if side else files
            name = f"{len(files)} flowers ({side or 224} px)"
            metric_changes(chosen, labels, PhotoProtector(key, classes), name, 2, 3)


if __name__ == "__main__":
    main()
