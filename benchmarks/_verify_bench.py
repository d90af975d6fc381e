"""Shared by the CIFAR-10 verification benchmarks: protect a subset (``--method``), run attacks, print."""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from _cifar_subset import link_subset
from _data import cifar10_root

from unlearnable import (
    CudaConfig,
    OutputOptions,
    PhotoConfig,
    RunOptions,
    SecretKey,
    protect_directory,
)
from unlearnable.attacks.base import make_attack
from unlearnable.attacks.training import TrainConfig
from unlearnable.verify import run_verification
from unlearnable.verify_inputs import load_verify_folders

_METHODS = {"cuda": CudaConfig, "photo": PhotoConfig}


def add_arguments(parser: argparse.ArgumentParser, epochs: int, at_epochs: int, attacks: str) -> None:
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/, test/) or its .tar.gz")
    parser.add_argument("--per-class", type=int, default=500, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=None, help="default: the full test split")
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--epochs", type=int, default=epochs, help="epochs of every non-AT attack")
    parser.add_argument("--at-epochs", type=int, default=at_epochs, help="epochs of adversarial training")
    parser.add_argument("--pgd-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--strength", default="mid", help="strength preset (low, mid, high)")
    parser.add_argument("--method", default="cuda", choices=("cuda", "photo"), help="protection method")
    parser.add_argument("--attacks", default=attacks, help="comma-separated attack and suite names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=None, help="also write a verify run folder per attack")


@dataclass
class Row:
    attack: str
    epochs: int
    entry: dict
    seconds: float


def run(args: argparse.Namespace, attack_names: list[str]) -> tuple[list[Row], float]:
    """Protect the subset with ``args.method``, then verify every attack; returns rows and protect seconds."""
    torch.set_num_threads(args.threads)
    root = cifar10_root(args.data)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="unlearnable-bench-") as tmp:
        scratch = Path(tmp)
        train = link_subset(root / "train", scratch / "train", args.per_class)
        test = link_subset(root / "test", scratch / "test", args.test_per_class)
        started = time.perf_counter()
        protected = protect_directory(train, scratch / "protected", SecretKey(bytes(32)),
                                      _METHODS[args.method](labels="folders", strength=args.strength),
                                      RunOptions(output=OutputOptions(format="png")))
        protect_seconds = time.perf_counter() - started
        if protected.failed:
            raise SystemExit(f"protect failed for {len(protected.failed)} files")
        loaded = load_verify_folders(scratch / "protected", train, test)
        base = TrainConfig(batch_size=args.batch_size, lr=args.lr, schedule="cosine")
        for name in attack_names:
            adversarial = name.startswith("at-")
            config = replace(base, epochs=args.at_epochs if adversarial else args.epochs)
            attack = make_attack(name, steps=args.pgd_steps) if adversarial else make_attack(name)
            started = time.perf_counter()
            result = run_verification(loaded.data, [attack], args.model, config, [args.seed])
            seconds = time.perf_counter() - started
            if args.run_dir is not None:
                from unlearnable.report import write_run_folder

                write_run_folder(result, args.run_dir / name)
            rows.append(Row(name, config.epochs, result.to_json()["attacks"][0], seconds))
            entry = rows[-1].entry
            print(f"done {name}: clean {100 * entry['clean']['peak_mean']:.1f}% "
                  f"protected {100 * entry['protected']['peak_mean']:.1f}% in {seconds:.0f} s", flush=True)
    return rows, protect_seconds


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"{'attack':<15}{'epochs':>7}{'clean peak':>12}{'clean last':>12}{'prot. peak':>11}{'prot. last':>11}"
          f"{'PER peak':>10}{'PER last':>10}{'seconds':>9}")
    for row in rows:
        clean, protected = row.entry["clean"], row.entry["protected"]

        def score(value):
            return f"{value:>10.2f}" if value is not None else f"{'-':>10}"

        print(f"{row.attack:<15}{row.epochs:>7}{100 * clean['peak_mean']:>11.2f}%{100 * clean['last_mean']:>11.2f}%"
              f"{100 * protected['peak_mean']:>10.2f}%{100 * protected['last_mean']:>10.2f}%"
              f"{score(row.entry['per_peak'])}{score(row.entry['per_last'])}{row.seconds:>9.0f}")
    scored = [r for r in rows if r.entry["per_peak"] is not None]
    if scored:
        worst = min(scored, key=lambda r: r.entry["per_peak"])
        print(f"worst case: {worst.attack} (PER peak {worst.entry['per_peak']:.2f})")


def setting(args: argparse.Namespace, protect_seconds: float) -> str:
    test = "all" if args.test_per_class is None else args.test_per_class
    return (f"{args.per_class}/class train, {test}/class test, {args.model}, batch {args.batch_size}, "
            f"lr {args.lr} cosine, {args.method} strength {args.strength} (PNG), PGD steps {args.pgd_steps}, "
            f"seed {args.seed}; protect took {protect_seconds:.1f} s")
