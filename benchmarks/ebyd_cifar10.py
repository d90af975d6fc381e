"""EBYD on CIFAR-10 JPEG: train clean and backdoored small CNNs, scan and purify each, print a table.

Per model: clean accuracy (CA, all test images), attack success rate (ASR, triggered non-target
test images), the detection score (max share of the exposed model's clean-prediction histogram)
and verdict, the detected target, and after purification CA and ASR; then the detection AUROC
over the population and two baselines at equal data: plain fine-tuning on the defense set, and
BN masks learned on the un-exposed model (same pruning rule), which isolates what exposure adds.

The defense set (``--defense-per-class`` images per class) is taken from CIFAR training images
that no model was trained on (the strictest choice). The pruning threshold is chosen from
defense-set accuracy only; ASR is measured, never used to choose.

    nice -n 15 python benchmarks/ebyd_cifar10.py            # about 20-30 min on 2 busy cores
    python benchmarks/ebyd_cifar10.py --train-per-class 1000 --epochs 20   # closer to the paper

Data: ``--data PATH`` (a CIFAR-10 JPEG folder or archive) or ../shared/data (see _data.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import cifar10_root  # noqa: E402

from unlearnable.attacks.backdoor import (  # noqa: E402
    BadNets,
    Blend,
    PoisonConfig,
    attack_success_rate,
)
from unlearnable.attacks.training import TrainConfig  # noqa: E402
from unlearnable.defenses.detection import DetectionConfig, auroc, detect  # noqa: E402
from unlearnable.defenses.ebyd_data import load_clean_folder  # noqa: E402
from unlearnable.defenses.ebyd_subjects import train_backdoored  # noqa: E402
from unlearnable.defenses.exposure import ExposureConfig, clone_model, expose  # noqa: E402
from unlearnable.defenses.removal import (  # noqa: E402
    MaskConfig,
    PruneConfig,
    choose_pruning,
    learn_masks,
)
from unlearnable.training import FitConfig, fit, stream_generator  # noqa: E402
from unlearnable.training.classification import ClassifierBatches, evaluate  # noqa: E402

#: (name, trigger, target, poison rate, seed); rate 0 = a clean control.
SUBJECTS = (
    ("clean-s0", BadNets(), 0, 0.0, 0),
    ("clean-s1", BadNets(), 0, 0.0, 1),
    ("clean-s2", BadNets(), 0, 0.0, 2),
    ("badnets-t0-s0", BadNets(), 0, 0.1, 0),
    ("badnets-t5-s1", BadNets(), 5, 0.1, 1),
    ("blend-t3-s2", Blend(alpha=0.2), 3, 0.1, 2),
)


def _links(split: Path, target: Path, start: int, stop: int) -> Path:
    for class_dir in sorted(p for p in split.iterdir() if p.is_dir()):
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        for file in sorted(class_dir.iterdir())[start:stop]:
            link = target / class_dir.name / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return target


def load_data(root: Path, args, work: Path):
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    t = args.train_per_class
    parts = {
        "train": _links(root / "train", work / "train", 0, t),
        "defense": _links(root / "train", work / "defense", t, t + args.defense_per_class),
        "test": _links(root / "test", work / "test", 0, args.test_per_class),
    }
    return classes, {k: load_clean_folder(v, classes, 32) for k, v in parts.items()}


def fine_tune(model, images, labels, epochs: int, seed: int):
    """Baseline: plain fine-tuning of a copy on the defense set (SGD lr 0.01, crop + flip)."""
    tuned = clone_model(model)
    batches = ClassifierBatches(
        images, labels, 128, "cpu", stream_generator(seed, "ft"), stream_generator(seed, "ft-aug")
    )
    fit(
        tuned,
        batches,
        lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
        lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4),
        FitConfig(epochs=epochs, seed=seed),
    )
    return tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--defense-per-class", type=int, default=50)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--arch", default="small-cnn")
    parser.add_argument(
        "--augment",
        action="store_true",
        help="Crop + flip while training the subjects (off by default: at a few epochs the "
        "flip halves how often the corner patch is seen and BadNets stays weak)",
    )
    parser.add_argument("--max-drop", type=float, default=0.05)
    parser.add_argument("--work", default="/tmp/ebyd-cifar10-bench")
    parser.add_argument("--json", default=None, help="Also write the rows as JSON here.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    classes, data = load_data(cifar10_root(args.data), args, Path(args.work))
    train, defense, test = data["train"], data["defense"], data["test"]
    holdout = test  # the histogram is read on the clean test images (as EBYD's detector)
    print(
        f"data: {len(train)} train, {len(defense)} defense, {len(test)} test "
        f"({time.time() - start:.0f}s)",
        flush=True,
    )
    exposure_cfg = ExposureConfig()
    detection_cfg = DetectionConfig()
    prune_cfg = PruneConfig(max_drop=args.max_drop)
    rows = []
    for name, trigger, target, rate, seed in SUBJECTS:
        t0 = time.time()
        run = train_backdoored(
            train.images,
            train.labels,
            test.images[:500],
            test.labels[:500],
            trigger,
            PoisonConfig(target, rate, seed),
            args.arch,
            TrainConfig(epochs=args.epochs, lr=0.05, augment=args.augment),
            seed=seed,
            num_classes=10,
        )
        model = run.model

        def metrics(m, trigger=trigger, target=target):
            return (
                evaluate(m, test.images, test.labels),
                attack_success_rate(m, test.images, test.labels, trigger, target),
            )

        ca, asr = metrics(model)
        exposed = expose(
            model, defense.images, defense.labels, 10, exposure_cfg, holdout.images, holdout.labels
        )
        det = detect(exposed.final["histogram"], detection_cfg)
        asr_exposed = attack_success_rate(exposed.model, test.images, test.labels, trigger, target)
        masks = learn_masks(exposed.model, defense.images, defense.labels, MaskConfig(seed=seed))
        choice = choose_pruning(model, masks.masks, defense.images, defense.labels, prune_cfg)
        ca_p, asr_p = metrics(choice.model)
        ft_ca, ft_asr = metrics(fine_tune(model, defense.images, defense.labels, 10, seed))
        raw = learn_masks(model, defense.images, defense.labels, MaskConfig(seed=seed))
        raw_choice = choose_pruning(model, raw.masks, defense.images, defense.labels, prune_cfg)
        raw_ca, raw_asr = metrics(raw_choice.model)
        row = {
            "model": name,
            "backdoored": rate > 0,
            "target": target,
            "CA": ca,
            "ASR": asr,
            "exposure_epochs": exposed.epochs,
            "exposed_acc": exposed.final["clean_acc"],
            "ASR_exposed": asr_exposed,
            "score": det.score,
            "variance": det.variance,
            "flagged": det.flagged,
            "detected": det.target,
            "tau": choice.threshold,
            "pruned": len(choice.channels),
            "CA_purified": ca_p,
            "ASR_purified": asr_p,
            "CA_finetune": ft_ca,
            "ASR_finetune": ft_asr,
            "tau_unexposed": raw_choice.threshold,
            "CA_unexposed_masks": raw_ca,
            "ASR_unexposed_masks": raw_asr,
            "seconds": time.time() - t0,
        }
        rows.append(row)
        print(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True,
        )
    print_table(rows, time.time() - start, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _p(v) -> str:
    return f"{100 * v:5.1f}"


def print_table(rows, seconds: float, args) -> None:
    print(
        f"\nEBYD on CIFAR-10 JPEG ({args.arch}, {args.train_per_class}/class x {args.epochs} "
        f"epochs{' + crop/flip' if args.augment else ', no augmentation'}, defense {args.defense_per_class}/class held out, test "
        f"{args.test_per_class}/class; CUL SGD 0.01 until defense acc <= 0.20; score = max "
        f"share, flag >= 0.6; prune: max defense-acc drop {args.max_drop})"
    )
    head = (
        "model",
        "CA",
        "ASR",
        "ep",
        "ASRexp",
        "score",
        "var",
        "verdict",
        "t/det",
        "tau",
        "#pr",
        "CA_pur",
        "ASR_pur",
        "CA_ft",
        "ASR_ft",
        "CA_unexp",
        "ASR_unexp",
    )
    print(" | ".join(head))
    for r in rows:
        det = "-" if r["detected"] is None else str(r["detected"])
        tgt = str(r["target"]) if r["backdoored"] else "-"
        print(
            " | ".join(
                [
                    f"{r['model']:<14}",
                    _p(r["CA"]),
                    _p(r["ASR"]),
                    f"{r['exposure_epochs']:2d}",
                    _p(r["ASR_exposed"]),
                    f"{r['score']:.2f}",
                    f"{r['variance']:.3f}",
                    "FLAG " if r["flagged"] else "clean",
                    f"{tgt}/{det}",
                    f"{r['tau']:.2f}",
                    f"{r['pruned']:3d}",
                    _p(r["CA_purified"]),
                    _p(r["ASR_purified"]),
                    _p(r["CA_finetune"]),
                    _p(r["ASR_finetune"]),
                    _p(r["CA_unexposed_masks"]),
                    _p(r["ASR_unexposed_masks"]),
                ]
            )
        )
    bad = [r for r in rows if r["backdoored"]]
    good = [r for r in rows if not r["backdoored"]]
    area = auroc([r["score"] for r in bad], [r["score"] for r in good])
    area_var = auroc([r["variance"] for r in bad], [r["variance"] for r in good])
    hits = sum(r["detected"] == r["target"] for r in bad)
    print(
        f"\ndetection AUROC (max share) {area}, (variance) {area_var}; n = {len(bad)} "
        f"backdoored + {len(good)} clean (small n)"
    )
    print(
        f"backdoored flagged with the right target: {hits}/{len(bad)}; clean flagged: "
        f"{sum(r['flagged'] for r in good)}/{len(good)}"
    )
    goal = [r for r in bad if r["ASR_purified"] < 0.10 and r["CA"] - r["CA_purified"] < 0.05]
    print(f"purified ASR < 10% with CA drop < 5 points: {len(goal)}/{len(bad)}")
    print(f"total {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
