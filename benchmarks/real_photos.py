"""Does a protection hold on real photographs? Protect, resize as a scraper would, verify.

Data: the 12-species flowers archive (224 px JPEG photos, 60 train + 20 test per class) in
``../shared/data`` (extracted once into ``~/.cache/unlearnable/flowers12-jpeg``), or ``--data
FOLDER`` with ``train/<class>/`` and ``test/<class>/``. Pipeline per setting:

1. protect the training images at the file's size (``--file-size``, default 224) in memory with
   the library's functions (settings: see ``_photos_settings.py``; key: a fixed benchmark key);
2. model the output file: ``--formats png`` (lossless) and/or ``jpeg`` (``--jpeg-quality``);
3. report the visual cost (``unlearnable.visual_cost``, shift-tolerant 1 - SSIM) and the plain
   PSNR, at the file's size;
4. for every scraper resolution (``--sizes``): resize the protected and the clean training
   images and the clean test images (centre crop + antialiased bilinear, as
   ``unlearnable.imageops.resize_center_crop``), then train victims under every attack
   (``--attacks``, names or suites from ``unlearnable.attacks.suites``) and seed, exactly as
   ``unlearnable.verify.run_verification`` does, and print clean / protected accuracy and PER.

The clean baseline does not depend on the setting, so every victim's (peak, last) accuracy is
cached in ``~/.cache/unlearnable/real-photos/runs.json`` under a content hash of its training
and test tensors plus attack, model, training config and seed: each clean baseline is trained
once, and a repeated setting is not retrained (``--no-cache`` to retrain; ``--paired`` to run
every pair through ``run_verification`` itself: same numbers, without the cache).

Default run (about 6-10 min at one thread, 30-50 s per epoch and victim at 112 px; longer
when the cores are shared; the clean victim is cached after the first run): the shipped
default method ``photo``, PNG, 112 px, ERM, small-cnn 12 epochs, 1 seed. Any registered
method's library preset runs by name (``photo``, ``photo:strength=0``, ``cuda``). Examples::

    python benchmarks/real_photos.py --no-train --settings photo cuda \\
        --contact-sheet sheet.png                      # visual cost and a contact sheet only
    python benchmarks/real_photos.py --settings photo --threads 1          # README row 1
    python benchmarks/real_photos.py --settings photo --sizes 224 --per-class 30 --epochs 6
    python benchmarks/real_photos.py --settings photo --per-class 30 --epochs 8 \\
        --attacks quick                                # the quick suite, smaller and shorter
    python benchmarks/real_photos.py --settings photo cuda --sizes 112,224 --attacks quick \\
        --seeds 0,1,2 --formats png,jpeg               # a full check (hours at one thread)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _photos_data import Split, fingerprint, load_split, photos_root, roundtrip
from _photos_settings import parse_setting

from unlearnable.attacks.base import make_attack
from unlearnable.attacks.suites import resolve_attacks
from unlearnable.attacks.training import (
    TrainConfig,
    derive_seed,
    to_float_images,
    train_classifier,
)
from unlearnable.imageops import resize_center_crop, to_uint8
from unlearnable.keys import SecretKey
from unlearnable.models import build_victim
from unlearnable.verify import VerifyData, protection_score, run_verification
from unlearnable.visual_cost import visual_cost

DEFAULT_SETTING = "photo"  # the shipped default method (unlearnable.protect.photo)
RUN_CACHE = Path.home() / ".cache" / "unlearnable" / "real-photos" / "runs.json"


@dataclass
class Row:
    setting: str
    fmt: str
    size: int
    attack: str
    clean: list[tuple[float, float]]  # (peak, last) per seed
    protected: list[tuple[float, float]]
    chance: float
    cost: float
    psnr: float
    seconds: float

    def mean(self, which: str, index: int) -> float:
        values = [pair[index] for pair in getattr(self, which)]
        return sum(values) / len(values)

    def per(self, index: int) -> float | None:
        score = protection_score(self.mean("clean", index), self.mean("protected", index), self.chance)
        return None if score is None else max(-1.0, min(1.0, score))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with train/ and test/ class folders, or a .tar.gz")
    parser.add_argument("--settings", nargs="+", default=[DEFAULT_SETTING], help="setting specs")
    parser.add_argument("--formats", default="png", help="comma list of png, jpeg")
    parser.add_argument("--jpeg-quality", type=int, default=75)
    parser.add_argument("--file-size", type=int, default=224, help="size the photos are protected at")
    parser.add_argument("--sizes", default="112", help="comma list of scraper resolutions")
    parser.add_argument("--attacks", default="erm", help="attack and suite names, e.g. erm or quick")
    parser.add_argument("--seeds", default="0", help="comma list of training seeds")
    parser.add_argument("--key-seed", type=int, default=0, help="which benchmark key (0, 1, ...)")
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--per-class", type=int, default=None, help="limit training images per class")
    parser.add_argument("--cost-images", type=int, default=120, help="images the visual cost uses")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                        help="torch threads (default: $OMP_NUM_THREADS, else 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-cache", action="store_true", help="retrain instead of using cached runs")
    parser.add_argument("--paired", action="store_true", help="use run_verification for every pair")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--contact-sheet", type=Path, help="write originals vs protected PNG here")
    parser.add_argument("--no-train", action="store_true", help="only visual cost (and contact sheet)")
    return parser.parse_args(argv)


def benchmark_key(index: int) -> SecretKey:
    """Fixed, public benchmark keys (never use them for real photos)."""
    return SecretKey(bytes([index % 256]) * 32)


def _limit(split: Split, per_class: int | None) -> Split:
    if per_class is None:
        return split
    keep = torch.cat([(split.labels == c).nonzero()[:per_class, 0] for c in range(len(split.classes))])
    return Split(split.images[keep], split.labels[keep], split.classes)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    out = [to_uint8(resize_center_crop(chunk.float().div(255), size)) for chunk in images.split(128)]
    return torch.cat(out)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).div(255).square().mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return float((10 * torch.log10(1 / mse)).mean())


class RunCache:
    """(peak, last) accuracies of trained victims on disk, keyed by everything that determines
    them: a content hash of the training and test images and labels, attack, model, config, seed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.store: dict[str, list[float]] = {}
        if enabled and RUN_CACHE.exists():
            self.store = json.loads(RUN_CACHE.read_text())

    def get(self, key: str) -> tuple[float, float] | None:
        value = self.store.get(key) if self.enabled else None
        return None if value is None else (value[0], value[1])

    def put(self, key: str, value: tuple[float, float]) -> None:
        """Store a run, merged into the file as it is now: another run of this benchmark (one
        per CPU lane) may have added entries since this one read it."""
        self.store[key] = list(value)
        if self.enabled:
            if RUN_CACHE.exists():
                self.store = {**json.loads(RUN_CACHE.read_text()), **self.store}
            RUN_CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = RUN_CACHE.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.store, indent=1, sort_keys=True))
            tmp.replace(RUN_CACHE)


