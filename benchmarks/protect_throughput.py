"""Protect throughput against the I/O floor, on the same files with the same worker count.

(a) floor: decode + re-encode to the same format with Pillow (JPEG keeps its quantisation
    tables) + write each file, in ``--workers`` processes, in the runner's chunks for that many
    lanes (:func:`unlearnable.io.runner.chunk_tasks`: at most 256 files and 1 MB each, smaller
    towards the end, so the workers end together);
(b) protect: ``unlearnable.protect_directory`` (decode, the method's protection, per-file quality
    metrics, encode, atomic write, sha256, manifest) with the same workers; ``--method`` names
    the registered method (default: the tool's default method); ``--stack-version`` picks the
    ``photo`` stack's version (to compare versions in one session).

Datasets: the CIFAR-10 JPEG train split (50,000 files of 32x32; ``--data``, ``--limit``) and a
folder of large photos made by the benchmark (``--photos`` images of ``--photo-size``).
Floor and protect are interleaved (floor, protect, floor, protect, ...) for ``--rounds``
rounds, because the floor moves by tens of percent between runs on a shared machine (the file
system is flushed after each run, so no run pays for the write-back of another); the table
gives the median images/s of each and the median of the per-round ratios (protect / floor).

Every run writes into a fresh folder, and the outputs are removed only when the benchmark ends
(a CIFAR-10 run's output takes about 200 MB on disk: 2 GB for 5 rounds, 3 GB with
``--lean-floor``). Each round first times the creation of 300 small files in a fresh folder;
the table gives the median (``create us``). Why: this machine's root file system (ext4) skips
recently freed inodes when it allocates a new one (``recently_deleted`` in the kernel's inode
allocator, which as far as we know runs only without a journal), and after a folder of many
files was deleted a file creation cost 400-800 us instead of about 30-50, for about five
minutes (measured every 20 s after deleting 500,000 files; ``perf`` put most of protect's
system time there). Removing each output before the next run, as this benchmark did until
2026-11-22, made every run after the first pay that cost on each of its 50,000 files, and the
ratio reported it (0.72-0.86) instead of the work per file; the first round's floor, which ran
before any removal, was 2-3x faster than the others. So do not start the benchmark within a
few minutes of deleting many files on the same file system: a ``create us`` in the hundreds
says it was.

    python benchmarks/protect_throughput.py                 # everything, 3 rounds
    python benchmarks/protect_throughput.py --limit 5000 --photos 10 --rounds 5
    python benchmarks/protect_throughput.py --method cuda --skip-cifar --photos 8
    python benchmarks/protect_throughput.py --skip-cifar --stack-version 1   # the old stack
    python benchmarks/protect_throughput.py --skip-cifar --stack-version 1,2 # both, same rounds
    python benchmarks/protect_throughput.py --skip-cifar --metrics-version 2,3  # metrics versions

``--threads`` (default: ``$OMP_NUM_THREADS`` or 1) sets torch's threads in this process; the
workers always use one each. The table line gives the load average: on a shared machine the
ratio, not the images/s, is the figure to compare.

Worker start-up: the floor's workers import the tool's runner (and with it torch, about 1.5-3 s
of CPU each on this machine) before their first file, as protect's workers do, and then freeze
the garbage collector's view of it as they do (which makes their exit cheap), so the ratio
compares the per-file work. protect runs ``--workers`` lanes, this process being one of them
(:class:`unlearnable.io.executors.ProcessExecutor`), so it spawns one worker less than the
floor: that start-up it saves is part of its figure. That start-up is a large part of a short
run: on 40 photos it was about two thirds of the floor's time (floor 2.4 s, lean floor 0.9 s).
``--lean-floor`` also measures, in the same rounds, a floor whose workers import only Pillow
(what a plain decode + encode script costs) and adds the ratio against it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Only light imports at the top: spawned workers import this script again (see --lean-floor).
from _data import cifar10_root  # noqa: E402
from _floor import floor_chunk, tool_imports  # noqa: E402


def runner_chunks(source: Path, files: list[str], workers: int) -> list[list[str]]:
    """The files in the runner's chunks for ``workers`` lanes
    (:func:`unlearnable.io.runner.chunk_tasks`)."""
    from unlearnable.io.runner import chunk_tasks
    from unlearnable.io.work import Task

    tasks = [Task(path, 0, "") for path in files]
    return [[task.path for task in chunk] for chunk in chunk_tasks(source, tasks, workers)]


def io_floor(
    source: Path, target: Path, files: list[str], workers: int, lean: bool = False
) -> float:
    """Seconds to decode, re-encode and write ``files`` in ``workers`` processes (in the
    runner's chunks); the workers import the tool first unless ``lean``."""
    chunks = [(source, target, chunk) for chunk in runner_chunks(source, files, workers)]
    start = time.perf_counter()
    if min(workers, len(chunks)) == 1:  # as the runner: no pool for a single chunk
        for chunk in chunks:
            floor_chunk(chunk)
    else:
        with ProcessPoolExecutor(
            min(workers, len(chunks)),
            mp_context=get_context("spawn"),
            initializer=None if lean else tool_imports,
        ) as pool:
            list(pool.map(floor_chunk, chunks))
    return time.perf_counter() - start


class MetricsVariant(NamedTuple):
    """A method run with another metrics version than new runs use (``--metrics-version``)."""

    method: object
    metrics_version: int


def protect_time(source: Path, target: Path, workers: int, method: object) -> tuple[float, int]:
    from unlearnable import RunOptions, SecretKey, protect_directory
    from unlearnable.io import runner

    version = None
    if isinstance(method, MetricsVariant):
        method, version = method
    chosen = runner.resumed_metrics_version
    if version is not None:  # a fresh run measured with that version (benchmark only)
        runner.resumed_metrics_version = lambda *_: version
    start = time.perf_counter()
    try:
        run = protect_directory(
            source, target, SecretKey(bytes(32)), method, RunOptions(workers=workers)
        )
    finally:
        runner.resumed_metrics_version = chosen
    seconds = time.perf_counter() - start
    assert version is None or run.manifest.extra["metrics_version"] == version
    assert not run.failed, run.failed[:3]
    return seconds, len(run.succeeded)


def subset(root: Path, limit: int | None, scratch: Path) -> Path:
    """``root`` itself, or a folder of symlinks to its first ``limit`` files (per sorted order)."""
    from unlearnable.io.discover import discover_images

    if limit is None:
        return root
    files = discover_images(root).files[:limit]
    folder = scratch / "subset"
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).symlink_to(root / rel)
    return folder


