"""``photo`` stack version 2 (8-bit pixels, one full-resolution pass) and the uint8 paths of
the folder pipeline: golden vectors, the documented definition, version 1 kept bit-identical,
resume keeping a run's version."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unlearnable as ul
from unlearnable.errors import UsageError
from unlearnable.imageops import to_pixels, to_uint8
from unlearnable.io.work import protect_pixels
from unlearnable.protect.cuda import (
    CudaProtector,
    apply_cuda,
    cuda_change_at_scale_u8,
    cuda_filters,
)
from unlearnable.protect.photo import PhotoParams, PhotoProtector
from unlearnable.protect.photo_method import PhotoConfig, photo_from_options
from unlearnable.protect.photo_pixels import bilinear_taps, stack_pixels
from unlearnable.protect.shortcuts import PlaidParams, class_plaids, colour_transforms

from .conftest import FIXED_KEY, make_labelled_folder, tree_digest


def _ramp_pixels(channels: int = 3) -> torch.Tensor:
    ramp = (torch.arange(3 * 16 * 16) % 97).float().div(96).reshape(1, 3, 16, 16)
    return to_uint8(ramp).permute(0, 2, 3, 1)[..., :channels].contiguous()


def _photo(height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A smooth random uint8 ``(1, H, W, C)`` image with noise (some saturated pixels)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, channels, height // 8 + 1, width // 8 + 1, generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    image = image + 0.08 * torch.randn(image.shape, generator=generator)
    return to_uint8(image).permute(0, 2, 3, 1).contiguous()


def test_golden_output_stack_v2():
    protector = PhotoProtector(FIXED_KEY, ["cat", "dog"], "mid", PhotoParams(reference=8, colour=0.2), 2)
    out = protector.apply_uint8(_ramp_pixels(), torch.tensor([1]), protector.plan(16, 16))
    assert out[0, 5, 7].tolist() == [255, 196, 98]
    assert out[0, 12, 2].tolist() == [71, 213, 105]
    assert abs(int(out.astype(np.int64).sum()) - 119253) <= 2
    grey = protector.apply_uint8(_ramp_pixels(1), torch.tensor([1]), protector.plan(16, 16))
    assert grey[0, 5, 7].tolist() == [239]


def _definition(pixels: torch.Tensor, protector: PhotoProtector, label: int, plan) -> np.ndarray:
    """Stack version 2 as its docstring defines it, in float64 with torch's bilinear resize."""
    _, height, width, channels = pixels.shape
    t = colour_transforms(FIXED_KEY, protector.classes, plan.colour)[label].double()
    matrix, offset = t[:, :3], t[:, 3]
    if channels == 1:
        matrix, offset = matrix.sum().div(3).reshape(1, 1), offset.mean().reshape(1)
    bank = cuda_filters(FIXED_KEY, protector.classes, protector.params.kernel_size, plan.blur)
    chw = pixels.permute(0, 3, 1, 2)
    change = cuda_change_at_scale_u8(chw, torch.tensor([label]), bank, protector.params.reference)
    coloured = torch.einsum("oc,bchw->bohw", matrix, change.double())
    up = F.interpolate(coloured, size=(height, width), mode="bilinear", align_corners=False)[0]
    x = chw[0].double() / 255
    z = torch.einsum("oc,chw->ohw", matrix, x) + offset[:, None, None] + up
    if plan.plaid_eps > 0:
        plaid = PlaidParams(components=1, cycles=protector.params.plaid_cycles, chroma=0.0)
        pattern = class_plaids(FIXED_KEY, protector.classes, height, width, plaid)[label]
        pattern = pattern.double() if channels == 3 else pattern.double().mean(0, keepdim=True)
        z = z + plan.plaid_eps * pattern
    return torch.floor(255 * z + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    "height, width, channels, plaid_eps",
    [(150, 226, 3, 0.0), (130, 120, 1, 0.0), (167, 125, 3, 0.03), (117, 500, 3, 0.0)],
)
def test_stack_v2_is_its_documented_definition(height, width, channels, plaid_eps):
    pixels = _photo(height, width, channels)
    before = pixels.clone()
    protector = PhotoProtector(FIXED_KEY, ["a", "b"], "high", PhotoParams(plaid_eps=plaid_eps), 2)
    plan = protector.plan(height, width)
    out = protector.apply_uint8(pixels, torch.tensor([1]), plan)[0]
    expected = _definition(pixels, protector, 1, plan)
    difference = np.abs(out.astype(np.int64) - expected.astype(np.int64))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float32 vs float64
    assert torch.equal(pixels, before)
    # the same shortcut as version 1: most values equal, the rest off by little
    v1 = PhotoProtector(FIXED_KEY, ["a", "b"], "high", PhotoParams(plaid_eps=plaid_eps), 1)
    old = v1.apply_uint8(pixels, torch.tensor([1]), plan)[0].astype(np.int64)
    assert np.abs(out.astype(np.int64) - old).mean() < 0.5


