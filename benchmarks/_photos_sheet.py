"""A contact sheet PNG: one column per sample photo, originals on top, one row per setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from _photos_data import Split
from PIL import Image, ImageDraw

_LABEL_HEIGHT = 14


def contact_sheet(train: Split, rows: list[tuple[str, torch.Tensor]], path: Path, columns: int = 6) -> None:
    """Write originals and protected versions (uint8 ``(N, 3, S, S)`` per row) of ``columns``
    photos from different classes to ``path``."""
    step = max(1, len(train.classes) // columns)
    picks = [int((train.labels == c).nonzero()[0, 0]) for c in range(0, len(train.classes), step)][:columns]
    size = train.images.shape[-1]
    all_rows = [("original", train.images), *rows]
    sheet = Image.new("RGB", (len(picks) * size, len(all_rows) * (size + _LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (title, images) in enumerate(all_rows):
        top = r * (size + _LABEL_HEIGHT)
        draw.text((2, top + 1), title, fill="black")
        for c, index in enumerate(picks):
            pixels = images[index].permute(1, 2, 0).numpy().astype(np.uint8)
            sheet.paste(Image.fromarray(pixels), (c * size, top + _LABEL_HEIGHT))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
