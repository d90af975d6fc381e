import pytest
import torch

from unlearnable.imageops import resize_center_crop
from unlearnable.keys import SecretKey
from unlearnable.protect.cuda import (
    CudaProtector,
    _correlate_same,
    _fft_correlate,
    apply_cuda,
    apply_cuda_at_scale,
    cuda_filters,
    cuda_params,
    upscale_filters,
)

from .conftest import FIXED_KEY

GOLDEN_CAT = [
    [0.23645566403865814, 0.014289348386228085, 0.27360376715660095],
    [0.23425427079200745, 0.12073560059070587, 1.0],
    [0.0942474752664566, 0.05328270420432091, 0.2989107370376587],
]
GOLDEN_DOG = [
    [0.23415668308734894, 0.01818695478141308, 0.11951485276222229],
    [0.1721532642841339, 0.2775574326515198, 0.29757604002952576],
    [1.0, 0.17569996416568756, 0.17885738611221313],
]


def test_golden_filters():
    filters = cuda_filters(FIXED_KEY, ["cat", "dog"], kernel_size=3, blur=0.3)
    assert filters.shape == (2, 3, 3) and filters.dtype == torch.float32
    assert torch.equal(filters[0], torch.tensor(GOLDEN_CAT))
    assert torch.equal(filters[1], torch.tensor(GOLDEN_DOG))


@pytest.mark.parametrize("k, blur", [(3, 0.3), (5, 0.15), (9, 0.06)])
def test_filter_properties(k, blur):
    filters = cuda_filters(FIXED_KEY, [f"c{i}" for i in range(20)], k, blur)
    assert filters.shape == (20, k, k)
    assert (filters >= 0).all()
    flat = filters.reshape(20, -1)
    assert ((flat == 1.0).sum(dim=1) == 1).all()  # exactly one tap equals 1
    others = flat[flat != 1.0]
    assert others.max() < blur


def test_filter_depends_on_label_name_not_order_and_on_key():
    forward = cuda_filters(FIXED_KEY, ["a", "b", "c"])
    backward = cuda_filters(FIXED_KEY, ["c", "b", "a"])
    assert torch.equal(forward[0], backward[2])
    other = cuda_filters(SecretKey(bytes(32)), ["a", "b", "c"])
    assert not torch.equal(forward, other)
    assert not torch.equal(forward[0], forward[1])


def test_apply_cuda_shape_range_max_and_no_inplace_change():
    images = torch.rand(4, 3, 16, 12)
    before = images.clone()
    filters = cuda_filters(FIXED_KEY, ["a", "b"])
    out = apply_cuda(images, torch.tensor([0, 1, 1, 0]), filters)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert torch.equal(images, before)
    assert out.min() >= 0 and torch.allclose(out.amax(dim=(1, 2, 3)), torch.ones(4))


def test_apply_cuda_matches_direct_definition_and_class_filters_differ():
    image = torch.rand(1, 3, 8, 8)
    filters = cuda_filters(FIXED_KEY, ["a", "b"])
    out = apply_cuda(image, torch.tensor([1]), filters)
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))
    manual = torch.zeros_like(image)
    for a in range(3):
        for b in range(3):
            manual += filters[1, a, b] * padded[..., a : a + 8, b : b + 8]
    manual /= manual.max()
    assert torch.allclose(out, manual, atol=1e-6)
    assert not torch.allclose(out, apply_cuda(image, torch.tensor([0]), filters))


def test_all_black_image_stays_black():
    out = apply_cuda(torch.zeros(2, 3, 8, 8), torch.tensor([0, 0]), cuda_filters(FIXED_KEY, ["a"]))
    assert torch.equal(out, torch.zeros(2, 3, 8, 8)) and torch.isfinite(out).all()


@pytest.mark.parametrize("k", [3, 7, 12])
def test_fft_path_equals_direct_convolution(k):
    x = torch.rand(2, 3, 30, 41)
    kernel = torch.rand(k, k)
    direct = _correlate_same(x, kernel)
    top = (k - 1) // 2
    fft = _fft_correlate(x.reshape(6, 1, 30, 41), kernel, top, top).reshape(2, 3, 30, 41)
    assert torch.allclose(direct, fft, rtol=1e-4, atol=1e-4)