def make_photos(folder: Path, count: int, width: int, height: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        base = (np.sin(xx / rng.uniform(20, 200)) + np.cos(yy / rng.uniform(20, 200))) * 60 + 128
        pixels = np.stack([base + rng.uniform(-40, 40) for _ in range(3)], axis=-1)
        pixels += rng.normal(0, 6, pixels.shape)
        (folder / "photos").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / "photos" / f"photo{i:03d}.jpg", quality=90
        )
    return folder


def _settle() -> None:
    """Flush the file system after a timed run, so that the next run does not pay for this
    one's write-back (50,000 small files take seconds to flush). The run's output is kept
    until the benchmark ends (see the module docstring: deleting it here would slow the next
    run's file creation)."""
    os.sync()


def creation_cost(folder: Path, count: int = 300) -> float:
    """Microseconds to create, write (1.5 KB) and close one file in a fresh ``folder`` (kept
    until the benchmark ends): the file system's state that both runs of a round pay for every
    output (see the module docstring)."""
    folder.mkdir(parents=True)
    data = b"\0" * 1536
    start = time.perf_counter()
    for index in range(count):
        (folder / f"{index}.bin").write_bytes(data)
    return (time.perf_counter() - start) / count * 1e6


def measure(
    name: str,
    source: Path,
    workers: int,
    scratch: Path,
    rounds: int,
    methods: list[tuple[str, object]],
    lean: bool = False,
) -> list[dict]:
    """Interleaved rounds (floor, the lean floor when ``lean``, then each ``(label,
    method)``); per method the medians of images/s and of the per-round ratio against the same
    round's floor (and lean floor)."""
    from unlearnable.io.discover import discover_images

    files = discover_images(source).files
    runs = scratch / f"{name}-runs"  # one fresh folder per timed run, removed at the end
    floors: list[float] = []
    lean_floors: list[float] = []
    protects: dict[str, list[float]] = {label: [] for label, _ in methods}
    ratios: dict[str, list[float]] = {label: [] for label, _ in methods}
    lean_ratios: dict[str, list[float]] = {label: [] for label, _ in methods}
    seconds: dict[str, list[float]] = {label: [] for label, _ in methods}
    creation: list[float] = []
    for index in range(rounds):
        creation.append(creation_cost(runs / f"probe-{index}"))
        floor_s = io_floor(source, runs / f"floor-{index}", files, workers)
        _settle()
        floors.append(len(files) / floor_s)
        line = (
            f"{name} round {index + 1}/{rounds}: file creation {creation[-1]:.0f} us, "
            f"floor {floors[-1]:.1f} img/s ({floor_s:.1f} s)"
        )
        if lean:
            lean_s = io_floor(source, runs / f"lean-{index}", files, workers, lean=True)
            _settle()
            lean_floors.append(len(files) / lean_s)
            line += f", lean floor {lean_floors[-1]:.1f} img/s ({lean_s:.1f} s)"
        for number, (label, method) in enumerate(methods):
            target = runs / f"protect-{number}-{index}"
            protect_s, done = protect_time(source, target, workers, method)
            _settle()
            protects[label].append(done / protect_s)
            ratios[label].append(protects[label][-1] / floors[-1])
            if lean:
                lean_ratios[label].append(protects[label][-1] / lean_floors[-1])
            seconds[label].append(protect_s)
            line += (
                f", {label} {protects[label][-1]:.1f} img/s ({protect_s:.1f} s) "
                f"ratio {ratios[label][-1]:.2f}"
            )
        print(line, flush=True)
    return [
        {
            "name": name if len(methods) == 1 else f"{name} [{label}]",
            "files": len(files),
            "floor": statistics.median(floors),
            "protect": statistics.median(protects[label]),
            "ratio": statistics.median(ratios[label]),
            "ratio_range": (min(ratios[label]), max(ratios[label])),
            "protect_s": statistics.median(seconds[label]),
            "lean_floor": statistics.median(lean_floors) if lean else None,
            "lean_ratio": statistics.median(lean_ratios[label]) if lean else None,
            "creation_us": statistics.median(creation),
        }
        for label, _ in methods
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/ inside) or its .tar.gz")
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training files"
    )
    parser.add_argument("--photos", type=int, default=40, help="number of large photos (0: skip)")
    parser.add_argument("--photo-size", default="3000x2000", help="WIDTHxHEIGHT of the photos")
    parser.add_argument("--workers", type=int, default=None, help="default: the tool's default")
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--method", default=None, help="registered method (default: the tool's default method)"
    )
    parser.add_argument(
        "--lean-floor",
        action="store_true",
        help="also measure a floor whose workers import only Pillow, and the ratio against it",
    )
    parser.add_argument(
        "--stack-version",
        default=None,
        help="photo: the stack version, or several (1,2) measured in the same rounds "
        "(default: the newest)",
    )
    parser.add_argument(
        "--metrics-version",
        default=None,
        help="the metrics version of the runs (default: the newest), or several (2,3) measured "
        "in the same rounds",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", "1")),
        help="torch threads of this process (the workers use one each)",
    )
    args = parser.parse_args()
    import torch

    from unlearnable.io.executors import default_workers
    from unlearnable.protect.api import DEFAULT_METHOD

    if args.workers is None:
        args.workers = default_workers()

    torch.set_num_threads(args.threads)
    args.method = args.method or DEFAULT_METHOD
    methods: list[tuple[str, object]] = [(args.method, args.method)]
    if args.stack_version is not None:
        if args.method != "photo":
            parser.error("--stack-version is a photo option")
        from unlearnable.protect.photo_method import PhotoConfig

        versions = [int(v) for v in args.stack_version.split(",")]
        methods = [(f"photo v{v}", PhotoConfig(stack_version=v)) for v in versions]
    if args.metrics_version is not None:
        methods = [
            (f"{name} m{v}", MetricsVariant(method, int(v)))
            for name, method in methods
            for v in args.metrics_version.split(",")
        ]
    label = ", ".join(name for name, _ in methods)
    width, height = map(int, args.photo_size.lower().split("x"))

    rows = []
    with tempfile.TemporaryDirectory(prefix="unlearnable-bench-") as tmp:
        scratch = Path(tmp)
        if not args.skip_cifar:
            train = cifar10_root(args.data) / "train"
            source = subset(train, args.limit, scratch)
            rows += measure(
                "cifar10-train-jpeg",
                source,
                args.workers,
                scratch,
                args.rounds,
                methods,
                args.lean_floor,
            )
        if args.photos:
            photos = make_photos(scratch / "photos-src", args.photos, width, height)
            name = f"photos-{args.photo_size}-jpeg"
            rows += measure(
                name, photos, args.workers, scratch, args.rounds, methods, args.lean_floor
            )

    print(
        f"\nprotect throughput, method {label}, workers={args.workers}, "
        f"cpu cores={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
        f"median of {args.rounds} interleaved rounds"
    )
    lean = f"{'lean floor':>12}{'lean ratio':>12}" if args.lean_floor else ""
    print(
        f"{'dataset':<40}{'files':>8}{'floor img/s':>13}{'protect img/s':>15}{'ratio':>8}"
        f"{'ratio range':>14}{'protect s':>11}{'create us':>11}{lean}"
    )
    for row in rows:
        low, high = row["ratio_range"]
        extra = ""
        if args.lean_floor:
            extra = f"{row['lean_floor']:>12.1f}{row['lean_ratio']:>12.2f}"
        print(
            f"{row['name']:<40}{row['files']:>8}{row['floor']:>13.1f}{row['protect']:>15.1f}"
            f"{row['ratio']:>8.2f}{f'{low:.2f}-{high:.2f}':>14}{row['protect_s']:>11.1f}"
            f"{row['creation_us']:>11.0f}{extra}"
        )


if __name__ == "__main__":
    main()
