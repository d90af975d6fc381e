"""The model-file options every model-side command shares (scan, purify, audit, finetune...).

Usage::

    @click.command()
    @click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, path_type=Path))
    @model_file_options
    @device_option()
    def scan(model_path, model_file, device, ...):
        model = load_model_file(model_path, model_file, device)

``model_file`` is a :class:`ModelFileOptions` (frozen), built from ``--arch``, ``--input-size``,
``--in-channels``, ``--mean``, ``--std``, ``--classes`` and ``--trust-pickle``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import UsageError


@dataclass(frozen=True)
class ModelFileOptions:
    """What the caller says about a model file (see :func:`unlearnable.load_model`)."""

    arch: str | None = None
    input_size: int | None = None
    in_channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    trust_pickle: bool = False


def parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` -> a tuple of floats (``None`` stays ``None``)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{name} is empty")
    return values


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """Class names in output order: a comma-separated list, or ``@FILE`` / a path to a text file
    with one name per line (blank lines ignored)."""
    if text is None:
        return None
    candidate = Path(text[1:] if text.startswith("@") else text)
    if text.startswith("@") or (candidate.is_file() and "," not in text):
        try:
            lines = candidate.read_text(encoding="utf-8-sig").splitlines()  # a BOM is no name
        except OSError as exc:
            raise UsageError(f"cannot read class names from {candidate}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"cannot read class names from {candidate}: {exc}") from None
        names = tuple(line.strip() for line in lines if line.strip())
    else:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
    if len(names) < 2:
        hint = ""
        if len(names) == 1 and ("/" in text or Path(text).suffix):
            hint = f" ({text!r} is no file here; a file of names is given as @FILE)"
        raise UsageError(f"--classes needs at least 2 class names, got {len(names)}{hint}")
    return names


def model_file_options(function):
    """Add the model-file options; the command receives them as ``model_file``."""
    options = [
        click.option(
            "--arch",
            default=None,
            help="Architecture of a bare state dict (e.g. resnet20, small-cnn, tv:resnet18).",
        ),
        click.option(
            "--input-size",
            type=click.IntRange(8),
            default=None,
            help="Square input size S of a model we did not build (TorchScript, state dict).",
        ),
        click.option(
            "--in-channels",
            type=click.IntRange(1),
            default=None,
            help="Input channels of a model we did not build (default 3).",
        ),
        click.option(
            "--mean",
            default=None,
            metavar="M1,M2,M3",
            help="Input normalisation mean, if the model expects normalised inputs.",
        ),
        click.option(
            "--std", default=None, metavar="S1,S2,S3", help="Input normalisation std (with --mean)."
        ),
        click.option(
            "--classes",
            default=None,
            metavar="NAMES|@FILE",
            help="Class names in output order: comma-separated, or @FILE with one per line.",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow pickled .pt/.pth weights (read with weights_only): only for files you trust.",
        ),
    ]

    @functools.wraps(function)
    def wrapper(*args, arch, input_size, in_channels, mean, std, classes, trust_pickle, **kwargs):
        kwargs["model_file"] = ModelFileOptions(
            arch=arch,
            input_size=input_size,
            in_channels=in_channels,
            mean=parse_floats(mean, "--mean"),
            std=parse_floats(std, "--std"),
            classes=parse_classes(classes),
            trust_pickle=trust_pickle,
        )
        return function(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def load_model_file(path: Path, options: ModelFileOptions, device: str = "cpu"):
    """:func:`unlearnable.load_model` with the command's options (a ``LoadedModel``)."""
    from ..checkpoints import load_model
    from ..verify_run import resolve_device

    return load_model(
        path,
        arch=options.arch,
        input_size=options.input_size,
        mean=options.mean,
        std=options.std,
        classes=options.classes,
        in_channels=options.in_channels,
        trust_pickle=options.trust_pickle,
        device=resolve_device(device),
    )


def refuse_overwriting_model(model_path: Path, model_output: Path) -> None:
    """``UsageError`` when writing a model to ``model_output`` (a folder, or a ``.json`` /
    ``.safetensors`` stem, as :func:`~unlearnable.checkpoints.save_model` takes it; a
    TorchScript ``model.pt`` in that folder too) would replace a file of the model being read
    from ``model_path``: inputs are never modified."""
    from ..checkpoints.files import model_paths

    def files(path: Path) -> set[Path]:
        found = {path, *model_paths(path)}
        if path.suffix.lower() not in (".json", ".safetensors"):
            found.add(path / "model.pt")
        return {p.resolve() for p in found}

    clash = sorted(
        str(p) for p in files(Path(model_path)) & files(Path(model_output)) if p.exists()
    )
    if clash:
        raise UsageError(
            f"the output {model_output} would overwrite the input model ({clash[0]}); "
            "give another -o/--output"
        )


def check_output_folder(output: Path | None, *inputs: Path | None) -> None:
    """``UsageError`` now, before any work, when ``-o/--output`` names something that is not a
    folder (an existing file), or lies in one of the input image folders ``inputs`` (its plots
    would be read as images by the next run, and inputs are never written to)."""
    if output is None:
        return
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o/--output {output} is a file; give a folder")
    target = output.resolve()
    for folder in inputs:
        if folder is not None and Path(folder).is_dir():
            source = Path(folder).resolve()
            if target == source or source in target.parents:
                raise UsageError(
                    f"-o/--output {output} is inside the input folder {folder}; write elsewhere"
                )