def test_stack_v2_on_small_images_is_v1_with_one_depthwise_convolution():
    small = _photo(40, 48).expand(6, -1, -1, -1).contiguous()
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    v1 = PhotoProtector(FIXED_KEY, ["a", "b"], stack_version=1)
    v2 = PhotoProtector(FIXED_KEY, ["a", "b"], stack_version=2)
    plan = v2.plan(40, 48)
    new = v2.apply_uint8(small, labels, plan).astype(np.int64)
    old = v1.apply_uint8(small, labels, plan).astype(np.int64)
    assert np.abs(new - old).max() <= 1 and (new != old).mean() < 1e-3
    alone = np.concatenate(
        [v2.apply_uint8(small[i : i + 1], labels[i : i + 1], plan) for i in range(6)]
    )
    assert np.array_equal(alone, new)  # an image's output does not depend on its batch
    filters = cuda_filters(FIXED_KEY, ["a", "b"], 3, 0.3)
    images = small.permute(0, 3, 1, 2).float() / 255
    direct = apply_cuda(images, labels, filters)
    assert torch.allclose(apply_cuda(images, labels, filters, depthwise=True), direct, atol=1e-6)


def test_stack_v2_float_apply_agrees_with_the_uint8_path():
    v2 = PhotoProtector(FIXED_KEY, ["a", "b"], stack_version=2)
    labels = torch.tensor([0])
    for pixels in (_photo(120, 130, seed=1), _photo(30, 40, seed=2)):
        plan = v2.plan(*pixels.shape[1:3])
        as_float = pixels.permute(0, 3, 1, 2).float() / 255
        through_float = to_pixels(v2.apply(as_float, labels, plan))
        assert np.array_equal(through_float, v2.apply_uint8(pixels, labels, plan))


def test_bilinear_taps_are_torch_half_pixel_upsampling():
    small = torch.rand(1, 1, 7, 11, dtype=torch.float64)
    first, second, weight = bilinear_taps(50, 11)
    rows = small[..., first] + torch.from_numpy(weight).double() * (
        small[..., second] - small[..., first]
    )
    top, bottom, row_weight = bilinear_taps(23, 7)
    both = rows[..., top, :] + torch.from_numpy(row_weight).double()[:, None] * (
        rows[..., bottom, :] - rows[..., top, :]
    )
    expected = F.interpolate(small, size=(23, 50), mode="bilinear", align_corners=False)
    assert torch.allclose(both, expected, atol=1e-6)


def test_stack_pixels_without_change_is_the_colour_transform():
    pixels = _photo(20, 30)[0].numpy()
    matrix, offset = torch.eye(3) * 0.5, torch.full((3,), 0.25)
    out = stack_pixels(pixels, matrix, offset)
    expected = np.floor(pixels.astype(np.float64) * 0.5 + 0.25 * 255 + 0.5).clip(0, 255)
    assert np.array_equal(out, expected.astype(np.uint8))
    with pytest.raises(ValueError, match="matrix"):
        stack_pixels(pixels, torch.eye(1), torch.zeros(1))


