"""Key-derived class-wise shortcuts: reproducible per key, documented derivation, budgets kept."""

import math

import pytest
import torch
import torch.nn.functional as F

from unlearnable.keys import SecretKey, key_uniforms
from unlearnable.protect.shortcuts import (
    NoiseParams,
    PlaidParams,
    apply_additive,
    apply_colour,
    class_noise,
    class_plaids,
    colour_transforms,
    noise_grids,
    plaid_spec,
    render_plaids,
)

from .conftest import FIXED_KEY


def test_golden_plaid_spec_v1():
    spec = plaid_spec(FIXED_KEY, ["cat", "dog"])
    assert spec.shape == (2, 3, 7) and spec.dtype == torch.float64
    expected_cat0 = [9.387818413398431, 13.498535941008729, 2.4119387204911, 1.4255640454865686,
                     0.7875572217219112, 0.6741442392985357, 0.8548455430143717]
    expected_dog2 = [13.406237892546681, 12.596666254706395, 2.9593898312742666, 4.598104768637917,
                     0.9868544933491006, 0.9861443395606073, 0.7700433380813814]
    assert spec[0, 0].tolist() == pytest.approx(expected_cat0, abs=1e-12)
    assert spec[1, 2].tolist() == pytest.approx(expected_dog2, abs=1e-12)


def test_golden_rendered_pixel_and_colour_transform_v1():
    pattern = class_plaids(FIXED_KEY, ["cat"], 16, 16)
    assert pattern[0, :, 3, 5].tolist() == pytest.approx(
        [-0.33207544684410095, -0.3080029785633087, -0.2943808138370514], abs=1e-6
    )
    bank = colour_transforms(FIXED_KEY, ["cat"], 0.1)
    assert bank[0, 0].tolist() == pytest.approx(
        [1.0109449625015259, -0.052863091230392456, -0.005881526507437229, -0.046296726912260056],
        abs=1e-6,
    )


def test_plaid_derivation_follows_the_documented_context_string():
    params = PlaidParams(components=2, cycles=(4.0, 9.0), chroma=0.0)
    u = key_uniforms(FIXED_KEY, "shortcut-plaid/v1/label=tulip", 14).reshape(2, 7)
    spec = plaid_spec(FIXED_KEY, ["tulip"], params)[0]
    assert spec[:, 0].tolist() == pytest.approx((4.0 * (9.0 / 4.0) ** u[:, 0]).tolist())
    assert spec[:, 3].tolist() == pytest.approx((2 * math.pi * u[:, 3]).tolist())
    assert spec[:, 4:].flatten().tolist() == pytest.approx([1.0] * 6)  # chroma 0: grey
    c = key_uniforms(FIXED_KEY, "shortcut-colour/v1/label=tulip", 12)
    bank = colour_transforms(FIXED_KEY, ["tulip"], 0.2)[0]
    assert bank[1, 0].item() == pytest.approx(0.2 * (2 * c[3] - 1), abs=1e-6)
    assert bank[2, 3].item() == pytest.approx(0.1 * (2 * c[11] - 1), abs=1e-6)


def test_patterns_depend_on_label_name_not_order_and_on_key():
    a = class_plaids(FIXED_KEY, ["a", "b", "c"], 20, 24)
    b = class_plaids(FIXED_KEY, ["c", "a"], 20, 24)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.allclose(a[0], a[1], atol=0.1)
    other = class_plaids(SecretKey(bytes(32)), ["a"], 20, 24)
    assert not torch.allclose(a[0], other[0], atol=0.1)


def test_rendered_patterns_are_bounded_with_peak_one_and_mostly_luminance():
    patterns = class_plaids(FIXED_KEY, [str(i) for i in range(6)], 32, 48)
    assert patterns.shape == (6, 3, 32, 48) and patterns.dtype == torch.float32
    peaks = patterns.abs().amax(dim=(1, 2, 3))
    assert torch.allclose(peaks, torch.ones(6), atol=1e-6)
    luma = patterns.mean(dim=1)
    assert float(luma.abs().mean()) > 0.5 * float(patterns.abs().mean())


def test_patterns_are_resolution_independent():
    """Rendered at 224 and resized to 112 is close to rendered at 112 (so a scraper's resize
    keeps the pattern)."""
    big = class_plaids(FIXED_KEY, ["x", "y"], 224, 224)
    small = class_plaids(FIXED_KEY, ["x", "y"], 112, 112)
    resized = F.interpolate(big, size=(112, 112), mode="bilinear", antialias=True)
    similarity = F.cosine_similarity(resized.flatten(1), small.flatten(1))
    assert torch.all(similarity > 0.99), similarity
    other = class_plaids(FIXED_KEY, ["y", "x"], 112, 112)
    assert torch.all(F.cosine_similarity(resized.flatten(1), other.flatten(1)) < 0.5)


def test_flip_only_changes_phase():
    """A horizontally flipped plaid is a plaid with the same frequencies (mirror symmetric)."""
    spec = plaid_spec(FIXED_KEY, ["x"], PlaidParams(components=1, chroma=0.0))
    pattern = render_plaids(spec, 64, 64)[0, 0]
    flipped = pattern.flip(-1)
    power = torch.fft.rfft2(pattern).abs()
    power_flipped = torch.fft.rfft2(flipped).abs()
    assert torch.allclose(power, power_flipped, atol=1e-3 * float(power.max()))


