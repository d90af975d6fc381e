"""The EBYD benchmark's defence phase: scan (several exposures, every detector variant from the
same runs), purify (RNP pruning, then trigger unlearning toward the detected target), baselines,
and the table."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from unlearnable.attacks.backdoor import attack_success_rate
from unlearnable.defenses.detection import (
    DetectionConfig,
    auroc,
    detect_exposures,
    featureless_prior,
)
from unlearnable.defenses.ebyd_data import split_defense
from unlearnable.defenses.exposure import ExposureConfig, clone_model, expose
from unlearnable.defenses.removal import MaskConfig, PruneConfig, choose_pruning, learn_masks
from unlearnable.defenses.trigger_unlearn import (
    RecoveredTrigger,
    UnlearnConfig,
    unlearn_backdoor,
    unlearn_triggers,
)
from unlearnable.training import FitConfig, fit, stream_generator
from unlearnable.training.classification import ClassifierBatches, evaluate

#: Detector variants read from the same exposure runs: name -> (runs used, config).
#: "single": the full defense set, one exposure (the uncalibrated detector before);
#: "agree2": two exposures on disjoint halves, agreed histogram.
VARIANTS = {
    "single-final": ("full", DetectionConfig(readout="final")),
    "agree2-final": ("halves", DetectionConfig(readout="final")),
    "single-early": ("full", DetectionConfig(readout="early")),
    "agree2-early": ("halves", DetectionConfig(readout="early")),
    "agree2-early50": ("halves", DetectionConfig(readout="early", early_drop=0.5)),
}
#: The same variants less the featureless prior (``<name>+prior``).
PRIOR_VARIANTS = ("single-final", "agree2-final", "agree2-early")


def detections(row: dict, threshold: float = 0.0) -> dict[str, dict]:
    """Every detector variant, recomputed from the exposure rows a run stored."""
    runs = {"full": [row["rows"]["full"]], "halves": row["rows"]["halves"]}
    out = {
        name: detect_exposures(runs[which], replace(cfg, threshold=threshold)).to_dict()
        for name, (which, cfg) in VARIANTS.items()
    }
    if row.get("prior") is not None:
        for name in PRIOR_VARIANTS:
            which, cfg = VARIANTS[name]
            out[f"{name}+prior"] = detect_exposures(
                runs[which], replace(cfg, threshold=threshold), row["prior"]
            ).to_dict()
    return out


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


def defend(model, trigger, target, rate, seed, data, args) -> dict:
    defense, test = data["defense"], data["test"]
    # the histograms are read on a class-balanced sample of the clean test images
    hold = split_defense(test.labels, args.holdout, seed=0)[0]
    hold_images, hold_labels = test.images[hold], test.labels[hold]

    def metrics(m):
        return (
            evaluate(m, test.images, test.labels),
            attack_success_rate(m, test.images, test.labels, trigger, target),
        )

    exposure_cfg = ExposureConfig(max_epochs=args.max_epochs)
    full = expose(model, defense.images, defense.labels, 10, exposure_cfg, hold_images,
                  hold_labels)  # fmt: skip
    first, _ = split_defense(defense.labels, len(defense) // 2, seed=1000 + seed)
    second = torch.tensor(sorted(set(range(len(defense))) - set(first.tolist())))
    halves = [
        expose(
            model,
            defense.images[idx],
            defense.labels[idx],
            10,
            replace(exposure_cfg, seed=j + 1),
            hold_images,
            hold_labels,
        )  # fmt: skip
        for j, idx in enumerate((first, second))
    ]
    asr_exposed = attack_success_rate(full.model, test.images, test.labels, trigger, target)
    prior = featureless_prior(model, hold_images, 10)
    prune_cfg = PruneConfig(max_drop=args.max_drop)
    masks = learn_masks(full.model, defense.images, defense.labels, MaskConfig(seed=seed))
    choice = choose_pruning(model, masks.masks, defense.images, defense.labels, prune_cfg,
                            history=masks.history)  # fmt: skip
    ca_pr, asr_pr = metrics(choice.model)
    # the library's purify: unlearn toward the detected target; a model that is not flagged
    # keeps the pruned model. Unflagged models are unlearned toward their top class anyway, to
    # show what a false flag would cost (CA_unl, ASR_unl).
    detection = detect_exposures([full.rows], DetectionConfig(threshold=args.threshold), prior)
    toward = detection.target if detection.target is not None else detection.top_class
    unl = unlearn_backdoor(choice.model, defense.images, defense.labels, toward,
                           UnlearnConfig(seed=seed), pruned=choice.channels)  # fmt: skip
    ca_u, asr_u = metrics(unl.model)
    ca_p, asr_p = (ca_u, asr_u) if detection.target is not None else (ca_pr, asr_pr)
    # control: the same unlearning with a random pattern under the recovered mask
    first = unl.triggers[0]
    noise = torch.rand(first.pattern.shape, generator=torch.Generator().manual_seed(99))
    decoy = RecoveredTrigger(first.mask, noise, toward, 0.0, first.mask_pixels)
    ctl, _ = unlearn_triggers(choice.model, defense.images, defense.labels, [decoy],
                              UnlearnConfig(seed=seed), pruned=choice.channels)  # fmt: skip
    ca_c, asr_c = metrics(ctl)
    ft_ca, ft_asr = metrics(fine_tune(model, defense.images, defense.labels, 10, seed))
    raw = learn_masks(model, defense.images, defense.labels, MaskConfig(seed=seed))
    raw_choice = choose_pruning(model, raw.masks, defense.images, defense.labels, prune_cfg,
                                history=raw.history)  # fmt: skip
    raw_ca, raw_asr = metrics(raw_choice.model)
    return {
        "exposure_epochs": [full.epochs] + [h.epochs for h in halves],
        "exposed_acc": full.final["clean_acc"],
        "ASR_exposed": asr_exposed,
        "tau": choice.threshold,
        "pruned": len(choice.channels),
        "CA_pruned": ca_pr,
        "ASR_pruned": asr_pr,
        "unlearned_toward": toward,
        "unlearned": detection.target is not None,
        "trigger_pixels": [t.mask_pixels for t in unl.triggers],
        "CA_unlearned": ca_u,
        "ASR_unlearned": asr_u,
        "CA_decoy": ca_c,
        "ASR_decoy": asr_c,
        "CA_purified": ca_p,
        "ASR_purified": asr_p,
        "CA_finetune": ft_ca,
        "ASR_finetune": ft_asr,
        "tau_unexposed": raw_choice.threshold,
        "CA_unexposed_masks": raw_ca,
        "ASR_unexposed_masks": raw_asr,
        "rows": {"full": full.rows, "halves": [h.rows for h in halves]},
        "prior": list(prior),
    }


def add_priors(rows, models, data, args) -> None:
    """Featureless priors for rows of an older run that lack them (cheap: one forward pass)."""
    test = data["test"]
    hold = split_defense(test.labels, args.holdout, seed=0)[0]
    for row, (name, *_, model, _facts) in zip(rows, models, strict=False):
        if row.get("prior") is None and row["model"] == name:
            row["prior"] = list(featureless_prior(model, test.images[hold], 10))


def defend_all(models, data, args, start: float) -> None:
    rows = []
    out = Path(args.json) if args.json else None
    for name, trigger, target, rate, seed, model, facts in models:
        t0 = time.time()
        row = {"model": name, "backdoored": rate > 0, "target": target, "CA": facts["CA"],
               "ASR": facts["ASR"], "cached": facts["cached"]}  # fmt: skip
        row.update(defend(model, trigger, target, rate, seed, data, args))
        row["detections"] = detections(row)  # raw scores (threshold 0)
        row["seconds"] = time.time() - t0
        rows.append(row)
        brief = {k: v for k, v in row.items() if k not in ("rows", "detections")}
        brief["det"] = {
            k: [d["top_class"], round(d["score"], 3), d["tops"]]
            for k, d in row["detections"].items()
        }
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in brief.items()}), flush=True)  # fmt: skip
        if out is not None:
            out.write_text(json.dumps(rows, indent=1))
    print_table(rows, time.time() - start, args)


def _p(v) -> str:
    return "    -" if v is None else f"{100 * v:5.1f}"


def verdicts(rows, variant: str, threshold: float) -> list[tuple[bool, int | None]]:
    """(flagged, target) per row for a detector variant at ``threshold``."""
    out = []
    for r in rows:
        d = detections(r, threshold)[variant]
        out.append((d["flagged"], d["target"]))
    return out


def print_table(rows, seconds: float, args) -> None:
    chosen = args.detector
    threshold = args.threshold
    for r in rows:
        r["detections"] = detections(r)  # with this version of the library
    print(
        f"\nEBYD on CIFAR-10 JPEG ({args.arch}, {args.train_per_class}/class x {args.epochs} "
        f"epochs, lr {args.lr}{' + crop/flip' if args.augment else ', no augmentation'}; "
        f"defense {args.defense_per_class}/class held out of training; CA/ASR on "
        f"{args.test_per_class}/class test images; histograms on the first {args.holdout}; CUL "
        f"SGD 0.01 until defense acc <= 0.20 (max {args.max_epochs} epochs); detector "
        f"{chosen}, flag at score >= {threshold}; prune: lowest-mask fraction per layer, max "
        f"defense-acc drop {args.max_drop}; tau = highest pruned mask)"
    )
    head = ("model", "CA", "ASR", "ep", "ASRexp", "score", "tops", "verdict", "t/det", "tau",
            "#pr", "CA_prune", "ASR_prune", "unl>", "CA_unl", "ASR_unl", "CA_pur", "ASR_pur",
            "CA_decoy", "ASR_decoy", "CA_ft", "ASR_ft", "CA_unexp", "ASR_unexp")  # fmt: skip
    print(" | ".join(head))
    flags = verdicts(rows, chosen, threshold)
    for r, (flagged, det) in zip(rows, flags, strict=True):
        d = r["detections"][chosen]
        tgt = str(r["target"]) if r["backdoored"] else "-"
        print(" | ".join([
            f"{r['model']:<14}", _p(r["CA"]), _p(r["ASR"]),
            "/".join(str(e) for e in r["exposure_epochs"]), _p(r["ASR_exposed"]),
            f"{d['score']:.2f}", "/".join(str(t) for t in d["tops"]),
            "FLAG " if flagged else "clean", f"{tgt}/{'-' if det is None else det}",
            f"{r['tau']:.2f}", f"{r['pruned']:3d}",
            _p(r.get("CA_pruned", r["CA_purified"])), _p(r.get("ASR_pruned", r["ASR_purified"])),
            str(r.get("unlearned_toward", "-")) + ("" if r.get("unlearned") else "*"),
            _p(r.get("CA_unlearned")), _p(r.get("ASR_unlearned")),
            _p(r["CA_purified"]), _p(r["ASR_purified"]),
            _p(r.get("CA_decoy")), _p(r.get("ASR_decoy")),
            _p(r["CA_finetune"]), _p(r["ASR_finetune"]),
            _p(r["CA_unexposed_masks"]), _p(r["ASR_unexposed_masks"]),
        ]))  # fmt: skip
    bad = [r for r in rows if r["backdoored"]]
    good = [r for r in rows if not r["backdoored"]]
    print(f"\nall detector variants (raw scores; n = {len(bad)} backdoored + {len(good)} clean, "
          "small n):")  # fmt: skip
    for variant in rows[0]["detections"]:
        area = auroc([r["detections"][variant]["score"] for r in bad],
                     [r["detections"][variant]["score"] for r in good])  # fmt: skip
        right = sum(r["detections"][variant]["top_class"] == r["target"] for r in bad)
        scores = " ".join(
            f"{r['model']}={r['detections'][variant]['score']:.2f}"
            f"({r['detections'][variant]['top_class']})"
            for r in rows
        )
        print(
            f"  {variant:<14} AUROC {'-' if area is None else f'{area:.3f}'}  top class = target {right}/{len(bad)}  {scores}"
        )
    hits = sum(f and t == r["target"] for r, (f, t) in zip(rows, flags, strict=True)
               if r["backdoored"])  # fmt: skip
    false = sum(f for r, (f, _) in zip(rows, flags, strict=True) if not r["backdoored"])
    print(f"\n{chosen} at {threshold}: backdoored flagged with the right target {hits}/{len(bad)}; "
          f"clean flagged {false}/{len(good)}")  # fmt: skip
    print("unl> = class unlearned toward (* = not flagged: purify keeps the pruned model; the "
          "CA_unl/ASR_unl columns show what a false flag would cost); decoy = the same "
          "unlearning with a random pattern under the recovered mask (control)")  # fmt: skip
    goal = [r for r in bad if r["ASR_purified"] < 0.10 and r["CA"] - r["CA_purified"] < 0.05]
    print(f"purified ASR < 10% with CA drop < 5 points: {len(goal)}/{len(bad)}")
    drops = [r["CA"] - r["CA_purified"] for r in good]
    if drops:
        print(f"clean models: purify's CA drop {', '.join(f'{100 * d:.1f}' for d in drops)} "
              "points")  # fmt: skip
    for what in ("pruned", "decoy", "finetune", "unexposed_masks"):
        if any(f"ASR_{what}" not in r for r in bad):
            continue
        ok = [r for r in bad if r[f"ASR_{what}"] < 0.10 and r["CA"] - r[f"CA_{what}"] < 0.05]
        print(f"baseline {what}: ASR < 10% with CA drop < 5 points: {len(ok)}/{len(bad)}")
    print(f"total {seconds / 60:.1f} min")
