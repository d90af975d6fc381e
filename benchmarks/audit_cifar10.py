"""Audit on CIFAR-10 (JPEG files): does the key-based test find models trained on CUDA data?

Trains small victims on (a) the CUDA-protected training subset (key A); (b) mixes where only
50, 20, 10 and 5% of the training images are protected with key A (the rest clean); (c) the
protected subset under countermeasures (sharpen-ff, coin, jpeg, grayscale, PGD adversarial
training); (d) negatives: clean data (5 seeds) and data protected with 5 other keys; (e) the
protected subset with the scraper's own (permuted) labels and no class names, audited with the
label-free statistic. Every model is audited with key A, A's manifest and clean probe images
from the test split (disjoint from the accuracy test images). Prints per model the clean test
accuracy, the p-value and the verdict, then the detection rate per group at alpha and the
false-positive count over the negatives.

Scaled for a shared 2-core CPU (about 30 minutes with ``nice``): ``--per-class`` 150 training
images per class, a 3-block CNN (16/32/64 channels, ~0.03M parameters), ``--epochs`` 8 (AT
``--at-epochs`` 4 with ``--pgd-steps`` 2) without crop/flip augmentation (``--augment``: with
it these tiny victims fit only ~half the protected set in 8 epochs and learn little of either),
accuracy on 50 test images per class, 4 probe images per class, 100 null keys with
verdict-preserving early stopping. Protection: CUDA ``mid`` at
32 px (k = 3, p_b = 0.3), stored as uint8 (the same pixels ``protect`` writes as PNG); the
manifest is built in memory with each file's plan.

    python benchmarks/audit_cifar10.py
    python benchmarks/audit_cifar10.py --groups a,d --per-class 500 --epochs 15
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cifar10_root  # noqa: E402

import unlearnable.attacks.suites  # noqa: E402,F401  (registers the attacks)
from unlearnable.attacks.base import make_attack  # noqa: E402
from unlearnable.attacks.training import TrainConfig, train_classifier  # noqa: E402
from unlearnable.audit import AuditConfig, audit_model  # noqa: E402
from unlearnable.imageops import to_uint8  # noqa: E402
from unlearnable.io.manifest import FileRecord, Manifest  # noqa: E402
from unlearnable.keys import SecretKey  # noqa: E402
from unlearnable.protect.cuda import CudaProtector  # noqa: E402

COUNTERMEASURES = ("sharpen-ff", "coin", "jpeg", "grayscale", "at-linf-4")
GROUP_NAMES = {
    "a": "(a) protected",
    "b": "(b) partly protected",
    "c": "(c) countermeasures",
    "d": "(d) negatives",
    "e": "(e) scraper labels",
}


def tiny_cnn(classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes),
    )  # fmt: skip


def load_split(split: Path, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 ``(N, 3, 32, 32)``, labels, class names: files ``start .. start+count`` per class."""
    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((split / name).iterdir())[start : start + count]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(index)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), classes


def protect(key: SecretKey, x: torch.Tensor, y: torch.Tensor, classes: list[str]):
    """CUDA-protected uint8 copy of ``x`` and the manifest of that protection (in memory)."""
    protector = CudaProtector(key, classes)
    plan = protector.plan(x.shape[-2], x.shape[-1])
    protected = to_uint8(protector.apply(x.float() / 255, y, plan))
    records = [
        FileRecord(f"{classes[int(c)]}/{i:05d}.png", "ok", classes[int(c)], width=32, height=32,
                   params=protector.describe_plan(plan))  # fmt: skip
        for i, c in enumerate(y)
    ]
    manifest = Manifest("cuda", protector.parameters(), key.fingerprint, "folders", classes, records)
    return protected, manifest


@dataclass
class Victim:
    group: str
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    seed: int = 0
    attack: str | None = None
    label_free: bool = False
    clean_x: torch.Tensor | None = None  # the clean training set, for attacks that mix it in


@dataclass
class Row:
    group: str
    name: str
    accuracy: float
    p_value: float
    statistic: str
    label_free_p: float
    z: float
    nulls: int
    flagged: bool
    train_s: float
    audit_s: float


def victims(args, clean_x, y, protected_x, classes) -> list[Victim]:
    out: list[Victim] = []
    groups = set(args.groups.split(","))
    if "a" in groups:
        out.append(Victim("a", "protected", protected_x, y))
    if "b" in groups:
        rng = np.random.default_rng(args.seed)
        for share in (0.5, 0.2, 0.1, 0.05):
            chosen = torch.from_numpy(rng.permutation(len(y))[: round(share * len(y))])
            mixed = clean_x.clone()
            mixed[chosen] = protected_x[chosen]
            out.append(Victim("b", f"mix {share:.0%}", mixed, y))
    if "c" in groups:
        for name in COUNTERMEASURES:
            out.append(Victim("c", name, protected_x, y, attack=name, clean_x=clean_x))
    if "d" in groups:
        for seed in range(args.negatives):
            out.append(Victim("d", f"clean seed {seed}", clean_x, y, seed=seed))
        for index in range(args.negatives):
            other = SecretKey(bytes([100 + index]) * 32)
            other_x, _ = protect(other, clean_x, y, classes)
            out.append(Victim("d", f"other key {index + 1}", other_x, y, seed=index))
    if "e" in groups:
        permuted = (y + 1) % len(classes)
        out.append(Victim("e", "permuted labels", protected_x, permuted, label_free=True))
    return out


