"""``unlearnable freeze`` and ``unlearnable finetune``: FreezeAsGuard for model publishers."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    device_option,
    json_option,
    out_console,
    output_option,
    print_json,
    progress_bars,
    quiet_option,
    summary_table,
    warn,
)
from .model_options import check_output_folder, model_file_options, refuse_overwriting_model

TASK_CHOICES = ("auto", "classification", "diffusion")  # = TASKS names + auto (tested)
LEVELS = ("tensor", "channel")  # = unlearnable.defenses.freeze_mask.LEVELS (tested)
BINARIZE = ("top-k", "threshold")  # = unlearnable.defenses.freeze_learn.BINARIZE (tested)
OPTIMIZERS = ("adamw", "sgd")  # = unlearnable.defenses.freeze_enforce.OPTIMIZERS (tested)

_folder = click.Path(exists=True, file_okay=False, path_type=Path)


def _default_run_folder(kind: str) -> Path:
    from ..run_folder import default_run_folder

    return default_run_folder(kind)


def _adapter_class(task: str, model_path: Path):
    from ..defenses.freeze_adapters import TASKS, detect_task

    return TASKS.get(detect_task(model_path) if task == "auto" else task)


def _warn_skipped(data, folder) -> None:
    """A warning on stderr naming the files of ``folder`` that could not be read."""
    skipped = dict(getattr(data, "skipped", None) or {})
    if skipped:
        rel, why = next(iter(skipped.items()))
        warn(
            f"{len(skipped)} file(s) of {folder} could not be read and were skipped, "
            f"e.g. {rel}: {why}"
        )


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


@click.command("freeze")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, path_type=Path))
@click.option("--illegal", required=True, type=_folder, help="Data of the adaptation to block.")
@click.option("--legal", required=True, type=_folder, help="Data of adaptations to keep cheap.")
@click.option(
    "--task",
    type=click.Choice(TASK_CHOICES),
    default="auto",
    show_default=True,
    help="auto: diffusion for a diffusers pipeline or UNet folder, else classification.",
)
@click.option(
    "--ratio",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Target frozen share of the maskable tensors (or channels).",
)
@click.option("--level", type=click.Choice(LEVELS), default="tensor", show_default=True,
              help="Freeze whole tensors, or output channels.")  # fmt: skip
@click.option(
    "--exclude",
    multiple=True,
    metavar="NAME",
    help="Tensor name or module prefix never frozen (repeatable; default: the classifier head).",
)
@click.option("--mask-head", is_flag=True, help="Let the mask freeze the head too (not advised).")
@click.option("--steps", type=click.IntRange(1), default=400, show_default=True,
              help="Simulated-user steps.")  # fmt: skip
@click.option("--user-interval", type=click.IntRange(2), default=5, show_default=True,
              help="One mask step per this many batches.")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Batch size per domain.")  # fmt: skip
@click.option("--user-lr", type=click.FloatRange(0, min_open=True), default=0.01,
              show_default=True, help="Simulated user's SGD learning rate.")  # fmt: skip
@click.option("--mask-lr", type=click.FloatRange(0, min_open=True), default=0.05,
              show_default=True, help="Mask score step size.")  # fmt: skip
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=0.2,
              show_default=True, help="T of the soft mask sigmoid(x / T).")  # fmt: skip
@click.option("--penalty", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Weight of the ratio penalty.")  # fmt: skip
@click.option("--relearn-epochs", type=click.IntRange(0), default=2, show_default=True,
              help="Full fine-tuning on both domains before mask learning.")  # fmt: skip
@click.option("--relearn-lr", type=click.FloatRange(0, min_open=True), default=1e-3,
              show_default=True, help="AdamW learning rate of the relearning.")  # fmt: skip
@click.option("--binarize", type=click.Choice(BINARIZE), default="top-k", show_default=True,
              help="top-k: exactly the target share; threshold: soft mask > 0.5.")  # fmt: skip
@click.option("--limit", type=click.IntRange(1), default=None,
              help="At most N images per class (classification) or per folder (diffusion).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@model_file_options
@device_option()
@output_option(
    "Run folder: mask.json, report, steps.csv and plots (default: a new folder in "
    "./unlearnable-runs)."
)
@quiet_option
@json_option
def freeze(
    model_path, illegal, legal, task, ratio, level, exclude, mask_head, steps, user_interval,
    batch_size, user_lr, mask_lr, temperature, penalty, relearn_epochs, relearn_lr, binarize,
    limit, seed, model_file, device, output, quiet, as_json,
):  # fmt: skip
    """Learn which tensors of MODEL to freeze so that fine-tuning on --illegal data stays poor
    while fine-tuning on --legal data still works (FreezeAsGuard). Publish MODEL with the
    mask.json this writes; `unlearnable finetune` honours it."""
    from ..defenses.freeze_learn import FreezeConfig, learn_freeze_mask
    from ..defenses.freeze_report import write_freeze_run
    from ..verify_run import resolve_device

    if exclude and mask_head:
        raise click.UsageError("give --exclude or --mask-head, not both")
    check_output_folder(output, illegal, legal)
    config = FreezeConfig(
        ratio=ratio, level=level, exclude=tuple(exclude) if exclude else (() if mask_head else None),
        steps=steps, user_interval=user_interval, batch_size=batch_size, user_lr=user_lr,
        mask_lr=mask_lr, temperature=temperature, penalty=penalty, relearn_epochs=relearn_epochs,
        relearn_lr=relearn_lr, binarize=binarize, seed=seed, device=resolve_device(device),
    )  # fmt: skip
    adapter_class = _adapter_class(task, model_path)
    model, adapter = adapter_class.open(model_path, model_file, config.device)
    ill = adapter.load_data(model, illegal, limit)
    leg = adapter.load_data(model, legal, limit)
    _warn_skipped(ill, illegal)
    _warn_skipped(leg, legal)
    output = output or _default_run_folder("freeze")
    with progress_bars(quiet or as_json, {"steps": "learning the mask"}) as bars:

        def progress(step, total, row):
            bars.update(
                "steps", step, total,
                description=f"mask {row['mask_mean']:.2f}  illegal {row['illegal_loss']:.3f}  "
                f"legal {row['legal_loss']:.3f}",
            )  # fmt: skip

        result = learn_freeze_mask(model, ill, leg, adapter, config, progress=progress)
    context = {
        "model": str(model_path), "task": adapter.name, "illegal": str(illegal),
        "legal": str(legal), "illegal_items": adapter.size(ill), "legal_items": adapter.size(leg),
    }  # fmt: skip
    report = write_freeze_run(output, result, config, context)
    report["run_folder"] = str(output)
    if as_json:
        print_json(report)
        return
    if quiet:
        return
    m, final = report["mask"], report["final_step"]
    out_console.print(
        summary_table(
            "FreezeAsGuard mask",
            [
                ("model", f"{model_path} ({adapter.name})"),
                ("data", f"illegal {context['illegal_items']}, legal {context['legal_items']}"),
                ("level / target", f"{m['level']} / {ratio}"),
                (
                    "frozen tensors",
                    f"{m['frozen_tensors']} of {m['tensors']} ({_pct(m['share_tensors'])})",
                ),
                (
                    "frozen parameters",
                    f"{m['frozen_parameters']:,} ({_pct(m['share_parameters'])})",
                ),
                ("always trainable", ", ".join(m["excluded"]) or "none"),
                ("soft mask mean", f"{final.get('mask_mean', float('nan')):.3f}"),
                (
                    "illegal / legal loss",
                    f"{final.get('illegal_loss', float('nan')):.4f} / "
                    f"{final.get('legal_loss', float('nan')):.4f}",
                ),
                ("time", f"{result.seconds:.1f} s"),
                ("mask", str(output / report["mask_file"])),
                ("report", str(output / "report.md")),
            ],
        )  # fmt: skip
    )


@click.command("finetune")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, path_type=Path))
@click.argument("data", type=_folder)
@click.option(
    "--mask",
    "mask_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The model's mask.json (or the freeze run folder holding it).",
)
@click.option("--task", type=click.Choice(TASK_CHOICES), default="auto", show_default=True,
              help="auto: the mask's task.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=0.01, show_default=True)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--test", "test_dir", type=_folder, default=None,
              help="Evaluate on this folder after every epoch.")  # fmt: skip
@click.option("--limit", type=click.IntRange(1), default=None,
              help="At most N images per class (classification) or per folder (diffusion).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@model_file_options
@device_option()
@output_option(
    "Folder for the fine-tuned model (OUT/model) and the run report (default: a new folder in "
    "./unlearnable-runs)."
)
@quiet_option
@json_option
def finetune(
    model_path, data, mask_path, task, epochs, lr, weight_decay, optimizer, batch_size, test_dir,
    limit, seed, model_file, device, output, quiet, as_json,
):  # fmt: skip
    """Fine-tune MODEL on DATA with the tensors named by --mask frozen: they get no gradient,
    are left out of the optimizer and are checked bit-identical to the release afterwards."""
    from ..defenses.freeze_enforce import FinetuneConfig
    from ..defenses.freeze_enforce import finetune as run_finetune
    from ..defenses.freeze_mask import load_mask
    from ..defenses.freeze_report import write_finetune_run
    from ..verify_run import resolve_device

    check_output_folder(output, data, test_dir)
    if output is not None:
        refuse_overwriting_model(model_path, Path(output) / "model")
    mask = load_mask(mask_path)
    config = FinetuneConfig(
        epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
        optimizer=optimizer, seed=seed, device=resolve_device(device),
    )  # fmt: skip
    adapter_class = _adapter_class(mask.task if task == "auto" else task, model_path)
    model, adapter = adapter_class.open(model_path, model_file, config.device)
    adapter.check_savable(model)
    train = adapter.load_data(model, data, limit)
    test = adapter.load_data(model, test_dir, limit) if test_dir is not None else None
    _warn_skipped(train, data)
    _warn_skipped(test, test_dir)
    output = output or _default_run_folder("finetune")
    with progress_bars(quiet or as_json, {"epochs": "fine-tuning"}) as bars:

        def progress(epoch, total, row):
            text = f"epoch {epoch}/{total} loss {row['train_loss']:.4f}"
            if "eval_acc" in row:
                text += f" test acc {_pct(row['eval_acc'])}"
            bars.update("epochs", epoch, total, description=text)

        result = run_finetune(
            model, mask, train, adapter, config, eval_data=test, progress=progress
        )
    note = {"mask": str(mask_path), "data": str(data), "epochs": epochs, "lr": lr}
    saved = adapter.save(model, Path(output) / "model", note)
    context = {"model": str(model_path), "data": str(data), "mask": str(mask_path),
               "test": None if test_dir is None else str(test_dir)}  # fmt: skip
    report = write_finetune_run(output, result, config, mask, context, saved)
    report["run_folder"] = str(output)
    if as_json:
        print_json(report)
        return
    if quiet:
        return
    last = report["last_epoch"]
    rows = [
        ("model", f"{model_path} ({adapter.name})"),
        ("frozen", f"{result.frozen_tensors} tensors, {result.frozen_parameters:,} parameters: "
                   "bit-identical to the release"),
        ("trainable parameters", f"{result.trainable_parameters:,}"),
        ("last train loss", f"{last.get('train_loss', float('nan')):.4f}"),
    ]  # fmt: skip
    if "eval_acc" in last:
        rows.append(("test accuracy", _pct(last["eval_acc"])))
    rows += [
        ("time", f"{result.seconds:.1f} s"),
        ("fine-tuned model", str(saved)),
        ("report", str(Path(output) / "report.md")),
    ]
    out_console.print(summary_table("Fine-tuned under the mask", rows))


COMMANDS = (freeze, finetune)
