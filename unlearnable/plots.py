"""Small PNG line plots with Pillow (a dependency), for run-folder reports.

:func:`line_plot` draws any number of named series on one set of axes: the per-epoch curves of
a defense, a mask's frozen ratio per step, an observed statistic against a null distribution.
It needs no matplotlib and gives the same bytes on every machine for the same input.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

PALETTE = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
)
GREY = (128, 128, 128)


@dataclass(frozen=True)
class Series:
    """One named line: ``xs`` and ``ys`` of equal length; ``colour`` defaults to the palette."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: tuple[int, int, int] | None = None
    width: int = 2


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    span = hi - lo if hi > lo else 1.0
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def line_plot(
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    hlines: dict[str, float] | None = None,
    y_range: tuple[float, float] | None = None,
    width: int = 720,
    height: int = 440,
) -> bytes:
    """PNG bytes of ``series`` as lines (with dots when short), dashed grey ``hlines`` (name ->
    y), a legend in the top margin and tick labels. ``y_range`` defaults to the data's range.
    Non-finite points are skipped."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x0, x1, y0, y1 = 70, width - 24, 56, height - 52
    points = [
        (x, y)
        for s in series
        for x, y in zip(s.xs, s.ys, strict=True)
        if math.isfinite(x) and math.isfinite(y)
    ]
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points] + list((hlines or {}).values())
    ys = ys or [0.0, 1.0]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = y_range if y_range is not None else (min(ys), max(ys))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5

    def px(x: float) -> float:
        return x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (min(max(y, y_lo), y_hi) - y_lo) / (y_hi - y_lo) * (y1 - y0)

    for y in _ticks(y_lo, y_hi):
        draw.line([(x0, py(y)), (x1, py(y))], fill=(230, 230, 230), width=1)
        text = _label(y)
        draw.text(
            (x0 - 6 - draw.textlength(text, font=font), py(y) - 6), text, fill="black", font=font
        )
    for x in _ticks(x_lo, x_hi, 10):
        draw.line([(px(x), y1), (px(x), y1 + 4)], fill="black", width=1)
        text = _label(x)
        draw.text(
            (px(x) - draw.textlength(text, font=font) / 2, y1 + 7), text, fill="black", font=font
        )
    draw.rectangle([x0, y0, x1, y1], outline="black", width=1)
    draw.text(
        ((x0 + x1) / 2 - draw.textlength(xlabel, font=font) / 2, y1 + 26),
        xlabel,
        fill="black",
        font=font,
    )
    draw.text((8, y0 - 18), ylabel, fill="black", font=font)
    draw.text((x0, 10), title, fill="black", font=font)

    legend: list[tuple[str, tuple[int, int, int], bool]] = []
    for name, value in (hlines or {}).items():
        y = round(py(value))
        for x in range(x0, x1, 12):
            draw.line([(x, y), (min(x + 6, x1), y)], fill=GREY, width=1)
        legend.append((f"{name} ({_label(value)})", GREY, True))
    for index, s in enumerate(series):
        colour = s.colour or PALETTE[index % len(PALETTE)]
        line = [
            (px(x), py(y))
            for x, y in zip(s.xs, s.ys, strict=True)
            if math.isfinite(x) and math.isfinite(y)
        ]
        if len(line) > 1:
            draw.line(line, fill=colour, width=s.width, joint="curve")
        if len(line) <= 40:
            for x, y in line:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        legend.append((s.name, colour, False))
    x = x1
    for name, colour, dashed in reversed(legend):
        x -= draw.textlength(name, font=font)
        draw.text((x, y0 - 20), name, fill="black", font=font)
        x -= 26
        if dashed:
            draw.line([(x, y0 - 14), (x + 8, y0 - 14)], fill=colour, width=1)
            draw.line([(x + 12, y0 - 14), (x + 20, y0 - 14)], fill=colour, width=1)
        else:
            draw.line([(x, y0 - 14), (x + 20, y0 - 14)], fill=colour, width=3)
        x -= 14
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def histogram_plot(
    values: Sequence[float], observed: float, title: str, xlabel: str, bins: int = 30
) -> bytes:
    """PNG bytes of a histogram of ``values`` (e.g. a null distribution) as a step line, with
    the ``observed`` value as a vertical red line."""
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    lo, hi = min(finite + [observed]), max(finite + [observed])
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = (hi - lo) / bins
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    xs, ys = [], []
    for i, c in enumerate(counts):
        xs += [lo + i * step, lo + (i + 1) * step]
        ys += [c, c]
    top = max(counts) or 1
    return line_plot(
        [
            Series("null distribution", xs, ys, colour=PALETTE[0]),
            Series("observed", [observed, observed], [0, top], colour=PALETTE[1], width=3),
        ],
        title,
        xlabel,
        "count",
        y_range=(0, top * 1.05),
    )


__all__ = ["PALETTE", "Series", "histogram_plot", "line_plot"]
