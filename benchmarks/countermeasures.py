"""The scraper's countermeasures against CUDA on CIFAR-10 (JPEG files).

Same scaled setting as ``verify_cuda_cifar10.py``: CUDA-protect ``--per-class`` images per
class, then for every attack of ``--suite`` (default: standard) train the same victim on the
clean and on the protected copy and test on the clean test split. Prints peak/last accuracy,
PER and wall time per row, and the worst case. Published shape (full CIFAR-10, ResNet-18):
grayscale, mixup, cutout and cutmix leave CUDA at 20-27%; sharpen-ff (78.5%) and COIN (~72%)
recover most of the 94% clean accuracy.

    python benchmarks/countermeasures.py                       # standard suite, ~55 min
    python benchmarks/countermeasures.py --attacks erm,grayscale,mixup,sharpen-ff,coin   # ~21 min

Scaled down to fit 2 CPU cores: 250 train and 250 test images per class, small-cnn, 40 epochs
(10 for adversarial training, PGD-2). Training to near convergence matters: CUDA's shortcut takes
over only once the victim starts to fit the training set (at 8 epochs CUDA barely holds and no
countermeasure can show an effect).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _verify_bench  # noqa: E402

from unlearnable.attacks.suites import resolve_attacks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _verify_bench.add_arguments(parser, epochs=40, at_epochs=10, attacks="standard")
    parser.set_defaults(per_class=250, test_per_class=250)
    args = parser.parse_args()
    rows, protect_seconds = _verify_bench.run(args, resolve_attacks(args.attacks))
    _verify_bench.print_table("Countermeasures vs CUDA on CIFAR-10 JPEG: " + _verify_bench.setting(args, protect_seconds), rows)


if __name__ == "__main__":
    main()
