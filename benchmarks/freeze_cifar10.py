"""FreezeAsGuard on CIFAR-10 (JPEG files): does a learned mask block illegal fine-tuning more than
random or largest-change masks, at a small cost to legal fine-tuning?

The CPU plan of the dossier (``../shared/research/methods-defend.md``, "FreezeAsGuard on CPU"),
scaled to one thread of a shared 2-core machine (``--ratios 0.2,0.4 --variants fresh
--strong-factor 0 --head-ratios ""`` takes about 8 minutes; the default run, with four ratios, the
strong user and the head-maskable masks, about 15):

1. θ_pre: small-cnn (10 outputs) trained on the scenario's pretraining classes only
   (``--pretrain-per-class`` images, ``--pretrain-epochs``); the other outputs are never
   trained, so the released model knows neither domain. Cached on disk
   (``~/.cache/unlearnable/freeze-cifar10/models``, keyed by the recipe).
2. Scenarios (``--scenario``):
   ``dissimilar`` (the issue's): pretrain on 4-9, illegal = {airplane, automobile}, legal =
   {bird, cat}; ``similar`` (stress test): pretrain on {airplane, automobile, deer, frog, ship,
   truck}, illegal = {cat, dog}, legal = {bird, horse} (both animal pairs); ``animals``: the
   issue's pairs, but θ_pre sees only deer/dog/frog/horse (no ship or truck, whose features
   already separate airplanes from automobiles: more room for a mask).
   Disjoint splits per class: the first ``--publisher`` training images (mask learning) and the
   next ``--user`` (the users' fine-tuning); tests on the first ``--test`` test images.
3. θ_ft: θ_pre fully fine-tuned on the publisher's illegal + legal images (shared by every
   learned mask). Masks at each ``--ratios`` and ``--levels`` (``channel``: one group per output
   channel of every tensor; ``tensor``: one per tensor; the head is always trainable):
   learned (FreezeAsGuard; ``--variants``: ``paper`` (the simulated user continues from
   θ_ft), ``tied`` (conv channel j with BN γ_j, β_j as one group), ``fresh`` (the simulated
   user starts at θ_pre and is reset there every ``--reset-interval`` steps, SGD
   ``--fresh-lr-sim``, ``--fresh-steps``), ``fresh-tied``; tied variants get tied baselines),
   random (``--random-seeds`` seeds, same number of groups), largest
   change (the groups with the largest ``||θ_ft - θ_pre|| / sqrt(numel)``), "matched random"
   (``--matched-seeds``: random channels, as many per tensor as the learned mask froze: does
   *which* channels matter?), no freezing, and "all frozen" (only the head trains: about the
   most a mask can mitigate). For every mask, "θ_ft reverted" is the accuracy of θ_ft with the
   mask's groups put back to θ_pre, the quantity the mask learner optimises (no fresh user).
   ``--head-ratios``: masks that may also freeze head rows, against a user who trains the
   classes on the published mask's free outputs instead (relabelling).
4. Threat model: a fresh user fine-tunes θ_pre through the enforcing API (the frozen groups are
   bit-identical afterwards), with a trainable head (a user can always attach or relabel one),
   any data of their own and their own recipe: AdamW, weight decay 0.01, ``--user-epochs``
   at ``--user-lr``, 4-way readout over classes 0-3 (a) on illegal data only, (b) on legal
   data only. Accuracy is the pair accuracy (chance 50%) on ``--test`` images per class (1000,
   all of CIFAR-10's: 2 SE of a mitigation difference about 0.023). mitigation = 1 - Acc_ill(mask) /
   Acc_ill(no freezing), legal impact = 1 - Acc_leg(mask) / Acc_leg(no freezing). A stronger
   user (``--strong-factor`` x epochs, ``--strong-lr``) repeats the illegal fine-tuning for the
   learned and largest-change masks, no freezing and all frozen. The user never sees the
   publisher's images.

Goal (issue 10): the learned mask beats random and largest-change masks on mitigation at equal
legal impact, with legal impact under 10%. The verdict line also compares with the matched
random masks, calls a margin under two standard errors of the test accuracy noise, and shows the
head-only ceiling (the most a mask could mitigate). CIFAR-10 is by Krizhevsky (2009). These files are
JPEG (q~75) and the sets are small: compare masks with each other, not with the paper.

    OMP_NUM_THREADS=1 flock /tmp/lane-b.lock nice -n 5 python benchmarks/freeze_cifar10.py
    python benchmarks/freeze_cifar10.py --scenario similar --ratios 0.2,0.4
    python benchmarks/freeze_cifar10.py --ratios 0.2 --random-seeds 1 --user-epochs 2  # quick
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cifar10_root  # noqa: E402
from _freeze_data import CLASSES, load_split, log, pretrain  # noqa: E402
from _freeze_groups import (  # noqa: E402
    count,
    families_of,
    group_sizes,
    largest_change,
    matched_random,
    random_groups,
)

VARIANTS = {  # learned-mask variants: FreezeConfig changes (see freeze_learn)
    "paper": {},  # the simulated user continues from θ_ft
    "tied": {"tie_norm": True},  # conv channel j + BN γ_j, β_j as one group
    "fresh": {"reset_interval": None},  # a fresh user from θ_pre, reset every --reset-interval
    "fresh-tied": {"reset_interval": None, "tie_norm": True},
}
SCENARIOS = {  # name: (pretraining classes, illegal pair, legal pair)
    "dissimilar": ((4, 5, 6, 7, 8, 9), (0, 1), (2, 3)),
    "similar": ((0, 1, 4, 6, 8, 9), (3, 5), (2, 7)),
    "animals": ((4, 5, 6, 7), (0, 1), (2, 3)),  # the pairs, no vehicles pretrained
}


def main() -> None:  # noqa: PLR0915
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=None, help="CIFAR-10 JPEG folder or archive")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="dissimilar")
    parser.add_argument("--pretrain-per-class", type=int, default=300)
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--publisher", type=int, default=200, help="images per class")
    parser.add_argument("--user", type=int, default=300, help="images per class")
    parser.add_argument("--test", type=int, default=1000, help="test images per class")
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4")
    parser.add_argument("--levels", default="channel", help="channel and/or tensor, comma list")
    parser.add_argument("--relearn-epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300, help="simulated-user steps per mask")
    parser.add_argument("--batch-size", type=int, default=16, help="per domain, mask learning")
    parser.add_argument("--user-lr-sim", type=float, default=0.01, help="simulated user's SGD lr")
    parser.add_argument("--mask-lr", type=float, default=0.05)
    parser.add_argument("--penalty", type=float, default=10.0)
    parser.add_argument(
        "--variants", default="paper", help=f"learned masks, comma list of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--reset-interval", type=int, default=200, help="fresh variants")
    parser.add_argument("--fresh-steps", type=int, default=600, help="fresh variants")
    parser.add_argument("--fresh-lr-sim", type=float, default=0.1, help="fresh variants")
    parser.add_argument("--user-epochs", type=int, default=6)
    parser.add_argument("--user-lr", type=float, default=1e-3)
    parser.add_argument("--strong-factor", type=int, default=5, help="0: no strong user")
    parser.add_argument("--strong-lr", type=float, default=3e-3)
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--mask-seeds", type=int, default=1, help="learned masks per variant")
    parser.add_argument(
        "--strong-baselines", action="store_true", help="strong user for random masks too"
    )
    parser.add_argument(
        "--matched-seeds",
        type=int,
        default=1,
        help="random masks with the learned mask's channels per tensor",
    )
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    )
    parser.add_argument(
        "--head-ratios", default="0.2", help="also learn masks with a maskable head ('' skips)"
    )
    parser.add_argument(
        "--user-seeds", type=int, default=1,
        help="fine-tuning runs per mask (user seeds); results are per run",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every number to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unlearnable.defenses.freeze import (
        ClassificationAdapter,
        FinetuneConfig,
        FreezeConfig,
        build_mask,
        finetune,
        learn_freeze_mask,
        relearn,
    )
    from unlearnable.defenses.freeze_mask import resolve_excluded

    pre_classes, illegal, legal = SCENARIOS[args.scenario]
    readout = illegal + legal
    root = cifar10_root(args.data)
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]  # none: baselines only
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    pub_ill = load_split(root, "train", illegal, 0, args.publisher)
    pub_leg = load_split(root, "train", legal, 0, args.publisher)
    user_ill = load_split(root, "train", illegal, args.publisher, args.user)
    user_leg = load_split(root, "train", legal, args.publisher, args.user)
    test_ill = load_split(root, "test", illegal, 0, args.test)
    test_leg = load_split(root, "test", legal, 0, args.test)
    log(f"data from {root} ({args.threads} thread(s))")

    device = torch.device(args.device)
    pre, acc_pre = pretrain(root, pre_classes, args)
    log(f"θ_pre: pretraining classes test accuracy {100 * acc_pre:.1f}% ({len(pre_classes)}-way)")

    adapter = ClassificationAdapter(readout=readout)
    base = FreezeConfig(
        ratio=0.2, steps=args.steps, batch_size=args.batch_size, user_lr=args.user_lr_sim,
        mask_lr=args.mask_lr, penalty=args.penalty, relearn_epochs=args.relearn_epochs,
        seed=args.seed, device=args.device,
    )  # fmt: skip
    ft, _ = relearn(pre, pub_ill, pub_leg, adapter, base)
    ft.train(False)
    ft_ill = ClassificationAdapter(readout=illegal).evaluate(ft, test_ill, device)["acc"]
    ft_leg = ClassificationAdapter(readout=legal).evaluate(ft, test_leg, device)["acc"]
    ft.cpu()
    log(f"θ_ft: illegal pair acc {100 * ft_ill:.1f}%, legal pair acc {100 * ft_leg:.1f}%")

    excluded = resolve_excluded(pre, adapter.default_exclude(pre))
    maskable = [n for n, _ in pre.named_parameters() if n not in excluded]

    def user_accuracy(mask, train, test, classes, user_seed, strong=False):
        epochs, lr = args.user_epochs, args.user_lr
        if strong:
            epochs, lr = epochs * args.strong_factor, args.strong_lr
        model = copy.deepcopy(pre)
        config = FinetuneConfig(
            epochs=epochs, lr=lr, weight_decay=0.01, batch_size=32, seed=args.seed + user_seed,
            device=args.device,
        )  # fmt: skip
        result = finetune(model, mask, train, adapter, config)
        assert result.verified
        return ClassificationAdapter(readout=classes).evaluate(model, test, device)["acc"]

    def evaluate_runs(mask, strong=False):
        """One (illegal, legal, strong illegal or None) triple per user seed."""
        runs = []
        for u in range(args.user_seeds):
            ill = user_accuracy(mask, user_ill, test_ill, illegal, u)
            leg = user_accuracy(mask, user_leg, test_leg, legal, u)
            hard = None
            if strong and args.strong_factor > 0:
                hard = user_accuracy(mask, user_ill, test_ill, illegal, u, strong=True)
            runs.append((ill, leg, hard))
        return runs

    def evaluate(mask, strong=False):
        """Mean over the user seeds of (illegal, legal, strong illegal or None)."""
        ills, legs, hards = zip(*evaluate_runs(mask, strong), strict=True)
        hard = None if hards[0] is None else statistics.mean(hards)
        return statistics.mean(ills), statistics.mean(legs), hard

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    none_mask = build_mask(pre, [], excluded=excluded)
    full_ill, full_leg, strong_full = evaluate(none_mask, strong=True)
    log(f"no freezing: illegal {100 * full_ill:.1f}%, legal {100 * full_leg:.1f}%, "
        f"strong-user illegal {pct(strong_full)}")  # fmt: skip
    all_ill, all_leg, strong_all = evaluate(build_mask(pre, maskable, excluded=excluded), True)
    ceiling = 1 - all_ill / full_ill
    log(f"all frozen (head only): illegal {100 * all_ill:.1f}%, legal {100 * all_leg:.1f}%, "
        f"strong-user illegal {pct(strong_all)}")  # fmt: skip

    rows = []

    def reverted(mask):
        """Pair accuracies of θ_ft with the mask's groups put back to θ_pre (what the mask
        learner optimises: no fresh user involved)."""
        model = copy.deepcopy(ft)
        params, released = dict(model.named_parameters()), dict(pre.named_parameters())
        with torch.no_grad():
            for n, channels in mask.frozen.items():
                index = slice(None) if channels is None else list(channels)
                params[n][index] = released[n].detach()[index]
        model.to(device)
        ill = ClassificationAdapter(readout=illegal).evaluate(model, test_ill, device)["acc"]
        return ill, ClassificationAdapter(readout=legal).evaluate(model, test_leg, device)["acc"]

    def row(level, ratio, kind, masks, strong_first=False):
        strong_all = strong_first or args.strong_baselines
        results = [run for m in masks for run in evaluate_runs(m, strong=strong_all)]
        ills, legs, hards = zip(*results, strict=True)
        back = [reverted(m) for m in masks]
        entry = {
            "reverted_ill": [b[0] for b in back], "reverted_leg": [b[1] for b in back],
            "level": level, "ratio": ratio, "kind": kind,
            "groups": masks[0].share["groups"],
            "share_params": statistics.mean(m.share["parameters"] for m in masks),
            "ill": ills, "leg": legs,
            "mit": [1 - a / full_ill for a in ills], "imp": [1 - a / full_leg for a in legs],
            "strong": None if hards[0] is None else list(hards),
        }  # fmt: skip
        rows.append(entry)
        strong = (
            "" if hards[0] is None else f", strong-user illegal {100 * statistics.mean(hards):.1f}%"
        )
        log(f"{level} ρ={ratio} {kind}: illegal {100 * statistics.mean(ills):.1f}% "
            f"legal {100 * statistics.mean(legs):.1f}% mitigation "
            f"{statistics.mean(entry['mit']):+.3f} legal impact "
            f"{statistics.mean(entry['imp']):+.3f}{strong}; θ_ft reverted: illegal "
            f"{100 * statistics.mean(entry['reverted_ill']):.1f}% legal "
            f"{100 * statistics.mean(entry['reverted_leg']):.1f}%")  # fmt: skip

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    for level in levels:
        sizes = group_sizes(pre, maskable, level)
        for ratio in ratios:
            baselines_done = set()
            for variant in variants:
                change = dict(VARIANTS[variant])
                tied = bool(change.get("tie_norm"))
                if tied and level != "channel":
                    continue
                if "reset_interval" in change:
                    change["reset_interval"] = args.reset_interval
                    change["steps"] = args.fresh_steps
                    change["user_lr"] = args.fresh_lr_sim
                config = FreezeConfig(**{**base.__dict__, "ratio": ratio, "level": level,
                                         **change})  # fmt: skip
                learned = []  # one mask per mask-learning seed (the rest is unchanged)
                for j in range(args.mask_seeds):
                    seeded = FreezeConfig(**{**config.__dict__, "seed": args.seed + j})
                    result = learn_freeze_mask(pre, pub_ill, pub_leg, adapter, seeded,
                                               start_from=ft)  # fmt: skip
                    learned.append(result.mask)
                final = result.rows[-1]
                mask = learned[0]
                per_tensor = {n: (len(c) if c is not None else sizes[n]) for n, c in
                              mask.frozen.items()}  # fmt: skip
                log(f"{level} ρ={ratio} {variant}: learned in {result.seconds:.0f} s, soft "
                    f"mean {final['mask_mean']:.3f}, frozen groups per tensor {per_tensor}")  # fmt: skip
                families = families_of(pre, maskable, tied)
                k = round(ratio * count(families, sizes))
                suffix = " (tied)" if tied else ""
                shown = f" x{len(learned)}" if len(learned) > 1 else ""
                row(level, ratio, f"learned {variant}{shown}", learned, strong_first=True)
                if tied not in baselines_done:  # one set of baselines per kind of group
                    baselines_done.add(tied)
                    picked = largest_change(pre, ft, families, sizes, level, k)
                    row(level, ratio, f"largest change{suffix}",
                        [build_mask(pre, picked, level=level, excluded=excluded)],
                        strong_first=True)  # fmt: skip
                    randoms = [
                        build_mask(pre, random_groups(families, sizes, level, k, 1000 + s),
                                   level=level, excluded=excluded)
                        for s in range(args.random_seeds)
                    ]  # fmt: skip
                    row(level, ratio, f"random{suffix} x{args.random_seeds}", randoms)
                matched = [matched_random(mask, families, sizes, level, 2000 + s)
                           for s in range(args.matched_seeds)]  # fmt: skip
                if level == "channel" and matched:
                    masks = [build_mask(pre, m, level=level, excluded=excluded) for m in matched]
                    row(level, ratio, f"matched random {variant} x{len(masks)}", masks)

    head_rows = []
    for ratio in [float(r) for r in args.head_ratios.split(",") if r.strip()]:
        # the head is maskable too: its rows (one per class) are groups like any channel
        config = FreezeConfig(**{**base.__dict__, "ratio": ratio, "level": "channel",
                                 "exclude": ()})  # fmt: skip
        mask = learn_freeze_mask(pre, pub_ill, pub_leg, adapter, config, start_from=ft).mask
        head = {n: c for n, c in mask.frozen.items() if n in excluded}
        ill, leg, _ = evaluate(mask)
        rows_frozen = set()
        for c in head.values():
            rows_frozen |= set(range(10)) if c is None else set(c)
        free = [r for r in range(10) if r not in rows_frozen and r not in legal]
        relabel = dict(zip(illegal, free[:2], strict=False))
        moved = None
        if len(relabel) == 2:  # a user who knows the (published) mask trains other outputs
            mapping = torch.arange(10)
            for a, b in relabel.items():
                mapping[a] = b
            train = type(user_ill)(user_ill.images, mapping[user_ill.labels])
            test = type(test_ill)(test_ill.images, mapping[test_ill.labels])
            model = copy.deepcopy(pre)
            cfg = FinetuneConfig(epochs=args.user_epochs, lr=args.user_lr, weight_decay=0.01,
                                 batch_size=32, seed=args.seed, device=args.device)  # fmt: skip
            finetune(model, mask, train, ClassificationAdapter(readout=tuple(free[:2]) + legal),
                     cfg)  # fmt: skip
            readout = ClassificationAdapter(readout=tuple(free[:2]))
            moved = readout.evaluate(model, test, device)["acc"]
        head_rows.append((ratio, head, ill, leg, relabel, moved))
        log(f"head maskable ρ={ratio}: head groups frozen {head}; illegal {100 * ill:.1f}% "
            f"legal {100 * leg:.1f}%; relabelling user (outputs {relabel}) "
            f"{'-' if moved is None else f'{100 * moved:.1f}%'}")  # fmt: skip

    def pm(values, pct=True):
        scale = 100 if pct else 1
        mean = statistics.mean(values) * scale
        if len(values) == 1:
            return f"{mean:.1f}" if pct else f"{mean:+.3f}"
        spread = statistics.stdev(values) * scale
        return f"{mean:.1f}±{spread:.1f}" if pct else f"{mean:+.3f}±{spread:.3f}"

    name = lambda cs: "/".join(CLASSES[c] for c in cs)  # noqa: E731
    print()
    print(
        f"FreezeAsGuard on CIFAR-10 JPEG, scenario {args.scenario}: small-cnn, θ_pre on "
        f"{name(pre_classes)} ({args.pretrain_per_class}/class, {args.pretrain_epochs} epochs, "
        f"test acc {100 * acc_pre:.1f}%); illegal {name(illegal)}, legal {name(legal)}; "
        f"publisher {args.publisher}/class, user {args.user}/class (disjoint), test "
        f"{args.test}/class; {len(maskable)} maskable tensors (head excluded); mask learning "
        f"{args.steps} user steps (SGD {args.user_lr_sim}), mask lr {args.mask_lr}, penalty "
        f"{args.penalty}; fresh variants: {args.fresh_steps} steps (SGD {args.fresh_lr_sim}), "
        f"reset every {args.reset_interval}; users: AdamW {args.user_lr}, {args.user_epochs} epochs, batch 32; "
        f"strong user: {args.strong_factor}x epochs, lr {args.strong_lr}. Pair accuracy, "
        f"chance 50%. θ_ft: illegal {100 * ft_ill:.1f}%, legal {100 * ft_leg:.1f}%."
    )
    strong_ceiling = "-" if strong_all is None else f"{1 - strong_all / strong_full:+.3f}"
    print(
        f"no freezing: illegal {100 * full_ill:.1f}%, legal {100 * full_leg:.1f}%, strong "
        f"illegal {pct(strong_full)}. All maskable tensors frozen (only the head trains): "
        f"illegal {100 * all_ill:.1f}% (mitigation {ceiling:+.3f}), legal "
        f"{100 * all_leg:.1f}% (impact {1 - all_leg / full_leg:+.3f}), strong illegal "
        f"{pct(strong_all)} (mitigation {strong_ceiling})"
    )
    print(
        "| level | ρ | mask | frozen params | Acc_ill % | Acc_leg % | mitigation "
        "| legal impact | strong Acc_ill % | strong mitigation | θ_ft reverted Acc_ill / Acc_leg % |"
    )
    print("|" + "---|" * 11)
    for r in rows:
        strong = r["strong"]
        print(
            f"| {r['level']} | {r['ratio']} | {r['kind']} | {100 * r['share_params']:.1f}% | "
            f"{pm(r['ill'])} | {pm(r['leg'])} | {pm(r['mit'], False)} | {pm(r['imp'], False)} | "
            + (f"{pm(strong)} | {pm([1 - a / strong_full for a in strong], False)} |"
               if strong is not None else "- | - |")
            + f" {pm(r['reverted_ill'])} / {pm(r['reverted_leg'])} |"
        )  # fmt: skip
    if head_rows:
        print()
        print("Head maskable (channel level, head rows = groups; not the threat model above):")
        print(
            "| ρ | frozen head groups | Acc_ill % | Acc_leg % | mitigation | legal impact "
            "| relabelling user Acc_ill % | its mitigation |"
        )
        print("|" + "---|" * 8)
        for ratio, head, ill, leg, relabel, moved in head_rows:
            shown = ", ".join(f"{n}: {'all' if c is None else list(c)}" for n, c in head.items())
            print(
                f"| {ratio} | {shown or 'none'} | {100 * ill:.1f} | {100 * leg:.1f} | "
                f"{1 - ill / full_ill:+.3f} | {1 - leg / full_leg:+.3f} | "
                + (
                    "- | - |"
                    if moved is None
                    else f"{100 * moved:.1f} (outputs {relabel}) | {1 - moved / full_ill:+.3f} |"
                )
            )
    print()
    for level in levels:
        for ratio in ratios:
            here = [r for r in rows if r["ratio"] == ratio and r["level"] == level]
            for variant in variants:
                kinds = {r["kind"].split(" x")[0]: r for r in here}
                if f"learned {variant}" not in kinds:
                    continue
                tied = " (tied)" if VARIANTS[variant].get("tie_norm") else ""
                names = {"learned": f"learned {variant}", "random": f"random{tied}",
                         "largest change": f"largest change{tied}",
                         "matched random": f"matched random {variant}"}  # fmt: skip
                by = {k: kinds[name] for k, name in names.items() if name in kinds}
                mit = {k: statistics.mean(v["mit"]) for k, v in by.items()}
                imp = {k: statistics.mean(v["imp"]) for k, v in by.items()}
                rivals = [k for k in ("random", "largest change", "matched random") if k in mit]
                best = max(rivals, key=lambda k: mit[k])
                margin = mit["learned"] - mit[best]
                runs_se = _runs_se(by["learned"]["mit"], by[best]["mit"])
                # two standard errors of a difference of two pair accuracies on the test
                # images, relative to Acc_ill(no freezing): smaller margins are noise
                p = statistics.mean(by["learned"]["ill"])
                noise = 2 * math.sqrt(2 * p * (1 - p) / (len(illegal) * args.test)) / full_ill
                if not (margin > 0 and mit["learned"] > 0 and imp["learned"] < 0.10):
                    verdict = "misses the goal"
                elif margin < noise:
                    verdict = f"meets the goal's letter, but the margin is within noise (2 SE {noise:.3f})"
                else:
                    verdict = f"meets the goal (margin above 2 SE {noise:.3f})"
                if runs_se is not None:
                    verdict += (
                        f"; over runs (mask x user seeds) the margin is "
                        f"{margin / runs_se:.1f} SE of the run-to-run spread"
                    )
                matched = (
                    f", matched random {mit['matched random']:+.3f} (impact "
                    f"{imp['matched random']:+.3f})" if "matched random" in mit else ""
                )  # fmt: skip
                print(
                    f"{level} ρ={ratio} {variant}: learned mitigation {mit['learned']:+.3f} vs "
                    f"random{tied} {mit['random']:+.3f}, largest change{tied} "
                    f"{mit['largest change']:+.3f}{matched}; legal impact {imp['learned']:+.3f} "
                    f"(random {imp['random']:+.3f}, largest change {imp['largest change']:+.3f}); "
                    f"head-only ceiling {ceiling:+.3f}; margin over the best baseline "
                    f"{margin:+.3f} -> {verdict}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "pretrain_acc": acc_pre, "ft": [ft_ill, ft_leg],
            "none": [full_ill, full_leg, strong_full], "all_frozen": [all_ill, all_leg, strong_all],
            "rows": rows, "head": [list(h[:4]) + [h[5]] for h in head_rows],
        }, indent=1))  # fmt: skip
    log("done")


def _runs_se(a: list[float], b: list[float]) -> float | None:
    """Standard error of ``mean(a) - mean(b)`` from the run-to-run spread (Welch; None when
    either side has a single run or no spread)."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return se or None


if __name__ == "__main__":
    main()
