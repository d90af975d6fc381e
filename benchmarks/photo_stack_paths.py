"""The ``photo`` stack's full-resolution pass: stack versions 2 and 3 (torch, float32 bands)
against version 2's stack built from Pillow's C operations (a design considered for version 3).

Per 3000 x 2000 JPEG photo (the generated photos of ``protect_throughput.py``), in one process
at one thread, the CPU time of:

* stack versions 2 and 3, ``PhotoProtector.apply_uint8``
  (:mod:`unlearnable.protect.photo_pixels`): the small CUDA change at the scraper's scale, then
  ``M x + o + up(M c)`` (version 2) or ``x + up(M b + o - s)`` (version 3: the colour
  transform at the scraper's scale) in float32 bands;
* the Pillow candidate, each step and the whole: the same small change ``M c`` (torch, as in
  version 2), quantised to 8 bits with a bias of 128 (``clamp(floor(255 M c + 128.5), 0,
  255)``; changes beyond [-128, 127] levels are clipped), upsampled to full size with
  ``Image.resize(BILINEAR)``; the colour transform ``Image.convert("RGB", matrix)`` (rounds
  and clamps ``M x + 255 o`` per pixel); the two added with ``ImageChops.add(..., offset=-128)``;
  plus ``Image.fromarray`` in and ``np.asarray`` out;

and the output difference of the Pillow candidate and of version 3 against version 2 in 8-bit
levels (max, mean, and the share of values that differ). The Pillow candidate is not in the
library (about 2x slower than version 2): it is here so that the reason can be measured again.

    python benchmarks/photo_stack_paths.py --photos 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protect_stages import _cpu  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args()
    import torch
    from protect_throughput import make_photos

    from unlearnable.io.images import decode_image
    from unlearnable.keys import SecretKey
    from unlearnable.protect.cuda import cuda_change_at_scale_u8, cuda_filters
    from unlearnable.protect.photo import PhotoProtector
    from unlearnable.protect.shortcuts import colour_transforms

    torch.set_num_threads(args.threads)
    key, classes = SecretKey(bytes(32)), ["photos"]
    protector = PhotoProtector(key, classes, stack_version=2)
    version3 = PhotoProtector(key, classes, stack_version=3)
    plan = protector.plan(2000, 3000)
    bank = cuda_filters(key, classes, protector.params.kernel_size, plan.blur)
    transform = colour_transforms(key, classes, plan.colour)[0]
    matrix, offset = transform[:, :3], transform[:, 3]
    pillow_matrix = tuple(
        float(v) for row in torch.cat([matrix, offset[:, None] * 255.0], 1) for v in row
    )
    label = torch.tensor([0])

    def small_change(pixels: np.ndarray) -> Image.Image:
        chw = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        change = cuda_change_at_scale_u8(chw, label, bank, protector.params.reference)[0]
        biased = torch.einsum("oc,chw->hwo", matrix, change).mul_(255.0).add_(128.5).floor_()
        return Image.fromarray(biased.clamp_(0, 255).to(torch.uint8).numpy())

    def pillow_stack(pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape[:2]
        up = small_change(pixels).resize((width, height), Image.BILINEAR)
        coloured = Image.fromarray(pixels).convert("RGB", pillow_matrix)
        return np.asarray(ImageChops.add(coloured, up, 1.0, -128))

    def steps(pixels: np.ndarray, batch: torch.Tensor) -> dict:
        picture, small = Image.fromarray(pixels), small_change(pixels)
        up = small.resize(picture.size, Image.BILINEAR)
        return {
            "stack v2: apply_uint8": lambda: protector.apply_uint8(batch, label, plan),
            "stack v3: apply_uint8": lambda: version3.apply_uint8(batch, label, plan),
            "pillow: small change (torch)": lambda: small_change(pixels),
            "pillow: Image.fromarray": lambda: Image.fromarray(pixels),
            "pillow: convert(RGB, matrix)": lambda: picture.convert("RGB", pillow_matrix),
            "pillow: resize up BILINEAR": lambda: small.resize(picture.size, Image.BILINEAR),
            "pillow: ImageChops.add": lambda: ImageChops.add(picture, up, 1.0, -128),
            "pillow: np.asarray": lambda: np.asarray(picture),
            "pillow: whole stack": lambda: pillow_stack(pixels),
        }

    rows: dict[str, list[float]] = {}
    differences: dict[str, list[tuple[int, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="unlearnable-stack-") as tmp:
        folder = make_photos(Path(tmp), args.photos, 3000, 2000)
        for path in sorted((folder / "photos").glob("*.jpg")):
            pixels = decode_image(path.read_bytes()).pixels
            batch = torch.from_numpy(pixels[None])
            for name, step in steps(pixels, batch).items():
                rows.setdefault(name, []).append(_cpu(step, args.repeats) * 1e3)
            v2 = protector.apply_uint8(batch, label, plan)[0].astype(np.int16)
            for name, out in (
                ("pillow", pillow_stack(pixels)),
                ("v3", version3.apply_uint8(batch, label, plan)[0]),
            ):
                diff = np.abs(out.astype(np.int16) - v2)
                row = (int(diff.max()), float(diff.mean()), float((diff > 0).mean()))
                differences.setdefault(name, []).append(row)
    print(
        f"\nphoto stack, {args.photos} photos of 3000x2000, CPU ms per photo at "
        f"{args.threads} thread(s) (median), load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'step':<32}{'ms':>8}")
    for name, values in rows.items():
        print(f"{name:<32}{statistics.median(values):>8.1f}")
    print()
    for name, rows_of in differences.items():
        table = np.array(rows_of)
        print(
            f"{name} - stack v2 (8-bit levels): max {int(table[:, 0].max())}, "
            f"mean {table[:, 1].mean():.3f}, values that differ {100 * table[:, 2].mean():.1f}%"
        )


if __name__ == "__main__":
    main()
