"""The plots of a verification run folder: accuracy per epoch (clean vs protected, one PNG per
attack) and peak PER per scraper resolution. Moved out of :mod:`unlearnable.report` unchanged.

The accuracy plot uses matplotlib when it is installed and Pillow (a dependency) otherwise; the
PER-per-size plot uses :func:`unlearnable.plots.line_plot`.
"""

from __future__ import annotations

import io
from typing import Any, Literal

PlotBackend = Literal["auto", "pillow", "matplotlib"]

CLEAN_COLOUR = (31, 119, 180)
PROTECTED_COLOUR = (214, 39, 40)
CHANCE_COLOUR = (128, 128, 128)


PER_BY_SIZE_PLOT = "per_by_size.png"
"""The plot of peak PER against the scraper's resolution (written for several sizes)."""


def plot_per_by_size(report: dict[str, Any]) -> bytes:
    """PNG bytes: peak PER of every attack (one line each) against the image size the victims
    trained at, with the verdict thresholds as dashed lines."""
    from .plots import Series, line_plot

    lines: dict[str, tuple[list[float], list[float]]] = {}
    for attack in report["attacks"]:
        if attack.get("image_size") is None:
            continue
        base = attack["name"].rsplit("@", 1)[0]
        xs, ys = lines.setdefault(base, ([], []))
        xs.append(float(attack["image_size"]))
        ys.append(float("nan") if attack["per_peak"] is None else float(attack["per_peak"]))
    th = report["thresholds"]
    return line_plot(
        [Series(name, xs, ys) for name, (xs, ys) in lines.items()],
        "PER (peak) per scraper resolution",
        "image size the scraper trains at (px)",
        "PER",
        hlines={"protected": th["protected"], "weak": th["weak"]},
        y_range=(-0.2, 1.0),
    )


# --------------------------------------------------------------------------- plots


def _curves(attack: dict[str, Any]) -> dict[str, list[list[float]]]:
    """train set -> per-seed lists of per-epoch test accuracy."""
    out: dict[str, list[list[float]]] = {"clean": [], "protected": []}
    for run in attack["runs"]:
        out[run["train_set"]].append([row["test_acc"] for row in run["epochs"]])
    return out


def _mean_curve(curves: list[list[float]]) -> list[float]:
    length = min(len(c) for c in curves)
    return [sum(c[i] for c in curves) / len(curves) for i in range(length)]


def plot_accuracy(attack: dict[str, Any], backend: PlotBackend = "auto") -> bytes:
    """PNG bytes of the test accuracy per epoch of one attack (an element of the report's
    ``attacks``): clean runs in blue, protected runs in red (one thin line per seed and a thick
    mean when there are several seeds), chance level dashed grey."""
    if backend not in ("auto", "pillow", "matplotlib"):
        raise ValueError(f"plot backend must be 'auto', 'pillow' or 'matplotlib', got {backend!r}")
    if backend in ("auto", "matplotlib"):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if backend == "matplotlib":
                raise
        else:
            return _plot_matplotlib(attack)
    return _plot_pillow(attack)


