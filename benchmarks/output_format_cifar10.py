"""How much protection the default output format keeps: CIFAR-10 JPEG files, verified under ERM.

JPEG inputs are written back as JPEG by default, re-encoded with the source's quantisation tables
(``OutputOptions(format="keep")``). This protects ``--per-class`` training files per class with
the default method (``--method``) and compares, on the same files and key:

* ``default``: the files as the tool writes them by default (JPEG, the source's tables);
* ``png``: the same protection written losslessly (``--format png``);
* ``jpeg-q95-444``: the PNG output's pixels as JPEG at quality 95 with 4:4:4 chroma (full
  colour resolution), encoded and decoded in memory, as a careful user would write them.

For each it prints the perturbation in the file (RMS of protected - clean, in 8-bit levels), how
far the file is from the PNG output (RMS of file - PNG: what the encoding changed), the PSNR
against the clean file, and the clean and protected test accuracy of the same victim trained
with ERM for ``--epochs`` epochs (peak and last epoch, ``--seeds``), with PER (protected
error rate, scaled: 1 - protected / clean accuracy). The clean victim is trained once per seed
per variant (``run_verification`` trains the pair), so its rows must agree: that is a check of
determinism.

    python benchmarks/output_format_cifar10.py                        # 500 per class, 30 epochs
    python benchmarks/output_format_cifar10.py --per-class 200 --epochs 10   # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cifar_subset import link_subset  # noqa: E402
from _data import cifar10_root  # noqa: E402

from unlearnable import OutputOptions, RunOptions, SecretKey, protect_directory  # noqa: E402
from unlearnable.attacks.training import TrainConfig  # noqa: E402
from unlearnable.attacks.transforms_pil import jpeg_compress  # noqa: E402
from unlearnable.imageops import to_uint8  # noqa: E402
from unlearnable.protect.api import DEFAULT_METHOD  # noqa: E402
from unlearnable.verify import VerifyData, run_verification  # noqa: E402
from unlearnable.verify_inputs import load_verify_folders  # noqa: E402


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS difference of two uint8 image tensors, in 8-bit levels."""
    return float((a.float() - b.float()).square().mean()) ** 0.5


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    value = rms(a, b)
    return 20 * float(np.log10(255.0 / value)) if value > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/, test/) or its .tar.gz")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=None, help="default: all 1,000")
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--variants", default="default,png,jpeg-q95-444", help="which outputs to verify"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = cifar10_root(args.data)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="cosine"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="unlearnable-bench-") as tmp:
        scratch = Path(tmp)
        train = link_subset(root / "train", scratch / "train", args.per_class)
        test = link_subset(root / "test", scratch / "test", args.test_per_class)
        loaded: dict[str, VerifyData] = {}
        for name, fmt in (("default", "keep"), ("png", "png")):
            run = protect_directory(
                train,
                scratch / name,
                SecretKey(bytes(32)),
                args.method,
                RunOptions(output=OutputOptions(format=fmt)),
            )
            if run.failed:
                raise SystemExit(f"protect failed for {len(run.failed)} files")
            loaded[name] = load_verify_folders(scratch / name, train, test).data
        png = loaded["png"]
        round_trip = jpeg_compress(png.protected_train.float() / 255, 95, subsampling="4:4:4")
        loaded["jpeg-q95-444"] = replace(png, protected_train=to_uint8(round_trip))
        for name in args.variants.split(","):
            data = loaded[name]
            measures = (
                rms(data.protected_train, data.clean_train),
                rms(data.protected_train, png.protected_train),
                psnr(data.protected_train, data.clean_train),
            )
            started = time.perf_counter()
            result = run_verification(data, ["erm"], args.model, config, seeds).to_json()
            entry = result["attacks"][0]
            seconds = time.perf_counter() - started
            rows.append((name, measures, entry, seconds))
            print(
                f"done {name}: clean {100 * entry['clean']['peak_mean']:.1f}% protected "
                f"{100 * entry['protected']['peak_mean']:.1f}% in {seconds:.0f} s",
                flush=True,
            )

    print(
        f"\n{args.method} on CIFAR-10 JPEG files, {args.per_class} per class, {args.model}, ERM "
        f"{args.epochs} epochs, seeds {args.seeds}: each output format against the clean victim"
    )
    print(
        f"{'output':<15}{'RMS':>7}{'vs PNG':>8}{'PSNR dB':>9}{'clean peak':>12}{'clean last':>12}"
        f"{'prot. peak':>12}{'prot. last':>12}{'PER peak':>10}{'PER last':>10}{'seconds':>9}"
    )
    for name, (perturbed, changed, decibels), entry, seconds in rows:
        clean, protected = entry["clean"], entry["protected"]
        print(
            f"{name:<15}{perturbed:>7.2f}{changed:>8.2f}{decibels:>9.2f}"
            f"{100 * clean['peak_mean']:>11.2f}%"
            f"{100 * clean['last_mean']:>11.2f}%{100 * protected['peak_mean']:>11.2f}%"
            f"{100 * protected['last_mean']:>11.2f}%{entry['per_peak']:>10.2f}"
            f"{entry['per_last']:>10.2f}{seconds:>9.0f}"
        )
    print("RMS: file - clean; vs PNG: file - the PNG output (8-bit levels, all files together)")


if __name__ == "__main__":
    main()
