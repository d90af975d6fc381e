"""``python -m unlearnable``: the same as the ``unlearnable`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="unlearnable")
