"""The shift-tolerant visual cost: zero for a pure shift, grows with blur and perturbation."""

import math

import pytest
import torch
import torch.nn.functional as F

from unlearnable.visual_cost import align, best_shift, ssim, visual_cost


def _photo_like(batch=2, size=48, seed=0):
    """Smooth random images with some edges: low-pass noise plus a bright square."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 3, size // 4, size // 4, generator=g)
    images = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    images[:, :, size // 3 : size // 2, size // 4 : size // 2] += 0.4
    return images.clamp(0, 1)


def _shift(images, dy, dx):
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1))


def _blur(images, sigma):
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(3, 1, -1, -1)
    padded = F.pad(images, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=3)


def _pattern(size, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g) * 2 - 1


def test_identical_images_cost_zero():
    images = _photo_like()
    assert torch.allclose(visual_cost(images, images), torch.zeros(2), atol=1e-6)


@pytest.mark.parametrize("dy,dx", [(0, 3), (-2, 1), (4, -4)])
def test_pure_shift_costs_nearly_nothing_while_psnr_punishes_it(dy, dx):
    images = _photo_like()
    shifted = _shift(images, dy, dx)
    assert best_shift(images, shifted).tolist() == [[-dy, -dx]] * 2
    cost = visual_cost(images, shifted)
    assert torch.all(cost < 1e-4), cost
    # a plain pixel-wise comparison sees a large difference
    assert float((1 - ssim(images, shifted)).min()) > 0.05


def test_cost_grows_with_blur_strength():
    images = _photo_like(size=64)
    costs = [float(visual_cost(images, _blur(images, s)).mean()) for s in (0.5, 1.0, 2.0)]
    assert 0 < costs[0] < costs[1] < costs[2], costs


def test_cost_grows_with_perturbation_size_and_survives_a_shift():
    images = _photo_like(size=48)
    pattern = _pattern(48)
    weak = (images + 4 / 255 * pattern).clamp(0, 1)
    strong = (images + 16 / 255 * pattern).clamp(0, 1)
    c_weak, c_strong = visual_cost(images, weak), visual_cost(images, strong)
    assert torch.all(c_weak > 1e-3) and torch.all(c_strong > 2 * c_weak)
    # shifting the perturbed image does not hide the perturbation
    moved = visual_cost(images, _shift(strong, 2, -1))
    assert torch.allclose(moved, c_strong, rtol=0.2)


def test_batch_shape_contract_and_per_image_independence():
    images = _photo_like(batch=3, size=40)
    protected = torch.stack([images[0], _blur(images[1:2], 1.0)[0], _shift(images[2:3], 1, 1)[0]])
    cost = visual_cost(images, protected)
    assert cost.shape == (3,) and cost.dtype == torch.float32
    singles = torch.cat([visual_cost(images[i : i + 1], protected[i : i + 1]) for i in range(3)])
    assert torch.allclose(cost, singles, atol=1e-6)
    assert cost[1] > cost[0] and cost[1] > cost[2]


def test_uint8_input_equals_float_input():
    images = _photo_like(size=32)
    blurred = _blur(images, 1.0)
    as_u8 = lambda t: t.mul(255).round().to(torch.uint8)  # noqa: E731
    expected = visual_cost(as_u8(images).float() / 255, as_u8(blurred).float() / 255)
    assert torch.allclose(visual_cost(as_u8(images), as_u8(blurred)), expected)


def test_align_returns_interior_and_small_images_work():
    images = _photo_like(batch=1, size=32)
    a, b = align(images, _shift(images, 1, 0), max_shift=3)
    assert a.shape == b.shape == (1, 3, 26, 26)
    tiny = torch.rand(2, 1, 9, 9)
    assert visual_cost(tiny, tiny).shape == (2,)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        visual_cost(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    with pytest.raises(ValueError):
        visual_cost(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 18))
    with pytest.raises(ValueError):
        best_shift(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), max_shift=-1)


def test_viewing_factor_pools_large_images_only():
    from unlearnable.visual_cost import viewing_factor

    assert viewing_factor(32, 32) == 1 and viewing_factor(383, 5000) == 1
    assert viewing_factor(400, 600) == 2 and viewing_factor(2000, 3000) == 8


@pytest.mark.parametrize("dy,dx", [(3, -1), (-5, 6), (0, 0)])
def test_downscaled_path_pure_shift_costs_nearly_nothing(dy, dx):
    # 400 px: compared at half size; odd full-resolution shifts need the refinement step
    images = _photo_like(batch=1, size=400, seed=5)
    shifted = _shift(images, dy, dx)
    assert float(visual_cost(images, shifted)) < 1e-4
    # the same shift without pooling-aware alignment would cost clearly more
    half = F.avg_pool2d(images, 2), F.avg_pool2d(shifted, 2)
    if (dy, dx) != (0, 0):
        assert float(1 - ssim(*half).min()) > 1e-3


def test_downscaled_path_cost_grows_with_blur():
    images = _photo_like(batch=1, size=400, seed=6)
    costs = [float(visual_cost(images, _blur(images, s))) for s in (1.0, 2.0, 4.0)]
    assert 0 < costs[0] < costs[1] < costs[2], costs
    # a blur plus a shift costs what the blur alone costs
    moved = float(visual_cost(images, _shift(_blur(images, 2.0), 3, 2)))
    assert abs(moved - costs[1]) < 0.2 * costs[1]


def test_quality_matches_the_separate_metrics():
    from unlearnable.metrics import psnr, quality
    from unlearnable.metrics import ssim as luma_ssim

    images = _photo_like(batch=2, size=48)
    blurred = _blur(images, 1.0)
    scores = quality(images, blurred)
    assert torch.allclose(scores.visual_cost, visual_cost(images, blurred))
    assert torch.allclose(scores.psnr, psnr(images, blurred))
    assert torch.allclose(scores.ssim, luma_ssim(images, blurred))
    assert torch.isinf(quality(images, images).psnr).all()