def cached_run(cache, attack_name, images, clean, labels, test, test_labels, model, config, seed, num_classes):
    """:func:`train_one` through the on-disk cache."""
    key = json.dumps([fingerprint(images, clean, labels, test, test_labels), attack_name, model,
                      config.to_dict(), seed, num_classes], sort_keys=True)
    pair = cache.get(key)
    if pair is None:
        pair = train_one(attack_name, images, clean, labels, test, test_labels, model, config, seed, num_classes)
        cache.put(key, pair)
    return pair


def train_one(attack_name, images, clean, labels, test, test_labels, model, config, seed, num_classes):
    """One victim, trained exactly as ``run_verification`` trains it; returns (peak, last)."""
    attack = make_attack(attack_name)
    generator = torch.Generator().manual_seed(derive_seed(seed, "prepare_train"))
    as_float = to_float_images(images)
    view = attack.prepare_train(as_float, to_float_images(clean), generator)
    view = images if view is as_float else view
    test_float = to_float_images(test)
    test_view = attack.prepare_test(test_float)
    test_view = test if test_view is test_float else test_view
    victim = build_victim(model, num_classes, images.shape[-1], images.shape[1], seed=seed)
    def progress(epoch: int, epochs: int, row: dict) -> None:
        print(f"  {attack_name} seed {seed} epoch {epoch}/{epochs}: test {100 * row['test_acc']:.1f}%",
              file=sys.stderr, flush=True)

    history = train_classifier(victim, view, labels, test_view, test_labels, config, attack.policy(),
                               seed=seed, num_classes=num_classes, progress=progress)
    return history.peak_test_acc, history.last_test_acc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    root = photos_root(args.data)
    train = _limit(load_split(root / "train", args.file_size), args.per_class)
    test = load_split(root / "test", args.file_size, train.classes)
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    formats = [f.strip() for f in args.formats.split(",")]
    attacks = resolve_attacks(args.attacks)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="cosine",
                         device=args.device)
    key = benchmark_key(args.key_seed)
    num_classes = max(2, len(train.classes))
    print(f"data {root}: {len(train.labels)} train / {len(test.labels)} test images, "
          f"{len(train.classes)} classes, file size {args.file_size}; {args.model}, {args.epochs} epochs, "
          f"batch {args.batch_size}, lr {args.lr} cosine; key {args.key_seed}; seeds {seeds}", flush=True)
    cache = RunCache(not args.no_cache)
    resized_clean = {s: (_resize(train.images, s), _resize(test.images, s)) for s in sizes}
    rows: list[Row] = []
    sheet: list[tuple[str, torch.Tensor]] = []
    for spec in args.settings:
        setting = parse_setting(spec)
        started = time.perf_counter()
        protected_float = torch.cat([
            setting.apply(chunk.float().div(255), labels, train.classes, key)
            for chunk, labels in zip(train.images.split(64), train.labels.split(64), strict=True)
        ])
        protect_seconds = time.perf_counter() - started
        for fmt in formats:
            protected = roundtrip(to_uint8(protected_float), fmt, args.jpeg_quality)
            sample = torch.arange(0, len(protected), max(1, len(protected) // args.cost_images))
            cost = float(visual_cost(train.images[sample], protected[sample]).mean())
            psnr = _psnr(train.images[sample], protected[sample])
            sheet.append((f"{spec} [{fmt}]", protected))
            print(f"\n{spec} [{fmt}]: protect {protect_seconds:.1f} s, visual cost {cost:.4f}, "
                  f"PSNR {psnr:.1f} dB", flush=True)
            for size in [] if args.no_train else sizes:
                clean_small, test_small = resized_clean[size]
                prot_small = _resize(protected, size)
                for attack in attacks:
                    started = time.perf_counter()
                    clean_acc, prot_acc = [], []
                    if args.paired:
                        data = VerifyData(prot_small, clean_small, train.labels, test_small, test.labels,
                                          train.classes)
                        result = run_verification(data, [attack], args.model, config, seeds).attacks[0]
                        c, p = result.summary("clean"), result.summary("protected")
                        clean_acc, prot_acc = list(zip(c.peak, c.last, strict=True)), list(zip(p.peak, p.last, strict=True))
                    else:
                        for seed in seeds:
                            clean_acc.append(cached_run(cache, attack, clean_small, clean_small, train.labels,
                                                        test_small, test.labels, args.model, config, seed,
                                                        num_classes))
                            prot_acc.append(cached_run(cache, attack, prot_small, clean_small, train.labels,
                                                       test_small, test.labels, args.model, config, seed,
                                                       num_classes))
                    chance = VerifyData(prot_small[:2], clean_small[:2], train.labels[:2], test_small,
                                        test.labels, train.classes).chance
                    row = Row(spec, fmt, size, attack, clean_acc, prot_acc, chance, cost, psnr,
                              time.perf_counter() - started)
                    rows.append(row)
                    print_row(row, header=len(rows) == 1)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=1))
    if args.contact_sheet:
        from _photos_sheet import contact_sheet

        contact_sheet(train, sheet, args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet}")
    return 0


