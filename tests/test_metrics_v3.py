"""Metrics version 3 (unlearnable.metrics): the visual cost's full-size shift refined along lines;
everything else as version 2, and versions 1 and 2 unchanged."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import unlearnable as ul
from unlearnable.io.measure import jpeg_view, written_quality
from unlearnable.io.resume import resumed_metrics_version
from unlearnable.metrics import METRICS_VERSION, METRICS_VERSIONS, quality
from unlearnable.visual_cost import (
    _best_shift_grey,
    _refine,
    _refine_lines,
    _usable_shift,
    to_viewing_size,
    viewing_factor,
    visual_cost_at_view,
)

from .conftest import FIXED_KEY, make_labelled_folder


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``(H, W, 3)``: smooth waves, edges and a little noise (photo-like detail at every
    scale, so that a one-pixel misalignment shows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (np.sin(xx / rng.uniform(15, 60)) + np.cos(yy / rng.uniform(15, 60))) * 50 + 128
    base += 40 * ((xx // rng.uniform(30, 70) + yy // rng.uniform(30, 70)) % 2)
    pixels = np.stack([base + rng.uniform(-30, 30) for _ in range(3)], axis=-1)
    return np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, quality_: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality_)
    return buffer.getvalue()


def _chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(pixels)[None]).permute(0, 3, 1, 2)


def _protect(pixels: np.ndarray, shift: tuple[int, int], blur: float = 1.2) -> np.ndarray:
    """A stand-in protection: shifted, blurred (Gaussian, ``blur`` px) and brightened."""
    moved = np.ascontiguousarray(np.roll(pixels, shift, axis=(0, 1)))
    blurred = np.asarray(Image.fromarray(moved).filter(ImageFilter.GaussianBlur(blur)))
    return np.clip(blurred.astype(np.int16) + 6, 0, 255).astype(np.uint8)


def _fields(scores) -> tuple[torch.Tensor, ...]:
    return scores.psnr, scores.ssim, scores.visual_cost


def test_new_runs_use_version_3_and_every_version_stays_known():
    assert METRICS_VERSION == 3 and METRICS_VERSIONS == (1, 2, 3)


@pytest.mark.parametrize("size", [(32, 32), (224, 224), (300, 380)])
def test_version_3_is_version_2_value_for_value_at_viewing_size(size):
    original = _photo(*size, seed=1)
    protected = _protect(original, (1, -1))
    data = _jpeg(protected)
    args = (_chw(original), [protected], [data], [True])
    old, new = _fields(written_quality(*args, 2)), _fields(written_quality(*args, 3))
    for before, after in zip(old, new, strict=True):
        assert torch.equal(before, after)


def test_version_3_reads_a_large_jpeg_back_as_version_2_and_refines_along_lines():
    original = _photo(1920, 1936, seed=2)  # viewing factor 8
    protected = _protect(original, (11, -5), blur=12)  # a blur that shows at viewing size
    data = _jpeg(protected)
    args = (_chw(original), [protected], [data], [True])
    v2, v3 = written_quality(*args, 2), written_quality(*args, 3)
    view = jpeg_view(data, 3, (1936, 1920), 8, 8)
    assert view is not None
    expected = quality(_chw(original), _chw(protected), view[None], line_refine=True)
    again = _fields(written_quality(*args, 3))
    for got, repeat, want in zip(_fields(v3), again, _fields(expected), strict=True):
        assert torch.equal(got, want) and torch.equal(got, repeat)
    assert torch.equal(v3.psnr, v2.psnr) and torch.equal(v3.ssim, v2.ssim)
    assert float(v2.visual_cost) > 0.02
    assert abs(float(v3.visual_cost / v2.visual_cost) - 1) < 0.02


def test_version_3_still_reads_back_a_jpeg_whose_factor_is_not_a_multiple_of_8():
    original = _photo(600, 700, seed=3)  # viewing factor 2: the codec's loss shows
    protected = _protect(original, (2, 3))
    data = _jpeg(protected, 40)
    args = (_chw(original), [protected], [data], [True])
    written = written_quality(*args, 3)
    unread = written_quality(_chw(original), [protected], [data], [False], 3)
    assert not torch.equal(written.psnr, unread.psnr)  # the decoded file was measured
    assert torch.equal(written.psnr, written_quality(*args, 2).psnr)


@pytest.mark.parametrize(("height", "width"), [(1024, 1100), (1920, 1936)])
def test_line_refine_finds_the_exhaustive_refines_shift(height, width):
    original = _photo(height, width, seed=4)
    factor = viewing_factor(height, width)
    for shift in [(0, 0), (5, -3), (-7, 6), (3, 3), (-factor // 2, factor // 2 + 1)]:
        protected = _chw(_protect(original, shift))
        source = _chw(original)
        views = to_viewing_size(source, factor), to_viewing_size(protected, factor)
        _, _, hv, wv = views[0].shape
        s = _usable_shift(hv, wv, 4)
        coarse = _best_shift_grey(views[0].mean(dim=1), views[1].mean(dim=1), s)
        size = (hv - 2 * (s + 1), wv - 2 * (s + 1))
        exhaustive = _refine(source, protected, coarse, factor, s + 1, size)
        lines = _refine_lines(source, protected, coarse, factor, s + 1, size)
        assert lines.tolist() == exhaustive.tolist() == [[-shift[0], -shift[1]]]
        # and the same on float images (any memory layout)
        floats = _refine_lines(
            source.float() / 255, protected.float() / 255, coarse, factor, s + 1, size
        )
        assert floats.tolist() == lines.tolist()


def test_a_pure_shift_costs_nothing_with_the_line_refine():
    original = _chw(_photo(1920, 1936, seed=5))
    moved = torch.roll(original, (13, -6), dims=(2, 3))
    factor = viewing_factor(1920, 1936)
    views = to_viewing_size(original, factor), to_viewing_size(moved, factor)
    cost = visual_cost_at_view(original, moved, *views, factor, line_refine=True)
    assert float(cost) < 1e-3


def test_a_resume_keeps_an_earlier_runs_version_2(tmp_path):
    source = make_labelled_folder(tmp_path / "in", per_class=2, size=(40, 36))
    out = tmp_path / "out"
    first = ul.protect_directory(source, out, FIXED_KEY, "photo", ul.RunOptions(workers=1))
    assert first.manifest.extra["metrics_version"] == 3
    manifest_path = out / "unlearnable-manifest.json"
    data = json.loads(manifest_path.read_text())
    data["metrics_version"] = 2  # as a run of the previous release wrote it
    manifest_path.write_text(json.dumps(data))
    assert resumed_metrics_version(out, resume=True) == 2
    (out / "cat" / "img0.png").unlink()
    resumed = ul.protect_directory(
        source, out, FIXED_KEY, "photo", ul.RunOptions(workers=1, resume=True)
    )
    assert not resumed.failed and resumed.manifest.extra["metrics_version"] == 2
    assert json.loads(manifest_path.read_text())["metrics_version"] == 2
    before = {r.path: r for r in first.manifest.files}
    for record in resumed.manifest.files:  # small files: versions 2 and 3 measure alike
        assert record.visual_cost == before[record.path].visual_cost


def test_a_batch_measures_each_image_as_alone_with_the_line_refine():
    originals = [_photo(1024, 1100, seed=seed) for seed in (6, 7)]
    shifts = [(3, -5), (-6, 2)]
    protected = [_protect(x, shift, blur=4) for x, shift in zip(originals, shifts, strict=True)]
    both = quality(
        torch.cat([_chw(x) for x in originals]),
        torch.cat([_chw(x) for x in protected]),
        line_refine=True,
    )
    for index, (original, changed) in enumerate(zip(originals, protected, strict=True)):
        alone = quality(_chw(original), _chw(changed), line_refine=True)
        for batched, single in zip(_fields(both), _fields(alone), strict=True):
            assert torch.equal(batched[index : index + 1], single)
