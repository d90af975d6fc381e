"""Why RNP removal fails or works on the EBYD benchmark's models: the full pruning sweep.

For each model cached by ``benchmarks/ebyd_cifar10.py`` (same ``--work`` and data settings):
expose it (CUL, library defaults), learn the batch-norm masks on the exposed model (RNP
defaults, 20 epochs), then prune the ORIGINAL model in several ways and print defense-set
accuracy, test CA and ASR for each:

* ``tau``: every channel with mask <= tau (RNP's threshold sweep; many masks end at exactly 0);
* ``count``: the k lowest-ranked channels (ties broken by the mask's mean over the epochs);
* ``layer``: the lowest fraction f of every layer (per-layer ranking);
* ``count@5``: the k lowest of the masks after 5 epochs;
* ``ORACLE``: the k channels whose pruning raises the backdoor loss most relative to the clean
  loss to first order (uses the trigger: a diagnostic of where the backdoor sits, not a
  ceiling (first order only), never a defence);
* ``rule ...``: what :func:`choose_pruning` picks from defense-set accuracy only (by threshold,
  by count at two tolerances, by layer = the library default), measured on ALL test images;
* ``ORACLE masks``: masks learned on the original model WITH the trigger (CE on clean images
  and on triggered images with their true labels): a rough ceiling for a mask ranking;
* ``unexposed`` / ``gentle`` (``--variants``): masks learned on the un-exposed model, or on a
  gentler exposure (stop at ``--gentle-stop`` defense accuracy), ``--variant-mask-epochs``.

Backdoored models get every row; clean controls only the ``rule`` rows (what a rule costs).
Sweep rows measure CA on every ``--eval-step``-th test image and ASR on the non-target ones
among them (fast); ``rule`` rows use every test image. ASR is printed, never used to choose.
``--rules layer`` runs only that rule on every model; ``--oracle-only`` only the trigger-aware
masks. About 2 min per backdoored model at one thread on an idle core.

    OMP_NUM_THREADS=1 flock /tmp/lane-b.lock nice -n 5 python benchmarks/ebyd_removal_sweep.py
    ... ebyd_removal_sweep.py --rules layer --variants ""        # the default rule, 6 models
    ... ebyd_removal_sweep.py --oracle-only --oracle-mask-epochs 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import cifar10_root  # noqa: E402
from _ebyd_subjects import load_data, trained_subject  # noqa: E402
from ebyd_cifar10 import EXTRA, SUBJECTS  # noqa: E402

from unlearnable.attacks.backdoor import attack_success_rate  # noqa: E402
from unlearnable.attacks.training import TrainConfig  # noqa: E402
from unlearnable.defenses.exposure import ExposureConfig, clone_model, expose  # noqa: E402
from unlearnable.defenses.removal import (  # noqa: E402
    MaskConfig,
    MaskedModel,
    MaskResult,
    PruneConfig,
    choose_pruning,
    learn_masks,
    per_layer,
    prune,
    prune_channels,
    rank_channels,
)
from unlearnable.training.classification import evaluate  # noqa: E402

DEFAULT_MODELS = "badnets-t0-s0,badnets-t5-s1,blend-t3-s2,clean-s0,clean-s1,clean-s2"


def oracle_ranking(model, images, labels, trigger, target) -> list[tuple[str, int]]:
    """DIAGNOSTIC (uses the trigger): channels by first-order rise of the backdoor loss minus
    the rise of the clean loss when their mask goes 1 -> 0, largest first."""
    masked = MaskedModel(clone_model(model)).eval()
    x = images.float() / 255
    keep = labels != target

    def grads(inputs, targets):
        for p in masked.masks:
            p.grad = None
        F.cross_entropy(masked(inputs), targets).backward()
        return torch.cat([p.grad.detach().clone() for p in masked.masks])

    bd = -grads(trigger.apply(x[keep]), torch.full((int(keep.sum()),), target))
    cl = -grads(x, labels)
    names = [(n, c) for n, m in masked.layers for c in range(m.num_features)]
    masked.remove()
    return [names[i] for i in torch.argsort(bd - cl, descending=True).tolist()]


def oracle_masks(model, images, labels, trigger, target, epochs: int, seed: int):
    """DIAGNOSTIC (uses the trigger): masks on the ORIGINAL model trained to keep clean
    accuracy AND unlearn the trigger (CE on clean images + CE on triggered non-target images
    with their true labels, RNP's optimiser: SGD lr 0.2, momentum 0.9, alpha 0.2, train mode,
    clamp to [0, 1]). Its ranking is a rough ceiling for any clean-data mask ranking."""
    masked = MaskedModel(clone_model(model)).train()
    x = images.float() / 255
    keep = labels != target
    xt, yt = trigger.apply(x[keep]), labels[keep]
    opt = torch.optim.SGD(masked.masks.parameters(), lr=0.2, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order, order_t = (
            torch.randperm(len(x), generator=gen),
            torch.randperm(len(xt), generator=gen),
        )
        for i in range(0, len(x), 128):
            j = order_t[i * len(xt) // len(x) : (i + 128) * len(xt) // len(x)]
            loss = F.cross_entropy(masked(x[order[i : i + 128]]), labels[order[i : i + 128]])
            loss = 0.2 * (loss + F.cross_entropy(masked(xt[j]), yt[j]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for m in masked.masks:
                    m.clamp_(0.0, 1.0)
    masked.remove()
    return MaskResult(masked.values(), [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--defense-per-class", type=int, default=50)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--arch", default="small-cnn")
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--mask-epochs", type=int, default=20)
    parser.add_argument(
        "--eval-step", type=int, default=4, help="Sweep rows: every n-th test image."
    )
    parser.add_argument("--work", default=str(Path.home() / ".cache/unlearnable/ebyd-bench"))
    parser.add_argument("--json", default=None, help="Write every row here (JSON list).")
    parser.add_argument("--variants", default="unexposed,gentle",
                        help="Backdoored models: also masks on the un-exposed model and/or on a "
                        "gentler exposure (comma list; empty: none).")  # fmt: skip
    parser.add_argument("--gentle-stop", type=float, default=0.45)
    parser.add_argument("--oracle-mask-epochs", type=int, default=10,
                        help="Trigger-aware masks (diagnostic ceiling); 0: skip.")  # fmt: skip
    parser.add_argument("--variant-mask-epochs", type=int, default=10)
    parser.add_argument("--rules", default="",
                        help="Only these rules (comma list of threshold,count,layer).")  # fmt: skip
    parser.add_argument("--oracle-only", action="store_true",
                        help="Only the trigger-aware masks (finer counts), backdoored models.")  # fmt: skip
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
    sub = torch.arange(0, len(test), args.eval_step)
    sx, sy = test.images[sub], test.labels[sub]
    config = TrainConfig(epochs=args.epochs, lr=args.lr, augment=False)
    wanted = args.models.split(",")
    out: list[dict] = []
    print(f"sweep rows: CA on {len(sub)} test images, ASR on their non-target ones; "
          f"rule rows: all {len(test)}", flush=True)  # fmt: skip
    print("model | masks | way | amount | pruned | defense acc | CA | ASR", flush=True)
    subjects = {s[0]: s for s in SUBJECTS + EXTRA}
    for name in wanted:
        _, trigger, target, rate, seed = subjects[name]
        t0 = time.time()
        model, _facts = trained_subject(
            name, trigger, target, rate, seed, args.arch, args.train_per_class, config,
            classes, data, work,
        )  # fmt: skip

        def row(masks_name, way, amount, pruned, count, full=False, name=name, trigger=trigger,
                target=target):  # fmt: skip
            x, y = (test.images, test.labels) if full else (sx, sy)
            r = {
                "model": name, "masks": masks_name, "way": way, "amount": amount,
                "pruned": count, "defense_acc": evaluate(pruned, defense.images, defense.labels),
                "CA": evaluate(pruned, x, y),
                "ASR": attack_success_rate(pruned, x, y, trigger, target),
                "full_test": full,
            }  # fmt: skip
            out.append(r)
            print(f"{name} | {masks_name} | {way} | {amount} | {count} | "
                  f"{100 * r['defense_acc']:.1f} | {100 * r['CA']:.1f} | {100 * r['ASR']:.1f}",
                  flush=True)  # fmt: skip
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=1))

        def count_rows(label, result, ks, model=model):
            ranked = rank_channels(result.masks, result.history)
            for k in ks:
                row(label, "count", k,
                    prune_channels(model, [(n, c) for _, n, c in ranked[:k]]), k)  # fmt: skip
            return ranked

        def rule_rows(label, result, rules, model=model):
            for way, cfg in rules:
                choice = choose_pruning(model, result.masks, defense.images, defense.labels,
                                        cfg, history=result.history)  # fmt: skip
                row(label, way, round(choice.threshold, 3), choice.model, len(choice.channels),
                    full=True)  # fmt: skip

        row("-", "none", "-", model, 0, full=True)
        if args.oracle_only:
            if rate > 0:
                row("-", "none (sweep images)", "-", model, 0)
                trained = oracle_masks(model, defense.images, defense.labels, trigger, target,
                                       args.oracle_mask_epochs, seed)  # fmt: skip
                count_rows(f"ORACLE masks ep{args.oracle_mask_epochs}", trained,
                           (8, 16, 24, 32, 48))  # fmt: skip
            continue
        exposed = expose(model, defense.images, defense.labels, 10, ExposureConfig())
        result = learn_masks(
            exposed.model, defense.images, defense.labels,
            MaskConfig(epochs=args.mask_epochs, seed=seed),
        )  # fmt: skip
        masks, history = result.masks, result.history
        label = f"exposed ep{args.mask_epochs}"
        values = torch.cat(list(masks.values()))
        layers = " ".join(f"{n}:{int((v <= 0).sum())}/{v.numel()}" for n, v in masks.items())
        print(f"{name}: exposure {exposed.epochs} epochs, defense acc "
              f"{exposed.final['clean_acc']:.3f}; masks: {int((values <= 0).sum())} at 0, "
              f"{int((values <= 0.2).sum())} <= 0.2 of {values.numel()} (at 0 per layer {layers});"
              f" mask-learning defense acc {result.rows[-1]['clean_acc']:.3f}", flush=True)  # fmt: skip
        rules = [
            ("rule threshold max-drop 0.05", PruneConfig()),
            ("rule count max-drop 0.05", PruneConfig(by="count")),
            ("rule count max-drop 0.03", PruneConfig(by="count", max_drop=0.03)),
            ("rule layer max-drop 0.05", PruneConfig(by="layer")),
        ]
        if args.rules:
            rules = [r for r in rules if r[0].split()[1] in args.rules.split(",")]
        if rate == 0 or args.rules:  # a clean control (or --rules): only the rules
            rule_rows(label, result, rules)
            print(f"{name}: {time.time() - t0:.0f}s", flush=True)
            continue
        for tau in (0.0, 0.05, 0.1, 0.2, 0.3):
            pruned, channels = prune(model, masks, tau)
            row(label, "tau", tau, pruned, len(channels))
        ranked = count_rows(label, result, (2, 4, 8, 16, 32, 64))
        for f in (1 / 32, 1 / 16, 1 / 8):
            chosen = per_layer(ranked, f)
            row(label, "layer", round(f, 4), prune_channels(model, chosen), len(chosen))
        early = min(5, len(history))
        count_rows(f"exposed ep{early}", MaskResult(history[early - 1], [], history[:early]),
                   (4, 16, 64))  # fmt: skip
        oracle = oracle_ranking(model, sx, sy, trigger, target)
        for k in (4, 16, 64):
            row("ORACLE first-order", "count", k, prune_channels(model, oracle[:k]), k)
        if args.oracle_mask_epochs:
            trained = oracle_masks(model, defense.images, defense.labels, trigger, target,
                                   args.oracle_mask_epochs, seed)  # fmt: skip
            count_rows(f"ORACLE masks ep{args.oracle_mask_epochs}", trained, (4, 8, 16, 32))
        rank_of = {(n, c): i for i, (_, n, c) in enumerate(ranked)}
        print(f"{name}: exposed-mask ranks of the 10 ORACLE channels: "
              f"{[rank_of[ch] for ch in oracle[:10]]}", flush=True)  # fmt: skip
        rule_rows(label, result, rules)
        for variant in filter(None, args.variants.split(",")):
            if variant == "unexposed":
                source = model
            elif variant == "gentle":
                gentle = expose(model, defense.images, defense.labels, 10,
                                ExposureConfig(stop_accuracy=args.gentle_stop))  # fmt: skip
                source = gentle.model
                variant = f"gentle({gentle.epochs} ep, {gentle.final['clean_acc']:.2f})"
            else:
                raise SystemExit(f"unknown variant {variant!r}")
            other = learn_masks(source, defense.images, defense.labels,
                                MaskConfig(epochs=args.variant_mask_epochs, seed=seed))  # fmt: skip
            vlabel = f"{variant} ep{args.variant_mask_epochs}"
            ranked_v = count_rows(vlabel, other, (4, 16, 32, 64))
            rank_v = {(n, c): i for i, (_, n, c) in enumerate(ranked_v)}
            print(f"{name}: {vlabel} ranks of the 10 ORACLE channels: "
                  f"{[rank_v[ch] for ch in oracle[:10]]}", flush=True)  # fmt: skip
            rule_rows(vlabel, other, rules[1:2])
        print(f"{name}: {time.time() - t0:.0f}s", flush=True)
    print(f"total {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