def test_the_uint8_pipeline_keeps_version_1_and_float_methods_bit_identical():
    pixels = _photo(130, 150, seed=2).expand(2, -1, -1, -1).contiguous()
    labels = torch.tensor([0, 1])
    v1 = PhotoProtector(FIXED_KEY, ["a", "b"], stack_version=1)
    plan = v1.plan(130, 150)
    originals = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    old = to_uint8(v1.apply(originals, labels, plan)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(v1.apply_uint8(pixels, labels, plan), old)
    cuda = CudaProtector(FIXED_KEY, ["a", "b"])
    cuda_plan = cuda.plan(130, 150)
    expected = to_uint8(cuda.apply(originals, labels, cuda_plan)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(protect_pixels(cuda, pixels, labels, cuda_plan), expected)
    assert torch.equal(originals, pixels.permute(0, 3, 1, 2).float() / 255)


def test_stack_version_option_and_resume_keeps_the_runs_version(tmp_path):
    assert photo_from_options({"stack_version": 1}) == PhotoConfig(stack_version=1)
    with pytest.raises(UsageError, match="stack version"):
        PhotoConfig(stack_version=4)
    source = make_labelled_folder(tmp_path / "in", per_class=2, size=(130, 120))
    one = ul.RunOptions(workers=1)
    first = ul.protect_directory(
        source, tmp_path / "v1", FIXED_KEY, PhotoConfig(stack_version=1), one
    )
    new = ul.protect_directory(source, tmp_path / "v2", FIXED_KEY, "photo", one)
    assert first.manifest.parameters["stack_version"] == 1
    assert new.manifest.parameters["stack_version"] == 3
    done = tree_digest(tmp_path / "v1")
    assert done["cat/img0.png"] != tree_digest(tmp_path / "v2")["cat/img0.png"]
    (tmp_path / "v1" / "cat" / "img0.png").unlink()
    resumed = ul.protect_directory(
        source, tmp_path / "v1", FIXED_KEY, "photo", ul.RunOptions(workers=1, resume=True)
    )
    assert resumed.manifest.parameters["stack_version"] == 1 and not resumed.failed
    assert tree_digest(tmp_path / "v1")["cat/img0.png"] == done["cat/img0.png"]


def test_huge_pages_are_requested_only_where_the_kernel_hands_them_out(tmp_path, monkeypatch):
    import os

    from unlearnable.io import work as runner

    setting = tmp_path / "enabled"
    monkeypatch.setattr(runner, "HUGE_PAGES_SETTING", str(setting))
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "unset")  # restored after the test
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    runner.use_huge_pages()  # no setting file: nothing
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ
    setting.write_text("always madvise [never]\n")
    runner.use_huge_pages()
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ
    setting.write_text("always [madvise] never\n")
    runner.use_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # a user's choice is kept
    runner.use_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


def test_stack_v2_does_not_depend_on_the_band_height(monkeypatch):
    import unlearnable.protect.photo_pixels as photo_pixels

    pixels = _photo(150, 170, seed=3)
    protector = PhotoProtector(FIXED_KEY, ["a", "b"], "high", PhotoParams(plaid_eps=0.02), 2)
    plan = protector.plan(150, 170)
    whole = protector.apply_uint8(pixels, torch.tensor([0]), plan)
    monkeypatch.setattr(photo_pixels, "TILE_ROWS", 7)
    assert np.array_equal(protector.apply_uint8(pixels, torch.tensor([0]), plan), whole)


def test_resume_keeps_the_colour_strength_an_earlier_release_recorded(tmp_path, monkeypatch):
    """The colour default went from 0.2 to 0.3: a run started with 0.2 resumes with 0.2 (same
    files), while a new run gets 0.3."""
    import functools

    from unlearnable.protect import photo as photo_module

    source = make_labelled_folder(tmp_path / "in", per_class=2, size=(130, 120))
    one = ul.RunOptions(workers=1)
    with monkeypatch.context() as patch:  # an earlier release's defaults
        patch.setattr(photo_module, "PhotoParams", functools.partial(PhotoParams, colour=0.2))
        first = ul.protect_directory(source, tmp_path / "old", FIXED_KEY, "photo", one)
    assert first.manifest.parameters["colour"] == 0.2
    done = tree_digest(tmp_path / "old")
    (tmp_path / "old" / "cat" / "img0.png").unlink()
    resumed = ul.protect_directory(
        source, tmp_path / "old", FIXED_KEY, "photo", ul.RunOptions(workers=1, resume=True)
    )
    assert resumed.manifest.parameters["colour"] == 0.2 and not resumed.failed
    again = tree_digest(tmp_path / "old")
    images = [name for name in done if name.endswith(".png")]
    assert len(images) == 4 and all(again[name] == done[name] for name in images)
    new = ul.protect_directory(source, tmp_path / "new", FIXED_KEY, "photo", one)
    assert new.manifest.parameters["colour"] == PhotoParams().colour == 0.3
    assert tree_digest(tmp_path / "new")["cat/img0.png"] != done["cat/img0.png"]
