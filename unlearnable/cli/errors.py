"""The one place where errors become exit codes (see :mod:`unlearnable.errors`).

:class:`CommandGroup` is the click group of ``unlearnable``: every command runs inside it, so an
:class:`~unlearnable.errors.UnlearnableError` becomes one line on stderr and its exit code, Ctrl-C
becomes "interrupted" and exit 130, and any other exception (a bug) becomes one line asking for a
report instead of a traceback (``UNLEARNABLE_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os

import click
from rich.markup import escape

from ..errors import EXIT_FAILURES, EXIT_INTERRUPTED, UnlearnableError
from .common import err_console


def print_error(message: str) -> None:
    """``error: message`` on stderr, unwrapped so it stays greppable."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


class CommandGroup(click.Group):
    """A click group that maps the library's errors to exit codes in one place."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except UnlearnableError as exc:
            print_error(str(exc))
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: one line, not a traceback
            if os.environ.get("UNLEARNABLE_DEBUG"):
                raise
            print_error(
                f"internal error: {type(exc).__name__}: {exc}. This is a bug in unlearnable; "
                "please report it (set UNLEARNABLE_DEBUG=1 to see the traceback)."
            )
            ctx.exit(EXIT_FAILURES)