def run_victim(victim: Victim, args, data, manifest, classes) -> Row:
    test_x, test_y, probes, probe_y = data
    config = TrainConfig(
        epochs=args.at_epochs if (victim.attack or "").startswith("at-") else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule="cosine",
        augment=args.augment,
    )
    train_x, policy, prepare_test = victim.train_x, None, None
    if victim.attack is not None:
        options = {"steps": args.pgd_steps} if victim.attack.startswith("at-") else {}
        attack = make_attack(victim.attack, **options)
        generator = torch.Generator().manual_seed(victim.seed)
        clean = victim.clean_x if victim.clean_x is not None else train_x
        train_x = to_uint8(attack.prepare_train(train_x.float() / 255, clean.float() / 255,
                                                generator))  # fmt: skip
        policy, prepare_test = attack.policy(), attack.prepare_test
    model = tiny_cnn(len(classes), victim.seed)
    eval_x = test_x if prepare_test is None else to_uint8(prepare_test(test_x.float() / 255))
    started = time.perf_counter()
    history = train_classifier(model, train_x, victim.train_y, eval_x, test_y, config,
                               policy=policy, seed=victim.seed)  # fmt: skip
    train_s = time.perf_counter() - started
    model.eval()

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        return model(images if prepare_test is None else prepare_test(images)).argmax(1)

    started = time.perf_counter()
    result = audit_model(
        predict,
        KEY_A,
        manifest,
        probes,
        model_classes=None if victim.label_free else classes,
        probe_labels=None if victim.label_free else [classes[int(c)] for c in probe_y],
        config=AuditConfig(null_keys=args.null_keys, alpha=args.alpha, seed=args.seed,
                           early_stop=not args.no_early_stop, batch_size=1024),
    )  # fmt: skip
    other = result.label_free if result.statistic == "labelled" else result.labelled
    return Row(
        GROUP_NAMES[victim.group], victim.name, history.last_test_acc, result.p_value,
        result.statistic, other.p_value if other else float("nan"), result.primary.z,
        result.null_keys_used, result.flagged, train_s, time.perf_counter() - started,
    )  # fmt: skip


KEY_A = SecretKey(bytes(range(32)))


def print_table(rows: list[Row], args) -> None:
    print(f"\n{'group':<22}{'model':<18}{'test acc':>9}{'stat':>11}{'p-value':>9}{'z':>8}"
          f"{'nulls':>7}{'other p':>9}  {'verdict':<12}{'train s':>8}{'audit s':>8}")  # fmt: skip
    for r in rows:
        print(f"{r.group:<22}{r.name:<18}{100 * r.accuracy:>8.1f}%{r.statistic:>11}"
              f"{r.p_value:>9.4f}{r.z:>8.1f}{r.nulls:>7}{r.label_free_p:>9.4f}  "
              f"{'EVIDENCE' if r.flagged else 'no evidence':<12}{r.train_s:>8.0f}{r.audit_s:>8.0f}")  # fmt: skip
    print(f"\ndetection at alpha {args.alpha} ({args.null_keys} null keys):")
    for key, name in GROUP_NAMES.items():
        group = [r for r in rows if r.group == name]
        if not group:
            continue
        hits = sum(r.flagged for r in group)
        if key == "d":
            print(f"  {name:<22} false positives {hits} of {len(group)}")
        else:
            print(f"  {name:<22} detected {hits} of {len(group)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", help="CIFAR-10 JPEG folder (train/, test/) or its .tar.gz")
    parser.add_argument("--per-class", type=int, default=150, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=50, help="accuracy test images")
    parser.add_argument("--probes-per-class", type=int, default=4, help="clean probe images")
    parser.add_argument("--augment", action="store_true",
                        help="crop + flip while training (the tiny victims then need many more "
                        "epochs to learn the protected set at all)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--at-epochs", type=int, default=4)
    parser.add_argument("--pgd-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--null-keys", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--no-early-stop", action="store_true", help="always use every null key")
    parser.add_argument("--negatives", type=int, default=5, help="clean models and other keys each")
    parser.add_argument("--groups", default="a,b,c,d,e", help="which groups to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    root = cifar10_root(args.data)
    clean_x, y, classes = load_split(root / "train", 0, args.per_class)
    test_x, test_y, _ = load_split(root / "test", 0, args.test_per_class)
    probes, probe_y, _ = load_split(root / "test", args.test_per_class, args.probes_per_class)
    protected_x, manifest = protect(KEY_A, clean_x, y, classes)
    data = (test_x, test_y, probes, probe_y)
    print(f"CIFAR-10 JPEG: {len(y)} train, {len(test_y)} test, {len(probe_y)} probes; key A "
          f"{KEY_A.fingerprint}; CUDA k=3 p_b=0.3", flush=True)  # fmt: skip
    rows = []
    for victim in victims(args, clean_x, y, protected_x, classes):
        rows.append(run_victim(victim, args, data, manifest, classes))
        r = rows[-1]
        print(f"done {r.group} / {r.name}: acc {100 * r.accuracy:.1f}% p {r.p_value:.4f} "
              f"({r.statistic}, {r.nulls} nulls) {'EVIDENCE' if r.flagged else 'no evidence'} "
              f"[{r.train_s:.0f}+{r.audit_s:.0f} s]", flush=True)  # fmt: skip
    print_table(rows, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; {args.per_class}/class train, tiny CNN, "
          f"{args.epochs} epochs (AT {args.at_epochs}, PGD-{args.pgd_steps} 4/255), "
          f"augment {args.augment}, "
          f"{args.probes_per_class} probes/class, seed {args.seed}")  # fmt: skip


if __name__ == "__main__":
    main()
