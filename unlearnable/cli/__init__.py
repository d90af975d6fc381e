"""The ``unlearnable`` command line: thin wiring of options to the library, output with rich.

One module per command group, each listing its commands in ``COMMANDS`` (found at import, so
a new command is a new module); shared options, progress bars and output helpers live in
:mod:`.common` and :mod:`.model_options`, and errors become exit codes in one place
(:mod:`.errors`). Nothing is imported
from torch until a command runs, so ``--help`` and usage errors are instant.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import pkgutil

import click

from .._version import __version__
from .errors import CommandGroup

#: Modules of this package that are helpers, not command groups.
_NOT_COMMANDS = {"common", "errors", "model_options", "protect_options", "protect_report"}


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="unlearnable")
def main() -> None:
    """Protect image folders against unauthorised training, and verify that it works.

    \b
    Start here:
      unlearnable demo                          # the whole idea on a built-in example
      unlearnable keygen secret.bin             # make a private key
      unlearnable protect ./photos --key secret.bin
      unlearnable verify ./photos-protected --clean-train ./photos --test ./test-photos

    Exit codes: 0 success, 1 some items failed, 2 usage error, 3 flagged (scan, audit),
    130 interrupted.
    """
    # At exit, leave torch's objects out of the garbage collector's last passes: they took
    # about 0.5 s of every command's exit. (Objects are still released as usual.)
    atexit.register(gc.freeze)


def _add_commands() -> None:
    """Every other module of this package is a command group: it lists its click commands in
    ``COMMANDS``. A new command is a new module; nothing here changes."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in _NOT_COMMANDS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", ()):
            main.add_command(command)


_add_commands()

__all__ = ["main"]
