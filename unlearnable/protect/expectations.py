"""What protection to expect: measured PER by method, image size and output format.

A small table of measurements (no torch), so that ``unlearnable protect`` can tell a user, for
the median image size of their run, what the benchmarks measured for that method, size band
and output format, and which command produced the number. PER is the protection score of
``unlearnable verify`` (1: a scraper is held at chance; 0: no effect), peak and last epoch.

The numbers come from README.md's "What protection to expect" table; update both together
(:data:`MEASUREMENTS` is data: one :class:`Measurement` per row).
"""

from __future__ import annotations

from dataclasses import dataclass

SIZE_BANDS = (
    ("thumbnail", 0, 64),
    ("small", 65, 512),
    ("photo", 513, 1 << 30),
)
"""``(name, smallest, largest)`` short side in pixels of each size band."""

LOSSLESS_FORMATS = frozenset({"png", "bmp", "tiff", "webp-lossless"})


@dataclass(frozen=True)
class Measurement:
    """One measured protection: ``method`` (registered name), ``band`` (:data:`SIZE_BANDS`),
    ``output`` (the format written: ``png``, ``jpeg``, ...), PER at the peak and the last
    epoch, what was measured (``data``), and the ``command`` that produced it."""

    method: str
    band: str
    output: str
    per_peak: float
    per_last: float
    data: str
    command: str


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement(
        "photo",
        "thumbnail",
        "png",
        0.55,
        0.55,
        "CIFAR-10 JPEG files, 32 px, 200 per class, 10 epochs; worst of ERM (0.87 / 0.87) and "
        "grayscale (0.55 / 0.55)",
        "python benchmarks/verify_cuda_cifar10.py --method photo --per-class 200 "
        "--test-per-class 200 --epochs 10 --attacks erm,grayscale, 2026-11-22",
    ),
    Measurement(
        "cuda",
        "thumbnail",
        "png",
        0.63,
        0.73,
        "CIFAR-10, 32 px, lossless source",
        "unlearnable verify --budget quick (reported in issue 14, not rerun)",
    ),
    Measurement(
        "cuda",
        "thumbnail",
        "png",
        0.42,
        0.49,
        "CIFAR-10 JPEG files, 32 px",
        "python benchmarks/verify_cuda_cifar10.py (15 epochs), 2026-11-21",
    ),
    Measurement(
        "cuda",
        "small",
        "png",
        0.11,
        0.12,
        "12 flower species, 224 px photos, scraper at 112 px",
        "python benchmarks/real_photos.py --settings cuda --sizes 112 (12 epochs, 1 seed), "
        "2026-11-22",
    ),
    Measurement(
        "photo",
        "small",
        "png",
        0.70,
        0.72,
        "12 flower species, 224 px photos, scraper at 112 px (ERM, 12 epochs)",
        "python benchmarks/real_photos.py --settings photo (12 epochs, seed 0), 2026-11-22",
    ),
    Measurement(
        "photo",
        "small",
        "png",
        0.70,
        0.74,
        "12 flower species, 224 px photos, scraper at 224 px (ERM, 12 epochs)",
        "python benchmarks/real_photos.py --settings photo --sizes 224, 2026-11-22",
    ),
    Measurement(
        "photo",
        "small",
        "jpeg",
        0.70,
        0.71,
        "12 flower species, 224 px photos, JPEG q75 output, scraper at 112 px",
        "python benchmarks/real_photos.py --settings photo --formats jpeg (12 epochs, 1 seed), "
        "2026-11-22",
    ),
)


def size_band(width: int, height: int) -> str:
    """The :data:`SIZE_BANDS` name of an image's short side."""
    short = min(width, height)
    for name, low, high in SIZE_BANDS:
        if low <= short <= high:
            return name
    return SIZE_BANDS[-1][0]


@dataclass(frozen=True)
class Expectation:
    """What to expect for a run: the matching :class:`Measurement` (None when nothing was
    measured for this method and size band) and whether it was measured with another output
    format than the run's (``format_differs``)."""

    method: str
    width: int
    height: int
    band: str
    output: str
    measurement: Measurement | None
    format_differs: bool = False

    def to_json(self) -> dict:
        found = self.measurement
        return {
            "method": self.method,
            "image_size": [self.width, self.height],
            "size_band": self.band,
            "output": self.output,
            "per_peak": found.per_peak if found else None,
            "per_last": found.per_last if found else None,
            "measured_on": found.data if found else None,
            "measured_output": found.output if found else None,
            "command": found.command if found else None,
            "line": self.line(),
        }

    def line(self) -> str:
        """One sentence for people."""
        found = self.measurement
        size = f"{self.width}x{self.height}"
        if found is None:
            return (
                f"what to expect ({size} px, {self.band}): no measurement yet for "
                f"{self.method} at this size; check with `unlearnable verify`."
            )
        text = (
            f"what to expect ({size} px, {self.band}): PER about {found.per_peak:.2f} (peak) / {found.per_last:.2f} (last epoch) "
            f"against a scraper training on these files (measured on {found.data}, "
            f"{found.output.upper()} output: {found.command})"
        )
        if self.format_differs:
            text += f"; your {self.output.upper()} output is lossy and protects less"
        return text + ". Check with `unlearnable verify`."


def expect(method: str, width: int, height: int, output: str) -> Expectation:
    """What to expect for ``method`` on images of ``width`` x ``height`` written as ``output``
    (``png``, ``jpeg``, ``webp``, ...). Prefers a measurement with the same output format, then
    one of the same size band in another format; among equals, the most cautious (lowest peak
    PER)."""
    band = size_band(width, height)
    output = output.lower()
    rows = [m for m in MEASUREMENTS if m.method == method and m.band == band]
    same = [m for m in rows if m.output == output]
    chosen = same or rows
    if not chosen:
        return Expectation(method, width, height, band, output, None)
    best = min(chosen, key=lambda m: m.per_peak)
    differs = not same and output not in LOSSLESS_FORMATS
    return Expectation(method, width, height, band, output, best, differs)


_FORMAT_OF_EXTENSION = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".webp": "webp",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
}


def expect_for_run(method: str, records) -> Expectation | None:
    """What to expect for a run's median image: ``records`` are the ``ok``
    :class:`~unlearnable.io.manifest.FileRecord` s (width, height, output_path). The median is
    by pixel count; its output format comes from its output file's extension. None when no
    record has a size."""
    sized = sorted(
        (r.width * r.height, r.width, r.height, r.output_path or r.path)
        for r in records
        if r.width and r.height
    )
    if not sized:
        return None
    _, width, height, name = sized[(len(sized) - 1) // 2]
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return expect(method, width, height, _FORMAT_OF_EXTENSION.get(suffix, suffix.lstrip(".")))
