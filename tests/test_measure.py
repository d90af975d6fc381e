"""Quality of files as written (io.measure): metrics versions 1 and 2, and the runner's choice
(version 3: tests/test_metrics_v3.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import unlearnable as ul
from unlearnable.io.images import decode_pixels
from unlearnable.io.measure import draft_scale, jpeg_view, written_quality
from unlearnable.io.resume import resumed_metrics_version
from unlearnable.metrics import METRICS_VERSION, quality
from unlearnable.visual_cost import (
    _reduce_picture,
    _take_shifted,
    pillow_images,
    to_viewing_size,
    viewing_factor,
)

from .conftest import FIXED_KEY, make_labelled_folder


def _smooth(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 ``(H, W, C)`` image: smooth waves plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (np.sin(xx / rng.uniform(20, 90)) + np.cos(yy / rng.uniform(20, 90))) * 50 + 128
    pixels = np.stack([base + rng.uniform(-30, 30) for _ in range(channels)], axis=-1)
    return np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, quality_: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(
        buffer, "JPEG", quality=quality_
    )
    return buffer.getvalue()


def _chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(pixels)[None]).permute(0, 3, 1, 2)


def test_draft_scale_is_one_eighth_only_where_it_divides_the_viewing_factor():
    assert [draft_scale(f) for f in (1, 2, 4, 6, 8, 12, 16, 24)] == [1, 1, 1, 1, 8, 1, 8, 8]


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_view_is_close_to_the_block_means_of_a_full_decode(channels):
    height, width = 1920, 1936  # viewing factor 8
    data = _jpeg(_smooth(height, width, channels))
    factor = viewing_factor(height, width)
    assert factor == 8
    view = jpeg_view(data, channels, (width, height), factor, 8)
    full = to_viewing_size(_chw(decode_pixels(data, channels, (width, height))), factor)[0]
    assert view is not None and view.shape == full.shape == (channels, 240, 242)
    difference = ((view - full) * 255).round().abs()
    assert float(difference.mean()) < 0.6 and float(difference.max()) <= 4
    if channels == 1:  # the grey channel's 1/8 inverse DCT is the block mean up to rounding
        assert float(difference.max()) <= 1


def test_jpeg_view_refuses_what_it_cannot_scale():
    pixels = _smooth(64, 80)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    assert jpeg_view(png.getvalue(), 3, (80, 64), 8, 8) is None  # not a JPEG
    assert jpeg_view(_jpeg(pixels), 3, (81, 64), 8, 8) is None  # not the expected size
    assert jpeg_view(_jpeg(pixels), 1, (80, 64), 8, 8) is None  # not the expected mode


def test_metrics_version_1_measures_the_fully_decoded_file_as_before():
    original = _smooth(1920, 1936, seed=1)
    protected = np.clip(original.astype(np.int16) + 9, 0, 255).astype(np.uint8)
    data = _jpeg(protected, 80)
    decoded = decode_pixels(data, 3, (1936, 1920))
    expected = quality(_chw(original), _chw(decoded))
    got = written_quality(_chw(original), [protected], [data], [True], 1)
    for name in ("psnr", "ssim", "visual_cost"):
        assert torch.equal(getattr(got, name), getattr(expected, name))


def test_metrics_version_2_is_version_1_except_for_jpeg_files_it_can_scale():
    original = _smooth(1920, 1936, seed=2)
    shifted = np.roll(original, (3, -2), axis=(0, 1))
    protected = np.clip(shifted.astype(np.int16) * 0.9 + 20, 0, 255).astype(np.uint8)
    data = _jpeg(protected)
    v1 = written_quality(_chw(original), [protected], [data], [True], 1)
    v2 = written_quality(_chw(original), [protected], [data], [True], 2)
    assert abs(float(v2.psnr - v1.psnr)) < 0.05 and abs(float(v2.ssim - v1.ssim)) < 0.005
    assert abs(float(v2.visual_cost / v1.visual_cost) - 1) < 0.1
    small = _smooth(600, 700, seed=3)  # viewing factor 2: no reduced decoding, same values
    small_data = _jpeg(small[::-1].copy())
    args = (_chw(small), [small[::-1].copy()], [small_data], [True])
    for name in ("psnr", "ssim", "visual_cost"):
        assert torch.equal(
            getattr(written_quality(*args, 1), name), getattr(written_quality(*args, 2), name)
        )
    lossless = written_quality(_chw(original), [protected], [b"unused"], [False], 2)
    assert torch.equal(lossless.psnr, quality(_chw(original), _chw(protected)).psnr)


def test_an_aligned_window_reduced_by_box_equals_the_reduced_crop():
    image = _chw(_smooth(300, 420, seed=4))
    pictures = pillow_images(image)
    for dy, dx in [(0, 0), (3, -5), (-7, 6)]:
        top, span = 16, (256, 384)
        crop = _take_shifted(image, torch.tensor([[dy, dx]]), top, span)
        box = (top + dx, top + dy, top + dx + span[1], top + dy + span[0])
        reduced = _reduce_picture(pictures[0], 4, box)
        assert torch.equal(reduced, (to_viewing_size(crop, 4) * 255).round().to(torch.uint8)[0])


def test_runs_record_the_metrics_version_and_a_resume_keeps_the_earlier_one(tmp_path):
    source = make_labelled_folder(tmp_path / "in", per_class=2, size=(40, 36))
    one = ul.RunOptions(workers=1)
    run = ul.protect_directory(source, tmp_path / "out", FIXED_KEY, "photo", one)
    assert run.manifest.extra["metrics_version"] == METRICS_VERSION == 3
    manifest_path = tmp_path / "out" / "unlearnable-manifest.json"
    data = json.loads(manifest_path.read_text())
    assert data["metrics_version"] == 3
    del data["metrics_version"]  # as written by a release before the metrics versions
    manifest_path.write_text(json.dumps(data))
    assert resumed_metrics_version(tmp_path / "out", resume=True) == 1
    assert resumed_metrics_version(tmp_path / "out", resume=False) == METRICS_VERSION
    (tmp_path / "out" / "cat" / "img0.png").unlink()
    resumed = ul.protect_directory(
        source, tmp_path / "out", FIXED_KEY, "photo", ul.RunOptions(workers=1, resume=True)
    )
    assert not resumed.failed and resumed.manifest.extra["metrics_version"] == 1