def _plot_matplotlib(attack: dict[str, Any]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = Figure(figsize=(7.2, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    curves = _curves(attack)
    for train_set, colour in (("clean", CLEAN_COLOUR), ("protected", PROTECTED_COLOUR)):
        rgb = tuple(v / 255 for v in colour)
        runs = curves[train_set]
        if not runs:
            continue
        several = len(runs) > 1
        for curve in runs:
            ax.plot(
                range(1, len(curve) + 1),
                curve,
                color=rgb,
                alpha=0.35 if several else 1.0,
                linewidth=1 if several else 2,
                marker="o" if len(curve) <= 30 else None,
                markersize=3,
            )
        mean = _mean_curve(runs)
        if several:
            ax.plot(range(1, len(mean) + 1), mean, color=rgb, linewidth=2.5)
        ax.plot(
            [], [], color=rgb, linewidth=2, label=f"{train_set} ({len(runs)} seed{'s' * several})"
        )
    ax.axhline(
        attack["chance"],
        color=tuple(v / 255 for v in CHANCE_COLOUR),
        linestyle="--",
        linewidth=1,
        label="chance",
    )
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("epoch")
    ax.set_ylabel("clean test accuracy")
    ax.set_title(f"{attack['name']}: test accuracy per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _nice_step(span: float, max_ticks: int) -> int:
    """The smallest 1/2/5 x 10^k integer step that gives at most ``max_ticks`` ticks."""
    for magnitude in (1, 10, 100, 1000, 10000):
        for base in (1, 2, 5):
            step = base * magnitude
            if span / step <= max_ticks:
                return step
    return max(1, int(span))


def _dashed_hline(draw: Any, x0: int, x1: int, y: int, colour: tuple, dash: int = 6) -> None:
    for x in range(int(x0), int(x1), 2 * dash):
        draw.line([(x, y), (min(x + dash, x1), y)], fill=colour, width=1)


def _plot_pillow(attack: dict[str, Any], width: int = 720, height: int = 440) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 64, 24, 56, 52
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot box (y0 top)
    curves = _curves(attack)
    num_epochs = max((len(c) for runs in curves.values() for c in runs), default=1)

    def px(epoch: float) -> float:
        if num_epochs == 1:
            return (x0 + x1) / 2
        return x0 + (epoch - 1) / (num_epochs - 1) * (x1 - x0)

    def py(acc: float) -> float:
        return y1 - max(0.0, min(1.0, acc)) * (y1 - y0)

    # grid, ticks and labels
    for i in range(6):
        acc = i / 5
        y = py(acc)
        draw.line([(x0, y), (x1, y)], fill=(230, 230, 230), width=1)
        label = f"{round(acc * 100)}%"
        tw = draw.textlength(label, font=font)
        draw.text((x0 - 6 - tw, y - 6), label, fill="black", font=font)
    step = _nice_step(max(num_epochs - 1, 1), 10)
    ticks = [1] + list(range(step, num_epochs + 1, step)) if num_epochs > 1 else [1]
    for epoch in sorted(set(ticks)):
        x = px(epoch)
        draw.line([(x, y1), (x, y1 + 4)], fill="black", width=1)
        label = str(epoch)
        draw.text(
            (x - draw.textlength(label, font=font) / 2, y1 + 7), label, fill="black", font=font
        )
    draw.rectangle([x0, y0, x1, y1], outline="black", width=1)
    xlabel = "epoch"
    draw.text(
        ((x0 + x1) / 2 - draw.textlength(xlabel, font=font) / 2, y1 + 26),
        xlabel,
        fill="black",
        font=font,
    )
    draw.text((8, y0 - 18), "test acc.", fill="black", font=font)
    draw.text((x0, 10), f"{attack['name']}: clean test accuracy per epoch", fill="black", font=font)

    # chance level
    _dashed_hline(draw, x0, x1, round(py(attack["chance"])), CHANCE_COLOUR)

    # curves
    legend: list[tuple[str, tuple[int, int, int], bool]] = []
    for train_set, colour in (("clean", CLEAN_COLOUR), ("protected", PROTECTED_COLOUR)):
        runs = curves[train_set]
        if not runs:
            continue
        several = len(runs) > 1
        faint = tuple(round(255 - (255 - v) * 0.4) for v in colour)
        lines = [(c, faint if several else colour, 1 if several else 2) for c in runs]
        if several:
            lines.append((_mean_curve(runs), colour, 3))
        for curve, fill, line_width in lines:
            points = [(px(i + 1), py(a)) for i, a in enumerate(curve)]
            if len(points) > 1:
                draw.line(points, fill=fill, width=line_width, joint="curve")
            if len(points) <= 30:
                for x, y in points:
                    draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=fill)
        legend.append((f"{train_set} ({len(runs)} seed{'s' * several})", colour, False))
    legend.append((f"chance ({attack['chance']:.0%})", CHANCE_COLOUR, True))

    # legend, in the top margin, right-aligned
    x = x1
    for label, colour, dashed in reversed(legend):
        tw = draw.textlength(label, font=font)
        x -= tw
        draw.text((x, y0 - 20), label, fill="black", font=font)
        x -= 26
        if dashed:
            _dashed_hline(draw, x, x + 20, y0 - 14, colour, dash=4)
        else:
            draw.line([(x, y0 - 14), (x + 20, y0 - 14)], fill=colour, width=3)
        x -= 14
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- markdown