def test_apply_additive_keeps_the_budget_and_the_input():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g)
    before = images.clone()
    labels = torch.tensor([0, 1, 1, 0])
    patterns = class_plaids(FIXED_KEY, ["p", "q"], 16, 16)
    eps = 8 / 255
    out = apply_additive(images, labels, patterns, eps)
    assert out.shape == images.shape and torch.equal(images, before)
    assert float((out - images).abs().max()) <= eps + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    inside = (images > eps) & (images < 1 - eps)
    assert torch.allclose((out - images)[inside], (eps * patterns[labels])[inside], atol=1e-6)
    grey = apply_additive(images[:, :1], labels, patterns, eps)
    assert grey.shape == (4, 1, 16, 16)


def test_apply_colour_identity_at_zero_strength_and_class_wise_otherwise():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 8, 8, generator=g) * 0.5 + 0.25
    labels = torch.tensor([0, 1])
    same = apply_colour(images, labels, colour_transforms(FIXED_KEY, ["a", "b"], 0.0))
    assert torch.allclose(same, images, atol=1e-6)
    changed = apply_colour(images, labels, colour_transforms(FIXED_KEY, ["a", "b"], 0.1))
    assert changed.shape == images.shape and not torch.allclose(changed, images, atol=1e-3)
    swapped = apply_colour(images, labels.flip(0), colour_transforms(FIXED_KEY, ["a", "b"], 0.1))
    assert not torch.allclose(changed, swapped, atol=1e-3)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        PlaidParams(components=0)
    with pytest.raises(ValueError):
        PlaidParams(cycles=(5.0, 2.0))
    with pytest.raises(ValueError):
        PlaidParams(chroma=1.5)
    patterns = class_plaids(FIXED_KEY, ["a"], 8, 8)
    with pytest.raises(ValueError):
        apply_additive(torch.rand(1, 3, 9, 9), torch.tensor([0]), patterns, 0.03)
    with pytest.raises(ValueError):
        apply_additive(torch.rand(1, 3, 8, 8), torch.tensor([0, 0]), patterns, 0.03)
    with pytest.raises(ValueError):
        apply_additive(torch.rand(1, 3, 8, 8), torch.tensor([0]), patterns, 2.0)
    with pytest.raises(ValueError):
        colour_transforms(FIXED_KEY, ["a"], -0.1)


def test_golden_noise_grid_v1_and_its_derivation():
    params = NoiseParams(cells=4)
    grid = noise_grids(FIXED_KEY, ["cat"], params)
    assert grid.shape == (1, 3, 4, 4)
    assert grid[0, :, 1, 2].tolist() == pytest.approx(
        [-0.2900034189224243, -0.6123288869857788, -0.6539552211761475], abs=1e-6
    )
    u = 2 * key_uniforms(FIXED_KEY, "shortcut-noise/v1/cells=4/label=cat", 64).reshape(4, 4, 4) - 1
    expected = 0.7 * u[1, 2, 0] + 0.3 * u[1, 2, 1:]
    assert grid[0, :, 1, 2].tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_noise_cells_scale_with_the_image_and_tile_non_square_images():
    params = NoiseParams(cells=4)
    pattern = class_noise(FIXED_KEY, ["cat"], 8, 12, params)
    assert pattern.shape == (1, 3, 8, 12)
    assert float(pattern.abs().max()) == pytest.approx(1.0)
    assert torch.equal(pattern[..., 0:2, 0:2], pattern[..., 0:1, 0:1].expand(-1, -1, 2, 2))
    assert torch.equal(pattern[..., :, 8:12], pattern[..., :, 0:4])  # tiled along the long side
    big = class_noise(FIXED_KEY, ["a", "b"], 224, 224, NoiseParams(cells=56))
    small = class_noise(FIXED_KEY, ["a", "b"], 112, 112, NoiseParams(cells=56))
    resized = F.interpolate(big, size=(112, 112), mode="bilinear", antialias=True)
    assert torch.all(F.cosine_similarity(resized.flatten(1), small.flatten(1)) > 0.95)
    assert float(F.cosine_similarity(resized[:1].flatten(1), small[1:].flatten(1))) < 0.2


def test_noise_depends_on_key_label_and_cells():
    a = class_noise(FIXED_KEY, ["a", "b"], 16, 16, NoiseParams(cells=8))
    assert torch.equal(a[1], class_noise(FIXED_KEY, ["b"], 16, 16, NoiseParams(cells=8))[0])
    assert not torch.allclose(a[0], a[1], atol=0.1)
    other = class_noise(SecretKey(bytes(32)), ["a"], 16, 16, NoiseParams(cells=8))
    assert not torch.allclose(a[0], other[0], atol=0.1)
    smooth = class_noise(FIXED_KEY, ["a"], 16, 16, NoiseParams(cells=8, smooth=True))
    assert not torch.equal(a[0], smooth[0]) and float(smooth.abs().max()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        NoiseParams(cells=0)
