"""Scale-out: the local engine against the Ray engine, for folders, WebDataset shards and Parquet.

On the CIFAR-10 JPEG train split (``--data``, ``--limit``; 50,000 files of 32x32 by default),
packed three ways (a folder of JPEG files; WebDataset shards of ``--shard-size`` samples with a
``.cls`` label; Parquet files of ``--shard-size`` rows with an image struct and a label column),
``unlearnable.protect_dataset`` with CUDA runs on

* the local engine (a process pool of ``--workers`` processes), and
* the Ray engine (a local Ray instance with ``--workers`` CPUs) cold (``ray.init`` and the run,
  as ``--engine ray`` runs) and warm (a second run on the same instance, workers started),

in interleaved rounds (median images/s), checking that every run wrote the same images (output
hashes in the manifests, across engines and packings);

then a two-node run on this machine (``ray.cluster_utils.Cluster``: a head and one worker node,
``--workers`` CPUs in all), counting the containers each node protected.

    OMP_NUM_THREADS=1 python benchmarks/scale_out.py --limit 4000 --workers 2 --threads 1

Numbers on a shared 2-core machine are indicative only; run on a quiet machine for claims.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cifar10_root  # noqa: E402

import unlearnable as ul  # noqa: E402
from unlearnable.io.discover import discover_images  # noqa: E402
from unlearnable.io.executors import default_workers  # noqa: E402
from unlearnable.io.formats.webdataset import write_shard  # noqa: E402

KEY = ul.SecretKey(bytes(range(32)))


def pack(train: Path, limit: int | None, shard_size: int, scratch: Path) -> dict[str, Path]:
    """The first ``limit`` files as a folder (symlinks), shards and Parquet files."""
    files = discover_images(train).files[:limit]
    folder, shards, parquet = scratch / "folder", scratch / "shards", scratch / "parquet"
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).symlink_to(train / rel)
    shards.mkdir()
    parquet.mkdir()
    order = sorted(files, key=lambda rel: (rel.split("/")[-1], rel))  # classes interleaved
    for number, start in enumerate(range(0, len(order), shard_size)):
        chunk = order[start : start + shard_size]
        data = [(train / rel).read_bytes() for rel in chunk]
        labels = [rel.split("/", 1)[0] for rel in chunk]
        keys = [rel.replace("/", "_").rsplit(".", 1)[0] for rel in chunk]
        samples = [{"jpg": d, "cls": lab.encode()} for d, lab in zip(data, labels, strict=True)]
        (shards / f"train-{number:05d}.tar").write_bytes(write_shard(samples, keys))
        try:
            from unlearnable.io.formats.parquet import write_parquet

            table = {
                "image": [{"bytes": d, "path": rel} for d, rel in zip(data, chunk, strict=True)],
                "label": labels,
            }
            (parquet / f"train-{number:05d}.parquet").write_bytes(write_parquet(table))
        except ul.UsageError:
            pass  # no pyarrow: the Parquet rows are left out
    packed = {"folder": folder, "webdataset": shards}
    if any(parquet.iterdir()):
        packed["parquet"] = parquet
    return packed


def timed(source: Path, target: Path, run: ul.RunOptions) -> tuple[float, ul.ProtectRun]:
    start = time.perf_counter()
    result = ul.protect_dataset(source, target, KEY, "cuda", run)
    seconds = time.perf_counter() - start
    assert not result.failed, result.failed[:3]
    return seconds, result


def outputs(run: ul.ProtectRun) -> list[str | None]:
    """Output hashes in input order (by input hash: the formats name records differently)."""
    return [r.output_sha256 for r in sorted(run.manifest.files, key=lambda r: r.input_sha256 or "")]


def compare_engines(
    packed: dict[str, Path], workers: int, rounds: int, scratch: Path
) -> list[dict]:
    """Per input kind and round: the local engine (a fresh process pool, as the CLI runs it),
    the Ray engine cold (``ray.init`` + the run, as the CLI runs it) and warm (a second run on
    the same Ray instance, its workers already started)."""
    import ray

    rows = []
    reference: list[str | None] | None = None
    for kind, source in packed.items():
        rates: dict[str, list[float]] = {"local": [], "ray_cold": [], "ray_warm": []}
        identical = True
        for index in range(rounds):
            local_s, local = timed(source, scratch / "local", ul.RunOptions(workers=workers))
            start = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            init_s = time.perf_counter() - start
            engine = ul.RunOptions(executor=ul.RayExecutor(workers=workers))
            cold_s, cold = timed(source, scratch / "ray-cold", engine)
            warm_s, warm = timed(source, scratch / "ray-warm", engine)
            ray.shutdown()
            images = len(local.succeeded)
            reference = reference or outputs(local)
            identical &= outputs(local) == outputs(cold) == outputs(warm) == reference
            rates["local"].append(images / local_s)
            rates["ray_cold"].append(images / (init_s + cold_s))
            rates["ray_warm"].append(images / warm_s)
            print(
                f"{kind} round {index + 1}/{rounds}: local {rates['local'][-1]:.1f} img/s, "
                f"ray cold {rates['ray_cold'][-1]:.1f} (ray.init {init_s:.1f} s), "
                f"ray warm {rates['ray_warm'][-1]:.1f}",
                flush=True,
            )
            for name in ("local", "ray-cold", "ray-warm"):
                shutil.rmtree(scratch / name)
        row = {"input": kind, "images": images, "identical": identical}
        row.update({name: statistics.median(values) for name, values in rates.items()})
        rows.append(row)
    return rows


def _count_node(context, item):
    """The record runner's work function, also saying which Ray node ran it."""
    import ray

    from unlearnable.io.formats.run import process_container

    return ray.get_runtime_context().get_node_id(), process_container(context, item)


