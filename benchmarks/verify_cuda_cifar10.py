"""CUDA on CIFAR-10 (JPEG files): clean vs protected test accuracy under ERM and AT.

Protects ``--per-class`` training images per class with CUDA (PNG output, key fixed for
repeatability), then trains the same victim on the clean and on the protected copy for each
attack, and tests on the clean test split (``--test-per-class``, default all 1,000). Prints
peak and last-epoch accuracy, the protection score PER and the wall time of each row.

Scaled setting (2 CPU cores, about 30 minutes): small-cnn, ERM for ``--epochs`` epochs,
adversarial training for ``--at-epochs`` epochs with ``--pgd-steps`` PGD steps.
The CUDA paper (full CIFAR-10, ResNet-18, 100 epochs) reports clean 94.66, CUDA 18.48 (ERM),
44.40 (L-inf AT 4/255), 51.19 (L2 AT 0.5). Compare shapes, not absolute numbers: these files are
JPEG (q~75), the set is 10x smaller and training is 5-10x shorter.

    python benchmarks/verify_cuda_cifar10.py
    python benchmarks/verify_cuda_cifar10.py --per-class 200 --epochs 10 --attacks erm
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cifar_subset import link_subset  # noqa: E402
from _data import cifar10_root  # noqa: E402

from unlearnable import OutputOptions, SecretKey, protect_directory  # noqa: E402
from unlearnable.attacks.base import make_attack  # noqa: E402
from unlearnable.attacks.training import TrainConfig  # noqa: E402
from unlearnable.verify import run_verification  # noqa: E402
from unlearnable.verify_inputs import load_verify_folders  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/, test/) or its .tar.gz")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=None, help="default: the full test split")
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--epochs", type=int, default=15, help="ERM epochs")
    parser.add_argument("--at-epochs", type=int, default=6, help="adversarial-training epochs")
    parser.add_argument("--pgd-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--strength", default="mid")
    parser.add_argument("--attacks", default="erm,at-linf-4,at-l2-0.5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=None, help="also write a verify run folder per attack here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = cifar10_root(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="unlearnable-verify-bench-") as tmp:
        scratch = Path(tmp)
        train = link_subset(root / "train", scratch / "train", args.per_class)
        test = link_subset(root / "test", scratch / "test", args.test_per_class)
        started = time.perf_counter()
        run = protect_directory(train, scratch / "protected", SecretKey(bytes(32)), labels="folders",
                                strength=args.strength, options=OutputOptions(format="png"))
        protect_seconds = time.perf_counter() - started
        assert not run.failed
        loaded = load_verify_folders(scratch / "protected", train, test)
        base = TrainConfig(batch_size=args.batch_size, lr=args.lr, schedule="cosine")
        for name in args.attacks.split(","):
            adversarial = name.startswith("at-")
            config = replace(base, epochs=args.at_epochs if adversarial else args.epochs)
            attack = make_attack(name, steps=args.pgd_steps) if adversarial else make_attack(name)
            started = time.perf_counter()
            result = run_verification(loaded.data, [attack], args.model, config, [args.seed])
            seconds = time.perf_counter() - started
            report = result.to_json()
            if args.run_dir is not None:
                from unlearnable.report import write_run_folder

                write_run_folder(result, args.run_dir / name)
            entry = report["attacks"][0]
            rows.append((name, config.epochs, entry, seconds))
            print(f"done {name}: {seconds:.0f} s", flush=True)

    print(f"\nCUDA on CIFAR-10 JPEG: {args.per_class}/class train, "
          f"{'all' if args.test_per_class is None else args.test_per_class}/class test, {args.model}, "
          f"batch {args.batch_size}, lr {args.lr} cosine, strength {args.strength}, PGD steps {args.pgd_steps}; "
          f"protect took {protect_seconds:.1f} s")
    print(f"{'attack':<12}{'epochs':>7}{'clean peak':>12}{'clean last':>12}{'CUDA peak':>11}{'CUDA last':>11}"
          f"{'PER peak':>10}{'PER last':>10}{'seconds':>9}")
    for name, epochs, entry, seconds in rows:
        clean, protected = entry["clean"], entry["protected"]
        print(f"{name:<12}{epochs:>7}{100 * clean['peak_mean']:>11.2f}%{100 * clean['last_mean']:>11.2f}%"
              f"{100 * protected['peak_mean']:>10.2f}%{100 * protected['last_mean']:>10.2f}%"
              f"{entry['per_peak']:>10.2f}{entry['per_last']:>10.2f}{seconds:>9.0f}")


if __name__ == "__main__":
    main()
