"""The floor's work for ``protect_throughput.py``: decode + re-encode + write, with Pillow only.

A module of its own, importing nothing of the tool, so that the floor's worker processes
(spawned: they import this module and the benchmark script) start as a plain Pillow script
would when ``--lean-floor`` asks for it.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def floor_chunk(args: tuple[Path, Path, list[str]]) -> int:
    """Decode, re-encode (JPEG keeps its quantisation tables) and write ``files``."""
    source, target, files = args
    for rel in files:
        data = (source / rel).read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()
        options = {"quality": "keep"} if image.format == "JPEG" else {}
        buffer = io.BytesIO()
        image.save(buffer, format=image.format, **options)
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(buffer.getvalue())
    return len(files)


def tool_imports() -> None:
    """A floor worker's start-up in the default mode: the tool's runner and protect API (and
    with them torch), which every protect worker imports, then what protect's worker
    initializer does after them (``gc.freeze``: the worker's exit skips the garbage
    collector's passes over torch's objects)."""
    import gc

    import unlearnable.io.runner  # noqa: F401
    import unlearnable.protect.api  # noqa: F401

    gc.freeze()
