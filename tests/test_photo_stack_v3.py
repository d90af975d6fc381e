"""``photo`` stack version 3 (the colour transform at the scraper's scale): its documented
definition, determinism per key, closeness to version 2, grey images, the small-image path,
and a run's version kept on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unlearnable as ul
from unlearnable.errors import UsageError
from unlearnable.imageops import to_uint8
from unlearnable.io.manifest import MANIFEST_NAME
from unlearnable.keys import SecretKey
from unlearnable.protect.cuda import apply_cuda, cuda_filters, reference_copy_u8
from unlearnable.protect.photo import PhotoParams, PhotoProtector
from unlearnable.protect.photo_method import PhotoConfig, photo_from_options
from unlearnable.protect.shortcuts import PlaidParams, class_plaids, colour_transforms

from .conftest import FIXED_KEY, make_labelled_folder, tree_digest


def _photo(height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A smooth random uint8 ``(1, H, W, C)`` image with a little noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, channels, height // 8 + 1, width // 8 + 1, generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    image = image + 0.03 * torch.randn(image.shape, generator=generator)
    return to_uint8(image).permute(0, 2, 3, 1).contiguous()


def _definition(pixels: torch.Tensor, protector: PhotoProtector, label: int, plan) -> np.ndarray:
    """Stack version 3 as photo_pixels' docstring defines it, in float64."""
    _, height, width, channels = pixels.shape
    t = colour_transforms(protector.key, protector.classes, plan.colour)[label].double()
    matrix, offset = t[:, :3], t[:, 3]
    if channels == 1:
        matrix, offset = matrix.sum().div(3).reshape(1, 1), offset.mean().reshape(1)
    chw = pixels.permute(0, 3, 1, 2)
    small = reference_copy_u8(chw, protector.params.reference)
    filtered = small.double()
    if plan.blur > 0:
        k = protector.params.kernel_size
        bank = cuda_filters(protector.key, protector.classes, k, plan.blur)
        filtered = apply_cuda(small, torch.tensor([label]), bank).double()
    change = torch.einsum("oc,bchw->bohw", matrix, filtered) + offset[:, None, None] - small
    up = F.interpolate(change, size=(height, width), mode="bilinear", align_corners=False)[0]
    z = chw[0].double() / 255 + up
    if plan.plaid_eps > 0:
        plaid = PlaidParams(components=1, cycles=protector.params.plaid_cycles, chroma=0.0)
        pattern = class_plaids(protector.key, protector.classes, height, width, plaid)[label]
        pattern = pattern.double() if channels == 3 else pattern.double().mean(0, keepdim=True)
        z = z + plan.plaid_eps * pattern
    return torch.floor(255 * z + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def test_golden_output_stack_v3():
    from .test_photo_pixels import _ramp_pixels

    params = PhotoParams(reference=8, colour=0.2)
    protector = PhotoProtector(FIXED_KEY, ["cat", "dog"], "mid", params, 3)
    out = protector.apply_uint8(_ramp_pixels(), torch.tensor([1]), protector.plan(16, 16))
    assert out[0, 5, 7].tolist() == [255, 209, 100]
    assert out[0, 12, 2].tolist() == [73, 202, 96]
    assert abs(int(out.astype(np.int64).sum()) - 119310) <= 2
    grey = protector.apply_uint8(_ramp_pixels(1), torch.tensor([1]), protector.plan(16, 16))
    assert grey[0, 5, 7].tolist() == [245]


@pytest.mark.parametrize(
    "height, width, channels, plaid_eps",
    [(150, 226, 3, 0.0), (130, 120, 1, 0.0), (167, 125, 3, 0.03), (117, 500, 3, 0.0)],
)
def test_stack_v3_is_its_documented_definition(height, width, channels, plaid_eps):
    pixels = _photo(height, width, channels)
    before = pixels.clone()
    protector = PhotoProtector(FIXED_KEY, ["a", "b"], "high", PhotoParams(plaid_eps=plaid_eps), 3)
    plan = protector.plan(height, width)
    out = protector.apply_uint8(pixels, torch.tensor([1]), plan)[0]
    assert out.shape == (height, width, channels) and out.dtype == np.uint8
    expected = _definition(pixels, protector, 1, plan)
    difference = np.abs(out.astype(np.int64) - expected.astype(np.int64))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float32 vs float64
    assert torch.equal(pixels, before)


def test_stack_v3_is_deterministic_per_key_and_label():
    pixels = _photo(140, 180, seed=4)
    plan = PhotoProtector(FIXED_KEY, ["a", "b"]).plan(140, 180)

    def protect(key: SecretKey, label: int) -> np.ndarray:
        protector = PhotoProtector(key, ["a", "b"], stack_version=3)
        return protector.apply_uint8(pixels, torch.tensor([label]), plan)

    first = protect(FIXED_KEY, 0)
    assert np.array_equal(first, protect(FIXED_KEY, 0))
    assert not np.array_equal(first, protect(FIXED_KEY, 1))
    assert not np.array_equal(first, protect(SecretKey(bytes(32)), 0))


@pytest.mark.parametrize("channels", [3, 1])
def test_stack_v3_differs_from_v2_only_by_the_detail_colour(channels):
    """v3 - v2 = 255 (I - M)(x / 255 - up(s)) up to rounding (where neither output saturates),
    and a scraper at the reference scale sees nearly the same change."""
    pixels = _photo(224, 336, channels, seed=5)
    labels = torch.tensor([1])
    v2 = PhotoProtector(FIXED_KEY, ["a", "b"], "high", stack_version=2)
    v3 = PhotoProtector(FIXED_KEY, ["a", "b"], "high", stack_version=3)
    plan = v2.plan(224, 336)
    old = v2.apply_uint8(pixels, labels, plan).astype(np.float64)
    new = v3.apply_uint8(pixels, labels, plan).astype(np.float64)
    t = colour_transforms(FIXED_KEY, ["a", "b"], plan.colour)[1].double()
    matrix = t[:, :3] if channels == 3 else t[:, :3].sum().div(3).reshape(1, 1)
    chw = pixels.permute(0, 3, 1, 2)
    small = reference_copy_u8(chw, 112).double()
    up = F.interpolate(small, size=(224, 336), mode="bilinear", align_corners=False)
    detail = chw.double() - 255 * up  # (1, C, H, W)
    eye = torch.eye(channels, dtype=torch.float64)
    predicted = torch.einsum("oc,bchw->bhwo", eye - matrix, detail).numpy()
    inside = (old > 0) & (old < 255) & (new > 0) & (new < 255)
    assert inside.mean() > 0.8 and np.abs(new - old).mean() > 0.1
    assert np.mean(np.abs(new - old - predicted)[inside] <= 1.5) > 0.99

    def at_reference(image: np.ndarray) -> torch.Tensor:
        hwc = torch.from_numpy(image.astype(np.uint8))
        return reference_copy_u8(hwc.permute(0, 3, 1, 2).contiguous(), 112) * 255

    seen_old, seen_new = at_reference(old), at_reference(new)
    change = (seen_old - at_reference(pixels.numpy())).abs().mean()
    assert (seen_new - seen_old).abs().mean() < 0.25 * change


def test_stack_v3_on_small_images_is_v2():
    small = _photo(40, 48).expand(3, -1, -1, -1).contiguous()
    labels = torch.tensor([0, 1, 1])
    v2 = PhotoProtector(FIXED_KEY, ["a", "b"], stack_version=2)
    v3 = PhotoProtector(FIXED_KEY, ["a", "b"], stack_version=3)
    plan = v2.plan(40, 48)
    assert np.array_equal(v3.apply_uint8(small, labels, plan), v2.apply_uint8(small, labels, plan))
    as_float = small.permute(0, 3, 1, 2).float() / 255
    assert torch.equal(v3.apply(as_float, labels, plan), v2.apply(as_float, labels, plan))


def test_stack_v3_without_blur_or_colour():
    pixels = _photo(130, 150, seed=6)
    for params in (PhotoParams(blur=0.0), PhotoParams(colour=0.0)):
        protector = PhotoProtector(FIXED_KEY, ["a", "b"], "mid", params, 3)
        plan = protector.plan(130, 150)
        out = protector.apply_uint8(pixels, torch.tensor([0]), plan)[0]
        expected = _definition(pixels, protector, 0, plan)
        assert np.abs(out.astype(np.int64) - expected.astype(np.int64)).max() <= 1
        assert not np.array_equal(out, pixels[0].numpy())


def test_stack_version_3_option_bad_versions_and_resume(tmp_path):
    assert photo_from_options({"stack_version": 3}) == PhotoConfig(stack_version=3)
    for bad in (0, 4):
        with pytest.raises(UsageError, match="stack version"):
            PhotoConfig(stack_version=bad)
    source = make_labelled_folder(tmp_path / "in", per_class=2, size=(130, 120))
    one = ul.RunOptions(workers=1)
    first = ul.protect_directory(
        source, tmp_path / "v3", FIXED_KEY, PhotoConfig(stack_version=3), one
    )
    assert first.manifest.parameters["stack_version"] == 3
    assert first.manifest.parameters["cuda_application_version"] == 3
    done = tree_digest(tmp_path / "v3")
    (tmp_path / "v3" / "cat" / "img0.png").unlink()
    resumed = ul.protect_directory(
        source, tmp_path / "v3", FIXED_KEY, "photo", ul.RunOptions(workers=1, resume=True)
    )
    assert resumed.manifest.parameters["stack_version"] == 3 and not resumed.failed
    assert tree_digest(tmp_path / "v3")["cat/img0.png"] == done["cat/img0.png"]


def test_cli_stack_version_3_and_a_bad_version(tmp_path, runner, key_file):
    from unlearnable.cli import main

    source = make_labelled_folder(tmp_path / "in", per_class=1, size=(130, 120))

    def protect(out: str, version: str):
        argv = ["protect", source, "-o", tmp_path / out, "--key", key_file, "--json"]
        argv += ["--method", "photo", "--stack-version", version, "--workers", "1"]
        return runner.invoke(main, [str(a) for a in argv], catch_exceptions=False)

    bad = protect("bad", "4")
    assert bad.exit_code == 2 and "stack version" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad" / "cat").exists()
    good = protect("good", "3")
    assert good.exit_code == 0, good.output
    manifest = json.loads((tmp_path / "good" / MANIFEST_NAME).read_text())
    assert manifest["parameters"]["stack_version"] == 3
