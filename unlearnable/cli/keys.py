"""``unlearnable keygen``: make a private key file."""

from __future__ import annotations

from pathlib import Path

import click

from .common import json_option, out_console, print_json, quiet_option


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@quiet_option
@json_option
def keygen(path: Path, quiet: bool, as_json: bool) -> None:
    """Create a new private key file PATH (32 random bytes, mode 0600).

    Refuses to overwrite an existing file. Prints the key's fingerprint, never the key.
    Keep the key: the same key gives the same protection, and it is what makes it private.
    """
    from ..keys import write_key_file

    key = write_key_file(path)
    if as_json:
        print_json({"key_file": str(path), "fingerprint": key.fingerprint})
    elif not quiet:
        out_console.print(f"wrote key {path} (fingerprint {key.fingerprint})", highlight=False)


COMMANDS = (keygen,)
