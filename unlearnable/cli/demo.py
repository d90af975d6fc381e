"""``unlearnable demo``: the main job on a built-in example, no downloads."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PartialFailure, UsageError
from .common import (
    device_option,
    json_option,
    out_console,
    output_option,
    print_json,
    progress_bars,
    quiet_option,
    summary_table,
)
from .verify import run_verify, verify_table


@click.command()
@output_option("Folder for the demo (default: a new ./unlearnable-demo folder).")
@click.option(
    "--per-class",
    type=click.IntRange(2),
    default=80,
    show_default=True,
    help="Training images per class of the built-in example.",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Training epochs of the verification victims.",
)
@click.option("--no-verify", is_flag=True, help="Only protect; skip the verification.")
@device_option("Where the victims train: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N.")
@quiet_option
@json_option
def demo(
    output: Path | None,
    per_class: int,
    epochs: int,
    no_verify: bool,
    device: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run the main job on a built-in example: no downloads, no data to fetch.

    Makes a small labelled image set (synthetic shapes and textures), a fresh key and a
    protected copy, then plays the scraper: trains a small CNN on the clean and on the
    protected copy and prints how much the protection held (a minute or two on a laptop CPU).
    """
    from ..datasets import DEMO_CLASSES, write_demo_folder
    from ..io.preview import write_preview
    from ..keys import write_key_file
    from ..protect import RunOptions, protect_directory
    from ..protect.methods import DEFAULT_METHOD, method_entry
    from ..run_folder import fresh_folder
    from ..verify_run import VerifyOptions, resolve_device

    resolve_device(device)  # a bad --device is a usage error before anything is written
    quiet = quiet or as_json
    folder = output or fresh_folder(Path("unlearnable-demo"))
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} is not empty; choose a new folder")
    clean_train, clean_test = folder / "clean-train", folder / "clean-test"
    protected_train, key_path = folder / "protected-train", folder / "demo.key"
    count = write_demo_folder(clean_train, per_class, seed=0)
    test_count = write_demo_folder(clean_test, max(2, per_class // 3), seed=1)
    key = write_key_file(key_path)
    with progress_bars(quiet) as bars:
        run_result = protect_directory(
            clean_train,
            protected_train,
            key,
            method_entry(DEFAULT_METHOD).config(labels="folders"),  # what protect does
            RunOptions(workers=1),
            progress=bars.counter("protecting"),
        )
    summary = run_result.manifest.summary
    rows = [
        (
            "example",
            f"{count} training + {test_count} test images, {len(DEMO_CLASSES)} classes, 32x32 px",
        ),
        ("clean images", str(clean_train)),
        ("key", f"{key_path} (fingerprint {key.fingerprint})"),
        (
            "protected copy",
            f"{protected_train} ({summary['ok']} files, mean PSNR {summary['mean_psnr']:.1f} dB)",
        ),
        ("manifest", str(run_result.manifest_path)),
        ("preview", str(write_preview(clean_train, run_result, 4))),
    ]
    if not quiet:
        out_console.print(summary_table("unlearnable demo: protect", rows))
    if run_result.failed:
        raise PartialFailure(f"{len(run_result.failed)} demo images could not be protected")
    if no_verify:
        if as_json:
            print_json({"folder": str(folder), "protect": summary})
        return
    if not quiet:
        out_console.print(
            "\nPlaying the scraper: training a small CNN on the clean and on the protected copy..."
        )
    options = VerifyOptions(attacks=("erm",), budget="quick", epochs=epochs, device=device)
    run = run_verify(
        protected_train, clean_train, clean_test, options, folder / "verify-run", quiet
    )
    report = run.report
    if as_json:
        print_json({"folder": str(folder), "protect": summary, "verify": report})
        return
    out_console.print(verify_table(report))
    attack = report["attacks"][0]
    out_console.print(
        f"A model trained on the clean copy reaches {100 * attack['clean']['peak_mean']:.0f}% "
        f"on new images; trained on the protected copy it reaches "
        f"{100 * attack['protected']['peak_mean']:.0f}% (chance: {100 * attack['chance']:.0f}%). "
        f"Report: {run.folder / 'report.md'}",
        highlight=False,
    )


COMMANDS = (demo,)
