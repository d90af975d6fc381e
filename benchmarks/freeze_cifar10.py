"""FreezeAsGuard on CIFAR-10 (JPEG files): does a learned mask block illegal fine-tuning more than
random or largest-change masks, at a small cost to legal fine-tuning?

The CPU plan of the dossier (``../shared/research/methods-defend.md``, "FreezeAsGuard on CPU"),
scaled to a 2-core machine:

1. θ_pre: small-cnn (10 outputs) trained on classes 4-9 only; outputs 0-3 are never trained,
   so the released model knows neither domain.
2. Illegal = {airplane, automobile}, legal = {bird, cat}; disjoint splits per class: the first
   ``--publisher`` training images (mask learning) and the next ``--user`` (the users'
   fine-tuning); tests on the first ``--test`` test images of classes 0-3.
3. θ_ft: θ_pre fully fine-tuned on the publisher's illegal + legal images (shared by every
   learned mask). Masks at each ``--ratios`` (tensor level, head always trainable):
   learned (FreezeAsGuard), random (``--random-seeds`` seeds), largest change (the top tensors
   by ``||θ_ft - θ_pre|| / sqrt(numel)``), and no freezing.
4. A fresh user fine-tunes θ_pre under each mask (AdamW, weight decay 0.01, 4-way readout over
   classes 0-3) (a) on illegal data only, (b) on legal data only. Accuracy is the pair
   accuracy (airplane vs automobile, bird vs cat; chance 50%).
   mitigation = 1 - Acc_ill(mask) / Acc_ill(no freezing), legal impact = 1 - Acc_leg(mask) /
   Acc_leg(no freezing). A stronger user (``--strong-factor`` x epochs, ``--strong-lr``) repeats
   the illegal fine-tuning for the learned masks and no freezing.

Goal (issue 10): the learned mask beats random and largest-change masks on mitigation at equal
legal impact, with legal impact under 10%. CIFAR-10 is by Krizhevsky (2009). These files are
JPEG (q~75) and the sets are small: compare masks with each other, not with the paper.

    nice -n 15 python benchmarks/freeze_cifar10.py
    python benchmarks/freeze_cifar10.py --ratios 0.2 --random-seeds 1 --user-epochs 2  # quick
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cifar10_root  # noqa: E402

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
ILLEGAL, LEGAL, PRETRAIN = (0, 1), (2, 3), (4, 5, 6, 7, 8, 9)

T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {message}", flush=True)


def load_split(root: Path, split: str, classes, start: int, count: int):
    """uint8 (N, 3, 32, 32) images and int64 labels: files start..start+count of each class."""
    from unlearnable.defenses.freeze import ClassificationData
    from unlearnable.imageops import square_rgb, to_uint8
    from unlearnable.io.images import decode_image

    images, labels = [], []
    for c in classes:
        files = sorted((root / split / CLASSES[c]).iterdir())[start : start + count]
        for f in files:
            images.append(to_uint8(square_rgb(decode_image(f.read_bytes()).pixels, 32)))
            labels.append(c)
    return ClassificationData(torch.stack(images), torch.tensor(labels))


def pretrain(train, args):
    from unlearnable.defenses.freeze import ClassificationAdapter
    from unlearnable.models import build_victim
    from unlearnable.training import FitConfig, fit, stream_generator

    model = build_victim("small-cnn", 10, 32, seed=args.seed)
    adapter = ClassificationAdapter(readout=PRETRAIN)
    batches = adapter.batches(train, 64, torch.device("cpu"), stream_generator(args.seed, "pre"))
    fit(
        model,
        batches,
        adapter.loss,
        lambda ps: torch.optim.AdamW(ps, lr=2e-3, weight_decay=5e-4),
        FitConfig(epochs=args.pretrain_epochs, seed=args.seed),
    )
    return model


def largest_change(pre, ft, maskable, k):
    params_pre, params_ft = pre.state_dict(), ft.state_dict()
    score = {
        n: float((params_ft[n] - params_pre[n]).norm()) / math.sqrt(params_pre[n].numel())
        for n in maskable
    }
    return sorted(maskable, key=lambda n: -score[n])[:k]


def user_accuracy(pre, mask, train, test, readout, epochs, lr, args):
    """Pair accuracy after a fresh user fine-tunes θ_pre under ``mask`` on ``train``."""
    from unlearnable.defenses.freeze import ClassificationAdapter, FinetuneConfig, finetune

    model = copy.deepcopy(pre)
    adapter = ClassificationAdapter(readout=ILLEGAL + LEGAL)
    config = FinetuneConfig(epochs=epochs, lr=lr, weight_decay=0.01, batch_size=32, seed=args.seed)
    finetune(model, mask, train, adapter, config)
    return ClassificationAdapter(readout=readout).evaluate(model, test, torch.device("cpu"))["acc"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=None, help="CIFAR-10 JPEG folder or archive")
    parser.add_argument("--pretrain-per-class", type=int, default=250)
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--publisher", type=int, default=100, help="images per class")
    parser.add_argument("--user", type=int, default=100, help="images per class")
    parser.add_argument("--test", type=int, default=250, help="test images per class")
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4")
    parser.add_argument("--relearn-epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=160, help="simulated-user steps per mask")
    parser.add_argument("--batch-size", type=int, default=16, help="per domain, mask learning")
    parser.add_argument("--user-lr-sim", type=float, default=0.01, help="simulated user's SGD lr")
    parser.add_argument("--user-epochs", type=int, default=4)
    parser.add_argument("--user-lr", type=float, default=1e-3)
    parser.add_argument("--strong-factor", type=int, default=5)
    parser.add_argument("--strong-lr", type=float, default=3e-3)
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--level", choices=("tensor", "channel"), default="tensor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unlearnable.defenses.freeze import (
        ClassificationAdapter,
        FreezeConfig,
        build_mask,
        learn_freeze_mask,
        relearn,
    )
    from unlearnable.defenses.freeze_mask import resolve_excluded

    root = cifar10_root(args.data)
    ratios = [float(r) for r in args.ratios.split(",")]
    pre_train = load_split(root, "train", PRETRAIN, 0, args.pretrain_per_class)
    pub_ill = load_split(root, "train", ILLEGAL, 0, args.publisher)
    pub_leg = load_split(root, "train", LEGAL, 0, args.publisher)
    user_ill = load_split(root, "train", ILLEGAL, args.publisher, args.user)
    user_leg = load_split(root, "train", LEGAL, args.publisher, args.user)
    test_ill = load_split(root, "test", ILLEGAL, 0, args.test)
    test_leg = load_split(root, "test", LEGAL, 0, args.test)
    test_pre = load_split(root, "test", PRETRAIN, 0, args.test)
    log(f"data loaded from {root}")

    pre = pretrain(pre_train, args)
    acc_pre = ClassificationAdapter(readout=PRETRAIN).evaluate(pre, test_pre, "cpu")["acc"]
    log(f"θ_pre: classes 4-9 test accuracy {100 * acc_pre:.1f}% (6-way)")

    adapter = ClassificationAdapter(readout=ILLEGAL + LEGAL)
    base = FreezeConfig(
        ratio=0.2, level=args.level, steps=args.steps, batch_size=args.batch_size,
        user_lr=args.user_lr_sim, relearn_epochs=args.relearn_epochs, seed=args.seed,
    )  # fmt: skip
    ft, _ = relearn(pre, pub_ill, pub_leg, adapter, base)
    ft_ill = ClassificationAdapter(readout=ILLEGAL).evaluate(ft, test_ill, "cpu")["acc"]
    ft_leg = ClassificationAdapter(readout=LEGAL).evaluate(ft, test_leg, "cpu")["acc"]
    log(f"θ_ft: illegal pair acc {100 * ft_ill:.1f}%, legal pair acc {100 * ft_leg:.1f}%")

    excluded = resolve_excluded(pre, adapter.default_exclude(pre))
    maskable = [n for n, _ in pre.named_parameters() if n not in excluded]

    def evaluate(mask, strong=False):
        e, lr = args.user_epochs, args.user_lr
        if strong:
            e, lr = e * args.strong_factor, args.strong_lr
        ill = user_accuracy(pre, mask, user_ill, test_ill, ILLEGAL, e, lr, args)
        if strong:
            return ill, None
        return ill, user_accuracy(pre, mask, user_leg, test_leg, LEGAL, e, lr, args)

    none_mask = build_mask(pre, [], excluded=excluded)
    full_ill, full_leg = evaluate(none_mask)
    strong_full, _ = evaluate(none_mask, strong=True)
    log(
        f"no freezing: illegal {100 * full_ill:.1f}%, legal {100 * full_leg:.1f}%, "
        f"strong-user illegal {100 * strong_full:.1f}%"
    )

    rows = []

    def row(ratio, kind, masks, strong=None):
        ills, legs = zip(*(evaluate(m) for m in masks), strict=True)
        mit = [1 - a / full_ill for a in ills]
        imp = [1 - a / full_leg for a in legs]
        share = statistics.mean(m.share["parameters"] for m in masks)
        rows.append({
            "ratio": ratio, "kind": kind, "tensors": len(masks[0].frozen), "share_params": share,
            "ill": ills, "leg": legs, "mit": mit, "imp": imp, "strong": strong,
        })  # fmt: skip
        log(
            f"ρ={ratio} {kind}: illegal {100 * statistics.mean(ills):.1f}% "
            f"legal {100 * statistics.mean(legs):.1f}% mitigation {statistics.mean(mit):+.3f} "
            f"legal impact {statistics.mean(imp):+.3f}"
        )

    for ratio in ratios:
        config = FreezeConfig(**{**base.__dict__, "ratio": ratio})
        result = learn_freeze_mask(pre, pub_ill, pub_leg, adapter, config, start_from=ft)
        final = result.rows[-1]
        log(
            f"ρ={ratio}: learned mask in {result.seconds:.0f} s, soft mean "
            f"{final['mask_mean']:.3f}, frozen {result.mask.frozen_names}"
        )
        strong_ill, _ = evaluate(result.mask, strong=True)
        row(ratio, "learned", [result.mask], strong=(strong_ill, 1 - strong_ill / strong_full))
        k = len(result.mask.frozen)
        row(ratio, "largest change", [build_mask(pre, largest_change(pre, ft, maskable, k),
                                                 excluded=excluded)])  # fmt: skip
        randoms = []
        for s in range(args.random_seeds):
            g = torch.Generator().manual_seed(1000 + s)
            pick = [maskable[i] for i in torch.randperm(len(maskable), generator=g)[:k].tolist()]
            randoms.append(build_mask(pre, pick, excluded=excluded))
        row(ratio, f"random x{args.random_seeds}", randoms)

    def pm(values, pct=True):
        scale = 100 if pct else 1
        mean = statistics.mean(values) * scale
        if len(values) == 1:
            return f"{mean:.1f}" if pct else f"{mean:+.3f}"
        spread = statistics.stdev(values) * scale
        return f"{mean:.1f}±{spread:.1f}" if pct else f"{mean:+.3f}±{spread:.3f}"

    print()
    print(
        f"FreezeAsGuard on CIFAR-10 JPEG: small-cnn, θ_pre on classes 4-9 "
        f"({args.pretrain_per_class}/class, {args.pretrain_epochs} epochs, test acc "
        f"{100 * acc_pre:.1f}%); publisher {args.publisher}/class, user {args.user}/class, test "
        f"{args.test}/class; {args.level}-level masks, {len(maskable)} maskable tensors (head "
        f"excluded); mask learning {args.steps} user steps (SGD {args.user_lr_sim}); users: AdamW "
        f"{args.user_lr}, {args.user_epochs} epochs; strong user: {args.strong_factor}x epochs, "
        f"lr {args.strong_lr}. Pair accuracy, chance 50%."
    )
    print(
        f"no freezing: illegal {100 * full_ill:.1f}%, legal {100 * full_leg:.1f}%, strong-user "
        f"illegal {100 * strong_full:.1f}%"
    )
    header = (
        "| ρ | mask | frozen tensors | frozen params | Acc_ill % | Acc_leg % | mitigation "
        "| legal impact | strong Acc_ill % | strong mitigation |"
    )
    print(header)
    print("|" + "---|" * 10)
    for r in rows:
        strong = r["strong"]
        print(
            f"| {r['ratio']} | {r['kind']} | {r['tensors']} | {100 * r['share_params']:.1f}% | "
            f"{pm(r['ill'])} | {pm(r['leg'])} | {pm(r['mit'], False)} | {pm(r['imp'], False)} | "
            + (f"{100 * strong[0]:.1f} | {strong[1]:+.3f} |" if strong else "- | - |")
        )
    print()
    for ratio in ratios:
        by = {r["kind"].split(" x")[0]: r for r in rows if r["ratio"] == ratio}
        learned = by["learned"]
        mit = statistics.mean(learned["mit"])
        imp = statistics.mean(learned["imp"])
        beats = all(
            mit > statistics.mean(by[k]["mit"]) for k in ("random", "largest change") if k in by
        )
        verdict = "meets" if beats and mit > 0 and imp < 0.10 else "misses"
        print(
            f"ρ={ratio}: learned mitigation {mit:+.3f} vs random "
            f"{statistics.mean(by['random']['mit']):+.3f}, largest change "
            f"{statistics.mean(by['largest change']['mit']):+.3f}; legal impact {imp:+.3f} "
            f"(random {statistics.mean(by['random']['imp']):+.3f}, largest change "
            f"{statistics.mean(by['largest change']['imp']):+.3f}) -> {verdict} the goal"
        )
    log("done")


if __name__ == "__main__":
    main()