_HEADER = (f"{'setting':<28}{'fmt':>5}{'size':>5} {'attack':<11}{'clean pk/last':>14}{'prot pk/last':>14}"
           f"{'PER pk/last':>13}{'cost':>7}{'PSNR':>6}{'sec':>6}")


def _fmt_per(value: float | None) -> str:
    return " -  " if value is None else f"{value:4.2f}"


def print_row(row: Row, header: bool = False) -> None:
    if header:
        print(_HEADER)
    print(f"{row.setting[:28]:<28}{row.fmt:>5}{row.size:>5} {row.attack:<11}"
          f"{100 * row.mean('clean', 0):>7.1f}/{100 * row.mean('clean', 1):<5.1f}"
          f"{100 * row.mean('protected', 0):>8.1f}/{100 * row.mean('protected', 1):<5.1f}"
          f"{_fmt_per(row.per(0)):>8}/{_fmt_per(row.per(1))}"
          f"{row.cost:>7.3f}{row.psnr:>6.1f}{row.seconds:>6.0f}", flush=True)


def print_table(rows: list[Row]) -> None:
    print("\n" + _HEADER)
    for row in rows:
        print_row(row)
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.setting, row.fmt, row.size), []).append(row)
    for (setting, fmt, size), group in groups.items():
        scored = [r for r in group if r.per(0) is not None]
        if len(group) > 1 and scored:
            worst = min(scored, key=lambda r: r.per(0))
            print(f"worst case {setting} [{fmt}] at {size} px: {worst.attack} (PER peak {worst.per(0):.2f})")


if __name__ == "__main__":
    sys.exit(main())
