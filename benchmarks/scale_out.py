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

With ``--uc K``, also Unlearnable Clusters (K clusters, ``--uc-surrogate``, default the offline
``random`` one, ``--uc-steps``) on the shards and the Parquet files: the local engine (features
on the driver) against the Ray engine (features on actors that hold the surrogate once), total
images/s, the feature pass's images/s, and whether both give the same clusters and images.

    OMP_NUM_THREADS=1 python benchmarks/scale_out.py --limit 4000 --workers 2 --threads 1
    OMP_NUM_THREADS=1 python benchmarks/scale_out.py --limit 2000 --workers 2 --threads 1 \
        --uc 10 --skip-engines --skip-two-nodes

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


def timed(
    source: Path, target: Path, run: ul.RunOptions, method: object = "cuda"
) -> tuple[float, ul.ProtectRun]:
    start = time.perf_counter()
    result = ul.protect_dataset(source, target, KEY, method, run)
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


def compare_uc(packed: dict[str, Path], workers: int, method: object, scratch: Path) -> list[dict]:
    """UC on the shards and Parquet files: the local engine against the Ray engine (cold: with
    ``ray.init``), one torch thread for the surrogate work on both sides."""
    import warnings

    import ray

    from unlearnable.protect.surrogate import WeakSurrogateWarning

    rows = []
    for kind in ("webdataset", "parquet"):
        if kind not in packed:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WeakSurrogateWarning)
            local_s, local = timed(
                packed[kind],
                scratch / "uc-local",
                ul.RunOptions(workers=workers, threads=1),
                method,
            )
            start = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            engine = ul.RunOptions(executor=ul.RayExecutor(workers=workers), threads=1)
            _, remote = timed(packed[kind], scratch / "uc-ray", engine, method)
            ray_s = time.perf_counter() - start
            ray.shutdown()
        info = {
            "local": local.manifest.extra["clustering"],
            "ray": remote.manifest.extra["clustering"],
        }
        images = len(local.succeeded)
        rows.append(
            {
                "input": kind,
                "images": images,
                "local": images / local_s,
                "ray": images / ray_s,
                "local_features": info["local"]["feature_images_per_second"],
                "ray_features": info["ray"]["feature_images_per_second"],
                "optimise_s": info["local"]["uc"]["optimise_seconds"],
                "identical": outputs(local) == outputs(remote)
                and info["local"]["assignments_sha256"] == info["ray"]["assignments_sha256"],
            }
        )
        print(
            f"uc {kind}: local {rows[-1]['local']:.1f} img/s, ray {rows[-1]['ray']:.1f}", flush=True
        )
        for name in ("uc-local", "uc-ray"):
            shutil.rmtree(scratch / name)
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


def _print_engines(rows: list[dict], args: argparse.Namespace) -> None:
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
    parser.add_argument("--skip-engines", action="store_true", help="no CUDA engine comparison")
    parser.add_argument("--uc", type=int, default=0, metavar="K", help="also UC with K clusters")
    parser.add_argument("--uc-surrogate", default="random")
    parser.add_argument("--uc-steps", type=int, default=20)
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
        rows = (
            [] if args.skip_engines else compare_engines(packed, args.workers, args.rounds, scratch)
        )
        uc_rows = []
        if args.uc:
            method = ul.UCMethodConfig(
                surrogate=args.uc_surrogate, clusters=args.uc, uc=ul.UCConfig(steps=args.uc_steps)
            )
            uc_rows = compare_uc(packed, args.workers, method, scratch)
        cluster = (
            None if args.skip_two_nodes else two_nodes(packed["webdataset"], args.workers, scratch)
        )

    if rows:
        _print_engines(rows, args)
    if uc_rows:
        print(
            f"\nUnlearnable Clusters on records: K={args.uc}, surrogate {args.uc_surrogate}, "
            f"{args.uc_steps} steps, workers={args.workers}, one torch thread for the surrogate; "
            f"load average {os.getloadavg()[0]:.1f}; ray: ray.init + the run; features: the "
            "feature pass alone (driver / actors)"
        )
        print(
            f"{'input':<12}{'images':>8}{'local img/s':>13}{'ray img/s':>11}{'ray/local':>11}"
            f"{'features local':>16}{'features ray':>14}{'optimise s':>12}{'same outputs':>14}"
        )
        for row in uc_rows:
            print(
                f"{row['input']:<12}{row['images']:>8}{row['local']:>13.1f}{row['ray']:>11.1f}"
                f"{row['ray'] / row['local']:>11.2f}{row['local_features'] or 0:>16.1f}"
                f"{row['ray_features'] or 0:>14.1f}{row['optimise_s']:>12.1f}"
                f"{'yes' if row['identical'] else 'NO':>14}"
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
