"""CUDA on CIFAR-10 (JPEG files): clean vs protected test accuracy under ERM and AT.

Protects ``--per-class`` training images per class with CUDA (PNG output, a fixed key), then
trains the same victim on the clean and on the protected copy for each attack, and tests on the
clean test split (``--test-per-class``, default all 1,000 per class). Prints peak and last-epoch
accuracy, the protection score PER and the wall time of each row.

Scaled setting for 2 CPU cores (about 30 minutes): small-cnn, batch 64, ERM for ``--epochs``
epochs, adversarial training (PGD with ``--pgd-steps`` steps) for ``--at-epochs`` epochs.
The CUDA paper (full CIFAR-10, ResNet-18, 100 epochs) reports clean 94.66, CUDA 18.48 (ERM),
44.40 (L-inf AT 4/255), 51.19 (L2 AT 0.5). Compare shapes, not absolute numbers: these files are
JPEG (q~75), the set is 10x smaller and training is far shorter.

    python benchmarks/verify_cuda_cifar10.py
    python benchmarks/verify_cuda_cifar10.py --per-class 200 --epochs 10 --attacks erm
    python benchmarks/verify_cuda_cifar10.py --method photo --per-class 200 --test-per-class 200 \
        --epochs 10 --attacks erm,grayscale          # the default method on 32 px files
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _verify_bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _verify_bench.add_arguments(parser, epochs=15, at_epochs=6, attacks="erm,at-linf-4,at-l2-0.5")
    args = parser.parse_args()
    rows, protect_seconds = _verify_bench.run(args, args.attacks.split(","))
    _verify_bench.print_table(f"{args.method} on CIFAR-10 JPEG: " + _verify_bench.setting(args, protect_seconds), rows)


if __name__ == "__main__":
    main()
