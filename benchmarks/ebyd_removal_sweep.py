"""Why RNP removal fails or works on the EBYD benchmark's models: the full pruning sweep.

For each model cached by ``benchmarks/ebyd_cifar10.py`` (same ``--work`` and data settings):
expose it (CUL, defaults), learn the batch-norm masks on the exposed model, then prune the
original model by mask threshold (tau) and by count (the k lowest-mask channels, ties in
layer/channel order) and print defense-set accuracy, test CA and ASR for every setting. Read it
to choose a pruning rule from clean accuracy only; ASR is printed, never used.

    OMP_NUM_THREADS=1 flock /tmp/lane-b.lock nice -n 5 python benchmarks/ebyd_removal_sweep.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import cifar10_root  # noqa: E402
from _ebyd_subjects import load_data, trained_subject  # noqa: E402
from ebyd_cifar10 import EXTRA, SUBJECTS  # noqa: E402

from unlearnable.attacks.backdoor import attack_success_rate  # noqa: E402
from unlearnable.attacks.training import TrainConfig  # noqa: E402
from unlearnable.defenses.exposure import ExposureConfig, expose  # noqa: E402
from unlearnable.defenses.removal import MaskConfig, learn_masks, prune  # noqa: E402
from unlearnable.training.classification import evaluate  # noqa: E402


def lowest(masks: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Masks with the ``k`` lowest channels set to 0 and every other channel to 1."""
    ranked = sorted(
        (float(v), i, name, c)
        for i, (name, vals) in enumerate(masks.items())
        for c, v in enumerate(vals.tolist())
    )
    out = {name: torch.ones_like(vals) for name, vals in masks.items()}
    for _, _, name, c in ranked[:k]:
        out[name][c] = 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--defense-per-class", type=int, default=50)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--arch", default="small-cnn")
    parser.add_argument("--models", default="badnets-t0-s0,badnets-t5-s1,blend-t3-s2,clean-s0")
    parser.add_argument("--mask-epochs", default="20,5", help="Mask-learning epochs to compare.")
    parser.add_argument("--work", default=str(Path.home() / ".cache/unlearnable/ebyd-bench"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    work = Path(args.work)
    classes, data = load_data(
        cifar10_root(args.data),
        args.train_per_class,
        args.defense_per_class,
        args.test_per_class,
        work,
    )
    defense, test = data["defense"], data["test"]
    config = TrainConfig(epochs=args.epochs, lr=args.lr, augment=False)
    wanted = args.models.split(",")
    print("model | mask epochs | rule | pruned | defense acc | CA | ASR")
    for name, trigger, target, rate, seed in SUBJECTS + EXTRA:
        if name not in wanted:
            continue
        model, facts = trained_subject(
            name, trigger, target, rate, seed, args.arch, args.train_per_class, config,
            classes, data, work,
        )  # fmt: skip
        exposed = expose(model, defense.images, defense.labels, 10, ExposureConfig())

        def row(label, epochs, pruned, count, name=name, trigger=trigger, target=target):
            print(
                f"{name} | {epochs} | {label} | {count} | "
                f"{100 * evaluate(pruned, defense.images, defense.labels):.1f} | "
                f"{100 * evaluate(pruned, test.images, test.labels):.1f} | "
                f"{100 * attack_success_rate(pruned, test.images, test.labels, trigger, target):.1f}",
                flush=True,
            )

        row("none", "-", model, 0)
        for epochs in (int(e) for e in args.mask_epochs.split(",")):
            masks = learn_masks(
                exposed.model, defense.images, defense.labels, MaskConfig(epochs=epochs, seed=seed)
            ).masks
            values = torch.cat(list(masks.values()))
            print(f"{name} masks ({epochs} epochs): {int((values <= 0).sum())} at 0, "
                  f"{int((values <= 0.2).sum())} <= 0.2 of {values.numel()}")  # fmt: skip
            for tau in (0.0, 0.05, 0.1, 0.2, 0.3):
                pruned, channels = prune(model, masks, tau)
                row(f"tau {tau}", epochs, pruned, len(channels))
            for k in (1, 2, 4, 8, 16, 32):
                pruned, channels = prune(model, lowest(masks, k), 0.5)
                row(f"k {k}", epochs, pruned, len(channels))
    print(f"total {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
