"""The ``unlearnable`` command line: thin wiring of options to the library, output with rich.

One module per command group; shared options, progress bars and output helpers live in
:mod:`.common`, and errors become exit codes in one place (:mod:`.errors`). Nothing is imported
from torch until a command runs, so ``--help`` and usage errors are instant.
"""

from __future__ import annotations

import click

from .._version import __version__
from .demo import demo
from .errors import CommandGroup
from .keys import keygen
from .protect import protect
from .verify import verify, verify_alias


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


for command in (keygen, protect, verify, verify_alias, demo):
    main.add_command(command)

__all__ = ["main"]
