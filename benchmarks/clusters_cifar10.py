"""Label-agnostic protection on CIFAR-10: Unlearnable Clusters and CUDA on surrogate clusters.

The owner has no labels: both methods cluster the images with a surrogate (K=10 clusters, not the
true classes) and protect through ``unlearnable.protect_directory``:

* ``uc``: one learned perturbation per cluster (L-inf ``--eps``/255, ``--uc-steps`` steps);
* ``cuda-clusters``: CUDA's blur filters with the clusters as classes.

The scraper then trains (ERM, the ``quick`` budget: small-cnn, cosine, ``--epochs``) with its own
labels, never the clusters: the true 10 classes (``hacker_labels="folders"``) and a coarse 2-class
labelling (animal vs vehicle, from a mapping CSV). Each row compares with a clean victim trained
the same way (same seed and data order) and gives peak/last test accuracy and the PER.

Surrogate. No pretrained CLIP weights can be downloaded here, so by default the surrogate is
*self-trained*: a small CNN trained for ``--surrogate-epochs`` on ``--surrogate-per-class``
CIFAR-10 training images per class that are disjoint from the protected subset (the last files of
each class; the protected subset is the first ones), with their CIFAR-10 labels. That surrogate
knows the 10-class label space, a favourable case for UC (an ImageNet or CLIP surrogate also knows
these concepts); the table reports the NMI between its clusters and each labelling so the reader
can judge. ``--surrogate SPEC`` uses any ``load_surrogate`` spec instead (e.g. ``RN50:openai``,
``tv:resnet50`` when the weights are available, or ``random``).

    python benchmarks/clusters_cifar10.py                       # defaults, ~20 min on 2 cores
    python benchmarks/clusters_cifar10.py --per-class 50 --test-per-class 50 --epochs 3  # smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cifar_subset import coarse_label_csv, link_subset  # noqa: E402
from _data import cifar10_root  # noqa: E402

from unlearnable import (  # noqa: E402
    ClusterCudaConfig,
    OutputOptions,
    RunOptions,
    SecretKey,
    Surrogate,
    UCConfig,
    UCMethodConfig,
    load_surrogate,
    protect_directory,
    surrogate_from_module,
)
from unlearnable.attacks.training import TrainConfig, get_budget, train_classifier  # noqa: E402
from unlearnable.datasets import read_label_csv  # noqa: E402
from unlearnable.models import build_victim  # noqa: E402
from unlearnable.protect import normalized_mutual_info  # noqa: E402
from unlearnable.protect.surrogate import WeakSurrogateWarning  # noqa: E402
from unlearnable.verify import VerifyData, run_verification  # noqa: E402
from unlearnable.verify_inputs import LoadedFolders, load_verify_folders  # noqa: E402

KEY = SecretKey(bytes(range(32)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/, test/) or its .tar.gz")
    parser.add_argument("--per-class", type=int, default=200, help="protected train images/class")
    parser.add_argument("--test-per-class", type=int, default=200, help="test images per class")
    parser.add_argument("--clusters", type=int, default=10, help="K (not the true classes)")
    parser.add_argument("--eps", type=float, default=16.0, help="UC budget in 1/255 units")
    parser.add_argument("--uc-steps", type=int, default=100, help="UC optimisation steps")
    parser.add_argument(
        "--surrogate", default=None, help="load_surrogate spec (default: self-trained)"
    )
    parser.add_argument(
        "--surrogate-per-class", type=int, default=300, help="self-trained surrogate: images/class"
    )
    parser.add_argument(
        "--surrogate-epochs", type=int, default=10, help="self-trained surrogate: epochs"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="victim epochs (default: the quick budget's)"
    )
    parser.add_argument(
        "--methods", default="uc,cuda-clusters", help="comma-separated: uc, cuda-clusters"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="surrogate device")
    return parser.parse_args()


# --------------------------------------------------------------------------- surrogate


def load_images(files: list[Path]) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` from image files of one size."""
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def disjoint_split(
    split_dir: Path, per_class: int, protected_per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The *last* ``per_class`` files of every class (the protected subset uses the first ones)."""
    files, labels = [], []
    for index, class_dir in enumerate(sorted(p for p in split_dir.iterdir() if p.is_dir())):
        names = sorted(class_dir.iterdir())
        if per_class + protected_per_class > len(names):
            raise SystemExit(
                f"{class_dir.name}: {len(names)} images cannot hold {protected_per_class} protected "
                f"+ {per_class} surrogate images without overlap"
            )
        chosen = names[len(names) - per_class :]
        files += chosen
        labels += [index] * len(chosen)
    return load_images(files), torch.tensor(labels)


def self_trained_surrogate(
    args: argparse.Namespace, root: Path, test: tuple[torch.Tensor, torch.Tensor]
):
    """A small CNN trained on disjoint CIFAR-10 train images; returns (surrogate, description)."""
    images, labels = disjoint_split(root / "train", args.surrogate_per_class, args.per_class)
    model = build_victim("small-cnn", 10, 32, seed=args.seed + 1000)
    config = TrainConfig(epochs=args.surrogate_epochs, batch_size=128, schedule="cosine")
    started = time.perf_counter()
    history = train_classifier(
        model, images, labels, test[0], test[1], config, seed=args.seed + 1000
    )
    seconds = time.perf_counter() - started
    surrogate = surrogate_from_module(model, name="self-trained small-cnn", input_size=32)
    description = (
        f"self-trained small-cnn: {len(images)} CIFAR-10 train images disjoint from the protected "
        f"subset, their 10 labels, {args.surrogate_epochs} epochs, {seconds:.0f} s; "
        f"test acc {100 * history.last_test_acc:.1f}%; 256-d penultimate features"
    )
    return surrogate, description


# --------------------------------------------------------------------------- protect + verify


@dataclass
class Protected:
    method: str
    folder: Path
    seconds: float
    images_per_second: float | None
    clusters: dict[str, int]


def protect(method: str, train: Path, target: Path, surrogate: Surrogate | str, args) -> Protected:
    started = time.perf_counter()
    if method == "uc":
        uc = UCConfig(eps=args.eps / 255, steps=args.uc_steps)
        config = UCMethodConfig(surrogate=surrogate, clusters=args.clusters, uc=uc)
    else:
        config = ClusterCudaConfig(surrogate=surrogate, clusters=args.clusters)
    run_options = RunOptions(
        output=OutputOptions(format="png"),  # lossless: JPEG re-encoding would weaken both
        device=args.device if isinstance(surrogate, str) else None,
        threads=args.threads,
    )
    run = protect_directory(train, target, KEY, config, run_options)
    seconds = time.perf_counter() - started
    if run.failed:
        raise SystemExit(f"{method}: protect failed for {len(run.failed)} files")
    clustering = run.manifest.extra["clustering"]
    clusters = {r.path: int(r.cluster) for r in run.manifest.files if r.cluster is not None}
    return Protected(method, target, seconds, clustering["feature_images_per_second"], clusters)


def coarse_view(loaded: LoadedFolders, mapping_csv: Path) -> VerifyData:
    """The 10-class scraper data relabelled through ``mapping_csv`` (true class -> coarse).

    ``--hacker-labels CSV`` maps the *owner's* labels, which are clusters here, so the coarse
    labelling of the true classes is applied to the folder labels instead.
    """
    data = loaded.data
    fine_names = sorted({path.split("/", 1)[0] for path in loaded.train_files})
    mapping = read_label_csv(mapping_csv)
    coarse_names = sorted(set(mapping.values()))
    lookup = torch.tensor([coarse_names.index(mapping[name]) for name in fine_names])
    assert data.scraper_labels is not None
    return replace(
        data, scraper_labels=lookup[data.scraper_labels], test_labels=lookup[data.test_labels]
    )


@dataclass
class Row:
    method: str
    surrogate: str
    scraper: str
    entry: dict
    protect_seconds: float
    images_per_second: float | None
    nmi: float
    seconds: float


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", WeakSurrogateWarning)
    root = cifar10_root(args.data)
    budget = get_budget("quick")
    config = budget.config if args.epochs is None else replace(budget.config, epochs=args.epochs)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows: list[Row] = []
    total_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unlearnable-uc-bench-") as tmp:
        scratch = Path(tmp)
        train = link_subset(root / "train", scratch / "train", args.per_class)
        test = link_subset(root / "test", scratch / "test", args.test_per_class)
        mapping = coarse_label_csv(scratch / "coarse.csv")
        if args.surrogate is None:
            test_files = sorted(test.rglob("*.jpg"))
            test_tensors = (
                load_images(test_files),
                torch.tensor(
                    [
                        sorted(p.name for p in test.iterdir()).index(f.parent.name)
                        for f in test_files
                    ]
                ),
            )
            surrogate, surrogate_text = self_trained_surrogate(args, root, test_tensors)
            surrogate_label = "self-trained small-cnn"
        else:
            surrogate = load_surrogate(args.surrogate, args.device)
            surrogate_text = f"{args.surrogate} ({surrogate.name})"
            surrogate_label = args.surrogate
        print(f"surrogate: {surrogate_text}", flush=True)
        fine_of = {}
        for path in (p.relative_to(train).as_posix() for p in train.rglob("*.jpg")):
            fine_of[path] = path.split("/", 1)[0]
        coarse_map = read_label_csv(mapping)
        for method in methods:
            done = protect(method, train, scratch / method, surrogate, args)
            paths = sorted(done.clusters)
            assignments = [done.clusters[p] for p in paths]
            nmi_fine = normalized_mutual_info(assignments, [fine_of[p] for p in paths])
            nmi_coarse = normalized_mutual_info(
                assignments, [coarse_map[fine_of[p]] for p in paths]
            )
            rate = f"{done.images_per_second:.0f} images/s" if done.images_per_second else "cached"
            print(
                f"protected with {method} in {done.seconds:.1f} s (features {rate}); "
                f"NMI clusters vs 10 classes {nmi_fine:.3f}, vs animal/vehicle {nmi_coarse:.3f}",
                flush=True,
            )
            loaded = load_verify_folders(done.folder, train, test, hacker_labels="folders")
            views = [
                ("10 classes (folders)", loaded.data, nmi_fine),
                ("animal/vehicle (CSV)", coarse_view(loaded, mapping), nmi_coarse),
            ]
            for scraper, data, nmi in views:
                started = time.perf_counter()
                result = run_verification(data, ["erm"], budget.model, config, [args.seed])
                seconds = time.perf_counter() - started
                entry = result.to_json()["attacks"][0]
                rows.append(
                    Row(
                        method,
                        surrogate_label,
                        scraper,
                        entry,
                        done.seconds,
                        done.images_per_second,
                        nmi,
                        seconds,
                    )
                )
                print(
                    f"  {scraper}: clean {100 * entry['clean']['peak_mean']:.1f}% protected "
                    f"{100 * entry['protected']['peak_mean']:.1f}% (peak) in {seconds:.0f} s",
                    flush=True,
                )
    print_table(
        args, config, budget.model, surrogate_text, rows, time.perf_counter() - total_started
    )


def print_table(
    args, config: TrainConfig, model: str, surrogate_text: str, rows: list[Row], total: float
) -> None:
    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    def score(value) -> str:
        return f"{value:.2f}" if value is not None else "-"

    header = (
        "method",
        "surrogate",
        "scraper labels",
        "clean acc % peak/last",
        "protected acc % peak/last",
        "PER peak/last",
        "protect s",
        "features img/s",
        "NMI",
    )
    table = [header]
    for row in rows:
        clean, protected = row.entry["clean"], row.entry["protected"]
        table.append(
            (
                row.method,
                row.surrogate,
                row.scraper,
                f"{pct(clean['peak_mean'])} / {pct(clean['last_mean'])}",
                f"{pct(protected['peak_mean'])} / {pct(protected['last_mean'])}",
                f"{score(row.entry['per_peak'])} / {score(row.entry['per_last'])}",
                f"{row.protect_seconds:.1f}",
                f"{row.images_per_second:.0f}" if row.images_per_second else "cached",
                f"{row.nmi:.3f}",
            )
        )
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    print()
    print(
        f"Label-agnostic protection, CIFAR-10: {args.per_class}/class protected train, "
        f"{args.test_per_class}/class test, K={args.clusters} clusters (the owner has no labels)"
    )
    for index, line in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    chance = {row.scraper: row.entry["chance"] for row in rows}
    print(f"surrogate: {surrogate_text}")
    print(
        f"victims: ERM, {model}, {config.epochs} epochs, batch {config.batch_size}, lr {config.lr} "
        f"{config.schedule}, crop+flip, seed {args.seed}; chance "
        + ", ".join(f"{name} {100 * value:.1f}%" for name, value in chance.items())
    )
    print(
        f"UC: eps {args.eps:g}/255, {args.uc_steps} steps; CUDA: strength mid; outputs PNG; "
        f"NMI = clusters vs the row's scraper labels; total {total / 60:.1f} min"
    )
    for row in rows:
        for note in row.entry.get("notes", []):
            print(f"note ({row.method}, {row.scraper}): {note}")


if __name__ == "__main__":
    main()
