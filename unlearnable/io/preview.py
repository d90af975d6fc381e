"""A contact sheet to look at a protection: original | protected | amplified difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .atomic import atomic_write_bytes
from .images import ImageDecodeError, decode_image

PREVIEW_NAME = "unlearnable-preview.png"
_CELL = 128
_AMPLIFY = 4.0


def write_preview(input_dir: Path, run_result, count: int) -> Path | None:
    """Write ``unlearnable-preview.png`` in the output folder for the first ``count`` protected
    files that can still be read: one row per file; the difference is
    ``0.5 + 4 * (protected - original)``, so grey means unchanged. Returns the path, or None
    when there is no such file."""
    pairs = []
    for record in run_result.succeeded:
        if len(pairs) == count:
            break
        try:  # a file moved or changed since it was protected is left out of the sheet
            original = _rgb(decode_image((input_dir / record.path).read_bytes()).pixels)
            protected = _rgb(
                decode_image((run_result.output_dir / record.output_path).read_bytes()).pixels
            )
        except (OSError, ImageDecodeError):
            continue
        if original.shape == protected.shape:
            pairs.append((original, protected))
    if not pairs:
        return None
    sheet = Image.new("RGB", (3 * _CELL, len(pairs) * _CELL + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(("original", "protected", f"difference x{_AMPLIFY:g}")):
        draw.text((column * _CELL + 4, 2), title, fill="black")
    for row, (original, protected) in enumerate(pairs):
        difference = np.clip(0.5 + _AMPLIFY * (protected / 255.0 - original / 255.0), 0, 1)
        for column, pixels in enumerate((original, protected, (difference * 255).astype(np.uint8))):
            tile = Image.fromarray(pixels.astype(np.uint8))
            tile.thumbnail(
                (_CELL - 4, _CELL - 4),
                Image.Resampling.NEAREST if max(tile.size) < _CELL else Image.Resampling.LANCZOS,
            )
            if max(tile.size) < _CELL // 2:
                scale = (_CELL - 4) // max(tile.size)
                tile = tile.resize(
                    (tile.width * scale, tile.height * scale), Image.Resampling.NEAREST
                )
            sheet.paste(tile, (column * _CELL + 2, 16 + row * _CELL + 2))
    target = run_result.output_dir / PREVIEW_NAME
    from io import BytesIO

    buffer = BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(target, buffer.getvalue())
    return target


def _rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
