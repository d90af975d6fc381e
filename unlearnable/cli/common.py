"""What every command shares: consoles, option decorators, progress bars, tables, JSON.

Nothing here imports torch: ``unlearnable --help`` and usage errors stay instant. Commands
import the library inside their function bodies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

err_console = Console(stderr=True, soft_wrap=True)  # messages stay greppable, never re-wrapped
out_console = Console()

# --------------------------------------------------------------------------- options


def output_option(help: str, hidden_alias: str | None = None):
    """``-o/--output PATH`` (a folder); ``hidden_alias`` adds an old spelling that still works."""

    def decorate(function):
        function = click.option(
            "-o", "--output", "output", type=click.Path(path_type=Path), default=None, help=help
        )(function)
        if hidden_alias:
            function = click.option(
                hidden_alias, "output_alias", type=click.Path(path_type=Path), hidden=True
            )(function)
        return function

    return decorate


def device_option(
    help: str = "Where models run: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N.",
):
    return click.option("--device", default="auto", show_default=True, help=help)


quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars or summary tables."
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (implies --quiet)."
)


def merge_alias(output: Path | None, alias: Path | None, alias_name: str) -> Path | None:
    """The value of ``-o/--output`` or of its hidden alias (both given: a usage error)."""
    if output is not None and alias is not None:
        raise click.UsageError(f"give -o/--output or {alias_name}, not both")
    return output if output is not None else alias


# --------------------------------------------------------------------------- output


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    return table


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def note(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)


# --------------------------------------------------------------------------- progress


class Bars:
    """Named progress bars on one rich display (or nothing when quiet / not a terminal).

    ``update(task, done, total, description=None)`` creates the bar ``task`` on first use;
    ``counter(task)`` gives a ``(done, total)`` callback for library functions.
    """

    def __init__(self, progress: Any | None, names: dict[str, str] | None = None) -> None:
        self._progress = progress
        self._names = names or {}
        self._tasks: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return self._progress is not None

    def update(
        self, task: str, done: int, total: int | None = None, description: str | None = None
    ) -> None:
        if self._progress is None:
            return
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(self._names.get(task, task), total=total)
        fields: dict[str, Any] = {"completed": done, "total": total}
        if description is not None:
            fields["description"] = description
        self._progress.update(self._tasks[task], **fields)

    def counter(self, task: str) -> Callable[[int, int], None]:
        return lambda done, total: self.update(task, done, total)


@contextmanager
def progress_bars(quiet: bool, names: dict[str, str] | None = None) -> Iterator[Bars]:
    """The one progress helper: a :class:`Bars` on stderr, transient, off when ``quiet`` or
    when stderr is not a terminal."""
    if quiet or not err_console.is_terminal:
        yield Bars(None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        yield Bars(progress, names)


# --------------------------------------------------------------------------- keys


def load_key(path: Path):
    """Load a key file (``KeyFileError`` -> exit 2 through the group); warn when other users can
    read it. Never prints the key."""
    from ..keys import key_is_private, load_key_file

    key = load_key_file(path)
    if not key_is_private(path):
        warn(f"key file {path} is readable by other users; `chmod 600 {path}`")
    return key