def test_odd_kernel_sizes_keep_size_and_grayscale_works():
    for k in (1, 3, 5, 9, 15):
        filters = cuda_filters(FIXED_KEY, ["x"], k, 0.1)
        assert apply_cuda(torch.rand(1, 1, 10, 13), torch.tensor([0]), filters).shape == (
            1,
            1,
            10,
            13,
        )


def test_presets_scale_with_image_size():
    assert cuda_params(32, 32) == cuda_params(32, 40)
    assert (cuda_params(32, 32).kernel_size, cuda_params(32, 32).blur) == (3, 0.3)
    assert (cuda_params(224, 224).kernel_size, cuda_params(224, 224).blur) == (9, 0.06)
    assert cuda_params(64, 64).kernel_size == 5 and cuda_params(128, 128).kernel_size == 7
    low, high = cuda_params(32, 32, "low"), cuda_params(32, 32, "high")
    assert low.blur < 0.3 < high.blur
    big = cuda_params(2000, 3000)
    assert big.kernel_size == 9 and big.upscale == 9
    assert cuda_params(2000, 3000, kernel_size=5).upscale == 1
    assert cuda_params(32, 32, kernel_size=7, blur=0.2) == cuda_params(
        500, 500, kernel_size=7, blur=0.2
    )
    with pytest.raises(ValueError, match="odd"):
        cuda_params(32, 32, kernel_size=4)
    with pytest.raises(ValueError, match="blur"):
        cuda_params(32, 32, blur=0.0)
    with pytest.raises(ValueError, match="strength"):
        cuda_params(32, 32, strength="max")


def test_upscaled_filter_blocks():
    filters = cuda_filters(FIXED_KEY, ["a"], 3, 0.3)
    big = upscale_filters(filters, 2)
    assert big.shape == (1, 6, 6) and torch.equal(big[0, ::2, ::2], filters[0])
    out = apply_cuda(torch.rand(1, 3, 20, 20), torch.tensor([0]), big)
    assert out.shape == (1, 3, 20, 20)


def test_protector_is_deterministic_per_key():
    a = CudaProtector(FIXED_KEY, ["a", "b"])
    b = CudaProtector(FIXED_KEY, ["a", "b"])
    images = torch.rand(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 0])
    plan = a.plan(32, 32)
    assert torch.equal(a.apply(images, labels, plan), b.apply(images, labels, plan))


def test_cuda_at_scale_equals_plain_cuda_for_small_images_and_keeps_input():
    images = torch.rand(3, 3, 40, 56)
    before = images.clone()
    labels = torch.tensor([0, 1, 0])
    filters = cuda_filters(FIXED_KEY, ["a", "b"], 3, 0.3)
    assert torch.equal(apply_cuda_at_scale(images, labels, filters, 40), apply_cuda(images, labels, filters))
    out = apply_cuda_at_scale(images, labels, filters, 20)
    assert out.shape == images.shape and torch.equal(images, before)
    assert out.min() >= 0 and out.max() <= 1


def test_cuda_at_scale_puts_the_small_filter_where_a_scraper_looks():
    """Resized to the reference size, the output is close to the small copy filtered; the
    change differs between classes (a shortcut) and is not the plain full-size filter."""
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 12, 12), size=(96, 96), mode="bilinear")
    labels = torch.tensor([0, 1, 2, 3])
    filters = cuda_filters(FIXED_KEY, ["a", "b", "c", "d"], 3, 0.3)
    out = apply_cuda_at_scale(smooth, labels, filters, 48)
    small = resize_center_crop(smooth, 48)
    target = apply_cuda(small, labels, filters)
    seen = resize_center_crop(out, 48)
    assert (seen - target).abs().mean() < 0.25 * (small - target).abs().mean()
    other = apply_cuda_at_scale(smooth, labels.roll(1), filters, 48)
    assert not torch.allclose(out, other)


def test_weaken_walks_down_the_strength_presets():
    protector = CudaProtector(FIXED_KEY, ["a"], strength="high")
    plan = protector.plan(224, 224)
    blurs = []
    while plan is not None:
        blurs.append(plan.blur)
        assert plan.kernel_size == 9
        plan = protector.weaken(plan)
    assert blurs == [0.1, 0.06, 0.03]
    custom = CudaProtector(FIXED_KEY, ["a"], kernel_size=11, blur=0.05)
    steps = [custom.plan(64, 64)]
    while (step := custom.weaken(steps[-1])) is not None:
        steps.append(step)
    assert [s.blur for s in steps] == [0.05, 0.025, 0.0125]
    assert all(s.kernel_size == 11 for s in steps)
