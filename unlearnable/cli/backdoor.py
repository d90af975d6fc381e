"""``unlearnable backdoor train``: build a backdoored test subject for ``scan`` and ``purify``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import (
    device_option,
    json_option,
    out_console,
    print_json,
    progress_bars,
    quiet_option,
    summary_table,
    warn,
)

ATTACKS = ("badnets", "blend", "wanet")  # = unlearnable.attacks.backdoor.BACKDOORS (tested)


def parse_parameters(items: tuple[str, ...]) -> dict:
    """``("size=4", "pattern=grid")`` -> ``{"size": 4, "pattern": "grid"}`` (JSON values)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@click.group("backdoor")
def backdoor() -> None:
    """Backdoor attacks, to build test subjects for `scan` and `purify`."""


@backdoor.command("train")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--attack",
    type=click.Choice(ATTACKS),
    default="badnets",
    show_default=True,
    help="Trigger: badnets (3x3 patch), blend (alpha-blended noise), wanet (warp).",
)
@click.option(
    "--target",
    default="0",
    show_default=True,
    help="Target class (all-to-one): a class folder name or an index.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Poisoned share of the training images (0: a clean model).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Trigger parameter, repeatable (badnets: size, margin, pattern=white|grid; "
    "blend: alpha, pattern_seed; wanet: k, s, field_seed, cross_ratio).",
)
@click.option(
    "--test",
    "test_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Clean test folder (default: hold out --test-fraction of DATA).",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Held-out share of DATA without --test.",
)
@click.option(
    "--model",
    "arch",
    default="small-cnn",
    show_default=True,
    help="Architecture (small-cnn, resnet20, resnet18, vgg11-bn, tv:NAME).",
)
@click.option("--epochs", type=click.IntRange(1), default=12, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=128, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=0.1,
    show_default=True,
    help="SGD learning rate (cosine schedule, momentum 0.9, weight decay 5e-4).",
)
@click.option(
    "--image-size",
    type=click.IntRange(8),
    default=None,
    help="Resize/crop images to S x S (default: the first image's short side).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the model (model.json + model.safetensors), trigger.json and the report.",
)
@device_option("Where the model trains: auto, cpu, cuda, cuda:N.")
@quiet_option
@json_option
def train(
    data,
    attack,
    target,
    rate,
    params,
    test_dir,
    test_fraction,
    arch,
    epochs,
    batch_size,
    lr,
    image_size,
    seed,
    output,
    device,
    quiet,
    as_json,
) -> None:
    """Train a classifier on DATA (class subfolders) with an all-to-one backdoor.

    Poisons --rate of the training images (taken from non-target classes) with the trigger,
    relabels them --target, trains, and reports clean accuracy (CA) and attack success rate
    (ASR, on triggered non-target test images only).
    """
    from ..attacks.training import TrainConfig
    from ..defenses.ebyd_subjects import BackdoorTrainOptions, train_backdoor_folder
    from ..verify_run import resolve_device
    from .model_options import check_output_folder

    check_output_folder(output, data, test_dir)
    options = BackdoorTrainOptions(
        attack=attack,
        target=target,
        rate=rate,
        parameters=parse_parameters(params),
        arch=arch,
        train=TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, device=resolve_device(device)
        ),
        image_size=image_size,
        test_fraction=test_fraction,
        seed=seed,
    )
    with progress_bars(quiet or as_json, {"loading": "loading images"}) as bars:

        def on_epoch(epoch, total, row) -> None:
            bars.update(
                "training",
                epoch,
                total,
                description=(
                    f"epoch {epoch}/{total} loss {row['train_loss']:.3f} "
                    f"test acc {100 * row['test_acc']:.1f}%"
                ),
            )

        report = train_backdoor_folder(
            data,
            output,
            options,
            test=test_dir,
            progress=on_epoch if bars.active else None,
            load_progress=bars.counter("loading"),
        )
    if report.get("skipped"):
        rel, why = next(iter(report["skipped"].items()))
        warn(
            f"{len(report['skipped'])} file(s) could not be read and were skipped (listed in "
            f"report.json), e.g. {rel}: {why}"
        )
    if as_json:
        print_json({k: v for k, v in report.items() if k != "epochs"})
        return
    if not quiet:
        out_console.print(
            summary_table(
                f"backdoored model: {output}",
                [
                    ("attack", f"{attack} -> {report['attack']['target_name']}"),
                    ("poisoned", f"{report['poisoned_images']} of {report['train_images']} images"),
                    ("clean accuracy", f"{100 * report['clean_accuracy']:.1f}%"),
                    ("attack success", f"{100 * report['attack_success_rate']:.1f}% (non-target)"),
                ],
            )
        )


COMMANDS = (backdoor,)