def two_nodes(shards: Path, workers: int, scratch: Path) -> dict:
    """Protect the shards on a two-node Ray cluster on this machine; containers per node."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    head_cpus = max(1, workers // 2)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
    cluster.add_node(num_cpus=max(1, workers - head_cpus))
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    nodes: Counter[str] = Counter()

    class _Counting(ul.RayExecutor):
        def run(self, function, context, items, lost):
            for node, result in super().run(
                _count_node, context, items, lambda i, m: ("lost", lost(i, m))
            ):
                nodes[node] += 1
                yield result

    try:
        seconds, result = timed(shards, scratch / "two-nodes", ul.RunOptions(executor=_Counting()))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"images": len(result.succeeded), "seconds": seconds, "nodes": dict(nodes)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/ inside) or its .tar.gz")
    parser.add_argument("--limit", type=int, default=None, help="only the first N training files")
    parser.add_argument(
        "--shard-size", type=int, default=500, help="samples per shard / Parquet file"
    )
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument("--skip-two-nodes", action="store_true")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    train = cifar10_root(args.data) / "train"
    with tempfile.TemporaryDirectory(prefix="unlearnable-scale-") as tmp:
        scratch = Path(tmp)
        start = time.perf_counter()
        packed = pack(train, args.limit, args.shard_size, scratch)
        print(f"packed in {time.perf_counter() - start:.1f} s", flush=True)
        rows = compare_engines(packed, args.workers, args.rounds, scratch)
        cluster = (
            None if args.skip_two_nodes else two_nodes(packed["webdataset"], args.workers, scratch)
        )

    print(
        f"\nscale-out, CUDA, workers={args.workers}, cpu cores={os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f}, median of {args.rounds} round(s); cold: a fresh "
        "pool / ray.init + the run (as the CLI), warm: the Ray workers already started"
    )
    print(
        f"{'input':<12}{'images':>8}{'local img/s':>13}{'ray cold':>10}{'ray warm':>10}"
        f"{'cold/local':>12}{'warm/local':>12}{'same outputs':>14}"
    )
    for row in rows:
        print(
            f"{row['input']:<12}{row['images']:>8}{row['local']:>13.1f}{row['ray_cold']:>10.1f}"
            f"{row['ray_warm']:>10.1f}{row['ray_cold'] / row['local']:>12.2f}"
            f"{row['ray_warm'] / row['local']:>12.2f}{'yes' if row['identical'] else 'NO':>14}"
        )
    if cluster is not None:
        spread = ", ".join(
            f"node {node[:8]}: {count}" for node, count in sorted(cluster["nodes"].items())
        )
        print(
            f"\ntwo-node Ray cluster on this machine: {cluster['images']} images in "
            f"{cluster['seconds']:.1f} s ({cluster['images'] / cluster['seconds']:.1f} img/s); "
            f"shards per node: {spread}"
        )


if __name__ == "__main__":
    main()
