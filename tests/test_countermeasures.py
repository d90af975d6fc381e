"""Scraper countermeasures: data transforms, training policies, DAT, suites (fast, CPU)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from unlearnable.attacks import ATTACKS, SUITES, make_attack, resolve_attacks
from unlearnable.attacks import augment as A
from unlearnable.attacks import dat as D
from unlearnable.attacks import squeeze as S


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture
def images() -> Tensor:
    return torch.rand(4, 3, 32, 32, generator=gen(123))


class TinyNet(nn.Module):
    """conv-BN-ReLU-pool-linear: small, but with batch norm so train/eval modes matter."""

    def __init__(self, num_classes: int = 4, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


# ------------------------------------------------------------------ generic transform contract

Transform = Callable[[Tensor, torch.Generator], Tensor]

DETERMINISTIC: dict[str, Transform] = {
    "jpeg": lambda x, g: S.jpeg_compress(x, 10),
    "grayscale": lambda x, g: S.grayscale(x),
    "bit-depth": lambda x, g: S.bit_depth_reduce(x, 2),
    "median": lambda x, g: S.median_filter(x, 3),
    "gaussian": lambda x, g: S.gaussian_filter(x, 3, 1.0),
}
RANDOM: dict[str, Transform] = {
    "reupload": S.reupload,
    "sharpen-ff": S.sharpen_frequency_filter,
    "coin": S.coin_warp,
    "random-blur": S.random_blur,
    "cutout": A.cutout_batch,
    "trivialaugment": A.trivial_augment_batch,
    "ueraser": A.ueraser_augment,
    "mixup": lambda x, g: A.mixup_batch(x, torch.arange(4), 4, g)[0],
    "cutmix": lambda x, g: A.cutmix_batch(x, torch.arange(4), 4, g)[0],
}
ALL = {**DETERMINISTIC, **RANDOM}


@pytest.mark.parametrize("name", sorted(ALL))
def test_transform_contract(name: str, images: Tensor) -> None:
    before = images.clone()
    out = ALL[name](images, gen(1))
    assert out.shape == images.shape
    assert out.dtype == images.dtype
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(images, before), "input was modified in place"
    assert out.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("name", sorted(ALL))
def test_transform_deterministic_for_seed(name: str, images: Tensor) -> None:
    assert torch.equal(ALL[name](images, gen(7)), ALL[name](images, gen(7)))


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_transform_depends_on_seed(name: str, images: Tensor) -> None:
    outs = [ALL[name](images, gen(s)) for s in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_library_augmentations_leave_global_rng_alone(images: Tensor) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    A.ueraser_augment(images, gen(0))
    A.trivial_augment_batch(images, gen(0))
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------ what each transform does


def test_grayscale_equal_channels_bt601(images: Tensor) -> None:
    out = S.grayscale(images)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    assert torch.allclose(out[:, 0], luma, atol=1e-6)


def test_jpeg_matches_pillow_round_trip(images: Tensor) -> None:
    out = S.jpeg_compress(images, quality=10)
    u8 = (images[2] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=10)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    got = (out[2] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(got, ref)
    assert not torch.allclose(out, images, atol=1 / 255)


def test_jpeg_chroma_subsampling_option(images: Tensor) -> None:
    full = S.jpeg_compress(images, quality=95, subsampling="4:4:4")
    u8 = (images[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=95, subsampling=0)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal((full[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), ref)
    # full colour resolution keeps the colour detail that the default 4:2:0 halves
    default = S.jpeg_compress(images, quality=95)
    assert (full - images).abs().mean() < (default - images).abs().mean()
    with pytest.raises(ValueError, match="subsampling"):
        S.jpeg_compress(images, subsampling="4:1:1")


def test_jpeg_grayscale_input() -> None:
    x = torch.rand(2, 1, 16, 16, generator=gen(0))
    assert S.jpeg_compress(x).shape == x.shape


def test_reupload_changes_the_image_moderately(images: Tensor) -> None:
    smooth = S.gaussian_filter(images, 5, 2.0)
    out = S.reupload(smooth, gen(0))
    err = (out - smooth).abs().mean()
    assert 0 < err < 0.1


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_bit_depth_levels(images: Tensor, bits: int) -> None:
    out = S.bit_depth_reduce(images, bits)
    assert out.unique().numel() <= 2**bits
    assert (out - images).abs().max() <= 0.5 / (2**bits - 1) + 1e-6


def test_median_removes_salt_noise() -> None:
    x = torch.full((2, 3, 16, 16), 0.5)
    salty = x.clone()
    salty[:, :, 3, 4] = 1.0
    salty[:, :, 10, 12] = 1.0
    salty[:, :, 0, 0] = 1.0  # a corner too
    assert torch.allclose(S.median_filter(salty), x)


def test_gaussian_smooths(images: Tensor) -> None:
    out = S.gaussian_filter(images)
    assert out.std() < images.std()


def test_dct_orthonormal_round_trip(images: Tensor) -> None:
    d = S.dct_matrix(32)
    assert torch.allclose(d @ d.T, torch.eye(32), atol=1e-5)
    assert torch.allclose(S.idct2(S.dct2(images)), images, atol=1e-5)
    # energy is preserved (Parseval) and the DC term is the scaled mean
    assert torch.allclose(S.dct2(images).pow(2).sum(), images.pow(2).sum(), rtol=1e-4)
    assert torch.allclose(S.dct2(images)[..., 0, 0], images.mean(dim=(-2, -1)) * 32, atol=1e-4)


def _high_band_energy(x: Tensor, keep: float) -> Tensor:
    kh, kw = S.lowpass_band(x.shape[-2], x.shape[-1], keep)
    coeffs = S.dct2(x)
    coeffs[..., :kh, :kw] = 0
    return coeffs.pow(2).sum()


def test_dct_lowpass_removes_high_frequencies(images: Tensor) -> None:
    out = S.dct_lowpass(images, keep=0.3)
    assert _high_band_energy(out, 0.3) < 1e-8
    kh, kw = S.lowpass_band(32, 32, 0.3)
    assert (kh, kw) == (10, 10)
    assert torch.allclose(S.dct2(out)[..., :kh, :kw], S.dct2(images)[..., :kh, :kw], atol=1e-5)


def test_sharpen_ff_high_frequencies_much_lower(images: Tensor) -> None:
    out = S.sharpen_frequency_filter(images, gen(0), keep=0.3)
    assert _high_band_energy(out, 0.3) < 0.05 * _high_band_energy(images, 0.3)


def test_random_sharpen_kernels_sum_to_one_and_sharpen(images: Tensor) -> None:
    flat = torch.full((3, 3, 8, 8), 0.4)
    assert torch.allclose(S.random_sharpen(flat, gen(0)), flat, atol=1e-6)
    blurred = S.gaussian_filter(images, 5, 1.5)
    sharp = S.random_sharpen(blurred, gen(0))
    assert _high_band_energy(sharp, 0.3) > _high_band_energy(blurred, 0.3)


def test_coin_identity_at_zero_alpha(images: Tensor) -> None:
    assert torch.allclose(S.coin_warp(images, gen(0), alpha=0.0), images, atol=1e-5)


def test_coin_offsets_bounded() -> None:
    # On a horizontal ramp x / (W - 1), bilinear sampling returns the sampled x position / (W - 1),
    # so the change of each pixel is its horizontal offset (clamped at the border) / (W - 1).
    w, alpha = 32, 2.0
    ramp = (torch.arange(w, dtype=torch.float32) / (w - 1)).expand(2, 3, 16, w).contiguous()
    out = S.coin_warp(ramp, gen(3), alpha=alpha)
    shift = (out - ramp) * (w - 1)
    assert shift.abs().max() <= alpha + 1e-4
    assert shift.abs().max() > 0.5 * alpha  # offsets actually used
    assert torch.equal(out[:, 0], out[:, 1])  # one offset per pixel, shared by channels
    assert not torch.equal(out[0], out[1])  # a fresh field per image


def test_random_blur_peak_is_one(images: Tensor) -> None:
    out = S.random_blur(images, gen(0), p=0.1)
    assert torch.allclose(out.amax(dim=(1, 2, 3)), torch.ones(4))
    assert not torch.allclose(out, images, atol=1e-3)


def test_cutout_hole_size() -> None:
    ones = torch.ones(8, 3, 32, 32)
    out = A.cutout_batch(ones, gen(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros <= 16 * 16).all() and (zeros > 0).all()
    assert torch.equal(out[:, 0], out[:, 2])
    assert (zeros == 16 * 16).any()
    big = (A.cutout_batch(torch.ones(16, 3, 64, 64), gen(0))[:, 0] == 0).sum(dim=(1, 2))
    assert big.max() == 32 * 32  # the hole scales with the image (half the side)


@pytest.mark.parametrize("mix", [A.mixup_batch, A.cutmix_batch])
def test_mix_soft_targets(mix: Callable, images: Tensor) -> None:
    labels = torch.tensor([0, 1, 2, 1])
    for seed in range(5):
        mixed, targets = mix(images, labels, 5, gen(seed))
        assert targets.shape == (4, 5)
        assert torch.allclose(targets.sum(dim=1), torch.ones(4))
        assert (targets >= 0).all()
        assert targets[:, 3:].sum() == 0  # only classes present in the batch


def test_cutmix_label_weights_match_area() -> None:
    x = torch.zeros(2, 1, 20, 20)
    x[1] = 1.0
    labels = torch.tensor([0, 1])
    for seed in range(10):
        mixed, targets = A.cutmix_batch(x, labels, 2, gen(seed))
        for i in range(2):
            own = (mixed[i] == x[i]).float().mean()
            if not torch.equal(mixed[i], x[i]):
                assert torch.allclose(targets[i, labels[i]], own, atol=1e-6)


def test_soft_cross_entropy_matches_hard_ce() -> None:
    logits = torch.randn(5, 3, generator=gen(0))
    labels = torch.tensor([0, 2, 1, 1, 0])
    soft = A.soft_cross_entropy(logits, F.one_hot(labels, 3).float())
    assert torch.allclose(soft, F.cross_entropy(logits, labels))


# ------------------------------------------------------------------ partial protection


@pytest.mark.parametrize("ratio,n", [(0.5, 10), (0.3, 7), (0.0, 5), (1.0, 5), (0.25, 40)])
def test_partial_exact_count(ratio: float, n: int) -> None:
    protected = torch.zeros(n, 3, 4, 4)
    clean = torch.ones(n, 3, 4, 4)
    out = make_attack("partial", ratio=ratio).prepare_train(protected, clean, gen(0))
    assert int((out[:, 0, 0, 0] == 0).sum()) == round(ratio * n)
    assert torch.equal(
        out, make_attack("partial", ratio=ratio).prepare_train(protected, clean, gen(0))
    )
    assert protected.eq(0).all() and clean.eq(1).all()


def test_partial_seeds_differ_and_dtypes() -> None:
    protected = torch.zeros(20, 3, 4, 4, dtype=torch.uint8)
    clean = torch.ones(20, 3, 4, 4)
    a = S.partial_mix(protected, clean, 0.5, gen(0))
    b = S.partial_mix(protected, clean, 0.5, gen(1))
    assert a.dtype == torch.uint8 and set(a.unique().tolist()) == {0, 255}
    assert not torch.equal(a, b)
    with pytest.raises(ValueError):
        S.partial_mix(protected, clean[:5], 0.5, gen(0))


# ------------------------------------------------------------------ attacks


MY_ATTACKS = [
    "bit-depth",
    "coin",
    "cutmix",
    "cutout",
    "dat",
    "gaussian",
    "grayscale",
    "jpeg",
    "median",
    "mixup",
    "partial",
    "random-blur",
    "reupload",
    "sharpen-ff",
    "trivialaugment",
    "ueraser-lite",
    "ueraser-max",
]


@pytest.mark.parametrize("name", MY_ATTACKS)
def test_attack_describe(name: str) -> None:
    desc = make_attack(name).describe()
    assert desc["name"] == name
    assert desc["summary"] and desc["paper"] and isinstance(desc["params"], dict)
    json.dumps(desc)


def test_attack_options_and_validation() -> None:
    assert make_attack("jpeg", quality=50).describe()["params"]["quality"] == 50
    assert make_attack("bit-depth", bits=3).describe()["params"]["bits"] == 3
    assert make_attack("sharpen-ff", keep=0.5).describe()["params"]["keep"] == 0.5
    assert make_attack("dat", steps=2, kernel_size=3).describe()["params"]["steps"] == 2
    assert make_attack("ueraser-lite", repeats=3).policy().repeats == 3
    per_batch = make_attack("sharpen-ff", per_batch=True)
    x = torch.rand(2, 3, 8, 8)
    assert per_batch.prepare_train(x, x, gen(0)) is x
    assert isinstance(per_batch.policy(), A.AugmentThenERM)
    for name, bad in [
        ("jpeg", {"quality": 0}),
        ("bit-depth", {"bits": 9}),
        ("sharpen-ff", {"keep": 0.0}),
        ("partial", {"ratio": 1.5}),
        ("dat", {"kernel_size": 4}),
        ("coin", {"alpha": -1}),
        ("mixup", {"alpha": 0}),
    ]:
        with pytest.raises(ValueError):
            make_attack(name, **bad).prepare_train(
                torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), gen(0)
            )
    with pytest.raises(TypeError):
        make_attack("jpeg", qualty=10)


def test_grayscale_attack_transforms_train_and_test(images: Tensor) -> None:
    attack = make_attack("grayscale")
    assert torch.equal(attack.prepare_test(images), S.grayscale(images))
    assert torch.equal(attack.prepare_train(images, images, gen(0)), S.grayscale(images))
    jpeg = make_attack("jpeg")
    assert jpeg.prepare_test(images) is images  # ISS: JPEG on the training set only


def test_transform_attack_keeps_uint8(images: Tensor) -> None:
    u8 = S.to_uint8(images)
    out = make_attack("sharpen-ff").prepare_train(u8, u8, gen(0))
    assert out.dtype == torch.uint8 and out.shape == u8.shape
    ref = S.to_uint8(S.sharpen_frequency_filter(u8.float() / 255, gen(0)))
    assert torch.equal(out, ref)
    gray = make_attack("grayscale").prepare_test(u8)
    assert gray.dtype == torch.uint8


def test_one_uint8_quantiser() -> None:
    """squeeze and augment quantise with unlearnable.imageops.to_uint8: round(255 * x) after
    clamping to [0, 1] (out-of-range values and exact half steps included)."""
    from unlearnable import imageops

    assert S.to_uint8 is imageops.to_uint8
    assert A.to_uint8 is imageops.to_uint8
    half_steps = (torch.arange(256, dtype=torch.float64) + 0.5) / 255
    x = torch.cat([torch.rand(1000, generator=gen(0)) * 1.4 - 0.2, half_steps.float()])
    x = torch.cat([x, torch.tensor([float("inf"), -float("inf"), 1.0, 0.0])])
    expected = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    assert torch.equal(S.to_uint8(x), expected)


def test_chunked_prepare_train_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "CHUNK", 3)
    x = torch.rand(7, 3, 8, 8, generator=gen(0))
    attack = make_attack("sharpen-ff")
    a = attack.prepare_train(x, x, gen(4))
    assert a.shape == x.shape and torch.equal(a, attack.prepare_train(x, x, gen(4)))


# ------------------------------------------------------------------ policies and DAT


def _policy_names() -> list[str]:
    return [n for n in MY_ATTACKS if type(make_attack(n).policy()).__name__ != "ERMPolicy"]


@pytest.mark.parametrize("name", _policy_names())
def test_policy_loss_finite_with_gradients(name: str, images: Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    model.train()
    labels = torch.tensor([0, 1, 2, 1])
    policy = make_attack(name, steps=2) if name == "dat" else make_attack(name)
    loss = policy.policy().loss(model, images, labels, 4, gen(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert model.training


def test_ueraser_max_is_at_least_lite(images: Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()  # fixed BN statistics: losses comparable across copies
    labels = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        lite = A.UEraserPolicy(1).loss(model, images, labels, 4, gen(0))
        top = A.UEraserPolicy(4).loss(model, images, labels, 4, gen(0))
    assert top >= lite - 1e-6  # the first of the 4 copies is the Lite copy


def test_dat_batch_freezes_model_and_restores_mode(images: Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet().train()
    labels = torch.tensor([0, 1, 2, 1])
    bn_before = model.bn.running_mean.clone()
    adv = D.dat_batch(model, images, labels, 4, gen(0), kernel_size=7, steps=3)
    assert adv.shape == images.shape and not adv.requires_grad
    assert torch.isfinite(adv).all()
    assert torch.allclose(adv.amin(dim=(1, 2, 3)), torch.zeros(4))
    assert torch.allclose(adv.amax(dim=(1, 2, 3)), torch.ones(4))
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert torch.equal(model.bn.running_mean, bn_before)  # eval-mode inner steps
    assert torch.equal(adv, D.dat_batch(model, images, labels, 4, gen(0), steps=3))
    D.dat_batch(model, images, labels, 4, gen(0), steps=1, inner_mode="train")
    assert not torch.equal(model.bn.running_mean, bn_before)  # the paper's behaviour


def test_dat_inner_steps_increase_the_objective(images: Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    labels = torch.tensor([0, 1, 2, 1])
    w0, b0 = D.init_filters(4, 7, gen(0), "cpu")
    w5, b5 = D.learn_filters(model, images, labels, 4, gen(0), steps=5)
    assert w5.shape == (4, 7, 7) and b5.shape == (4,)
    assert not torch.equal(w0[:3], w5[:3])  # filters of the classes in the batch moved
    assert torch.equal(w0[3], w5[3])  # class 3 is absent: no gradient
    with torch.no_grad():
        before = D.dat_objective(model, images, labels, w0, b0)
        after = D.dat_objective(model, images, labels, w5, b5)
    assert after > before


def test_deconvolve_identity_filter(images: Tensor) -> None:
    w = torch.zeros(2, 7, 7)
    w[:, 3, 3] = 1.0
    b = torch.zeros(2)
    out = D.deconvolve_per_class(images, torch.tensor([0, 1, 0, 1]), w, b)
    assert torch.allclose(out, images, atol=1e-6)


# ------------------------------------------------------------------ suites


def test_suites() -> None:
    assert SUITES["quick"] == ["erm", "jpeg", "grayscale", "sharpen-ff"]
    assert "dat" in SUITES["all"] and "at-linf-4" in SUITES["all"]
    assert set(SUITES["all"]) == set(ATTACKS.names())
    assert set(SUITES) == {"quick", "standard", "all"}
    assert resolve_attacks("standard")[:3] == ["erm", "at-linf-4", "at-l2-0.5"]
    assert resolve_attacks(" JPEG , quick,dat") == ["jpeg", "erm", "grayscale", "sharpen-ff", "dat"]


@pytest.mark.parametrize("spec", ["", " , ", "nope", "jpeg,nope,quick", "quick,grey"])
def test_resolve_attacks_errors(spec: str) -> None:
    with pytest.raises(ValueError) as err:
        resolve_attacks(spec)
    if "nope" in spec:
        assert (
            "nope" in str(err.value) and "jpeg" in str(err.value) and "standard" in str(err.value)
        )


# ------------------------------------------------------------------ end to end


def test_every_attack_trains_one_epoch() -> None:
    from unlearnable.attacks.training import TrainConfig, train_classifier

    g = gen(0)
    n, classes = 40, 4
    labels = torch.arange(n) % classes
    clean = torch.rand(n, 3, 16, 16, generator=g)
    protected = S.random_blur(clean, g, p=0.3)  # stands in for a CUDA-protected set
    test_x, test_y = torch.rand(12, 3, 16, 16, generator=g), torch.arange(12) % classes
    config = TrainConfig(epochs=1, batch_size=20, lr=0.05)
    for name in ATTACKS.names():
        options = {"steps": 1} if name == "dat" or name.startswith("at-") else {}
        attack = make_attack(name, **options)
        train_x = attack.prepare_train(protected, clean, gen(1))
        assert train_x.shape == protected.shape, name
        torch.manual_seed(0)
        model = TinyNet(classes)
        history = train_classifier(
            model,
            train_x,
            labels,
            attack.prepare_test(test_x),
            test_y,
            config,
            attack.policy(),
            seed=0,
        )
        row = history.epochs[0]
        assert np.isfinite(row["train_loss"]), name
        assert 0.0 <= row["test_acc"] <= 1.0, name
