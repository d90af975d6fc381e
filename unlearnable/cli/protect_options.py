"""Option types and parsing helpers of ``unlearnable protect``: the INPUT type, the method
options registered methods bring, the method config, the default output folder and the engine."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..protect.methods import METHODS, Method


class InputPath(click.Path):
    """An existing local path, or a URL (``s3://...``: shards and Parquet files, read through
    fsspec) kept as text."""

    def __init__(self) -> None:
        super().__init__(exists=True, path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "://" in value:
            return value
        return super().convert(value, param, ctx)


class OutputPath(click.Path):
    """A local folder, or a URL (``s3://...``: shards and Parquet files, written through fsspec)
    kept as text."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "://" in value:
            return value
        return super().convert(value, param, ctx)


def _methods_help() -> str:
    return " ".join(f"{name}: {METHODS.get(name).summary}." for name in METHODS.names())


def _engine(engine: str, address: str | None, workers: int | None):
    """The executor of ``--engine`` (None: the local process pool)."""
    if engine == "local":
        if address is not None:
            raise UsageError("--ray-address needs --engine ray")
        return None
    from ..engines.ray_engine import RayExecutor

    return RayExecutor(address=address, workers=workers)


def default_output_folder(input_dir: Path) -> Path:
    """``INPUT-protected`` beside INPUT (also for ``.``, ``./`` and ``..``)."""
    resolved = input_dir.resolve()
    if resolved.parent == resolved:
        raise UsageError(f"cannot put an output folder beside {resolved}; give -o OUTPUT")
    return resolved.parent / f"{resolved.name}-protected"


def method_config_from_options(entry: Method, values: dict[str, object]):
    """The method config from the command's options (the entry's ``from_options``); a
    ``ValueError`` from a config's validation becomes a usage error."""
    try:
        return entry.config_from_options(values)
    except UsageError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _add_method_options(command: click.Command) -> None:
    """Add the command-line options that registered methods bring (:class:`MethodOption`)."""
    taken = {param.name for param in command.params}
    for name in METHODS.names():
        for option in METHODS.get(name).cli_options:
            if option.name in taken:
                continue
            taken.add(option.name)
            command.params.append(
                click.Option(
                    [option.flag, option.name],
                    type=option.type,
                    default=None,
                    help=f"{name}: {option.help}" if option.help else None,
                    metavar=option.metavar,
                )
            )
