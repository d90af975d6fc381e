"""The ``photo`` method: stacked CUDA-at-scale and colour shortcuts (golden vectors, ladder)."""

from __future__ import annotations

import pickle

import pytest
import torch

import unlearnable as ul
from unlearnable.errors import UsageError
from unlearnable.protect.cuda import apply_cuda_at_scale, cuda_filters
from unlearnable.protect.methods import METHODS, resolve_method
from unlearnable.protect.photo import PhotoParams, PhotoProtector, apply_colour_any
from unlearnable.protect.photo_method import PhotoConfig, photo_from_options
from unlearnable.protect.shortcuts import apply_colour, colour_transforms

from .conftest import FIXED_KEY, make_labelled_folder, tree_digest


def _ramp() -> torch.Tensor:
    return (torch.arange(3 * 16 * 16) % 97).float().div(96).reshape(1, 3, 16, 16)


def test_golden_output_stack_v1():
    protector = PhotoProtector(FIXED_KEY, ["cat", "dog"], "mid", PhotoParams(reference=8, colour=0.2), 1)
    out = protector.apply(_ramp(), torch.tensor([1]), protector.plan(16, 16))
    assert out[0, :, 5, 7].tolist() == pytest.approx([1.0, 0.7745614051818848, 0.3853324055671692], abs=1e-5)
    assert out[0, :, 12, 2].tolist() == pytest.approx(
        [0.2767494320869446, 0.8362603187561035, 0.41293710470199585], abs=1e-5
    )
    grey = protector.apply(_ramp()[:, :1], torch.tensor([1]), protector.plan(16, 16))
    assert grey[0, 0, 5, 7].item() == pytest.approx(0.9183139801025391, abs=1e-5)


def test_stack_is_the_documented_composition():
    images, labels = torch.rand(4, 3, 40, 30), torch.tensor([0, 1, 1, 0])
    params = PhotoParams(reference=16, kernel_size=3, blur=0.3, colour=0.2)
    protector = PhotoProtector(FIXED_KEY, ["a", "b"], "high", params, stack_version=1)
    plan = protector.plan(40, 30)
    assert (plan.blur, plan.colour) == (0.45, 0.3)
    expected = apply_cuda_at_scale(images, labels, cuda_filters(FIXED_KEY, ["a", "b"], 3, 0.45), 16)
    expected = apply_colour(expected, labels, colour_transforms(FIXED_KEY, ["a", "b"], 0.3))
    assert torch.equal(protector.apply(images, labels, plan), expected)


def test_deterministic_per_key_label_name_and_input_kept():
    images = torch.rand(3, 3, 48, 48)
    before = images.clone()
    a = PhotoProtector(FIXED_KEY, ["x", "y"])
    b = pickle.loads(pickle.dumps(PhotoProtector(FIXED_KEY, ["y", "x"])))
    out_a = a.apply(images, torch.tensor([0, 1, 0]), a.plan(48, 48))
    out_b = b.apply(images, torch.tensor([1, 0, 1]), b.plan(48, 48))
    assert torch.equal(out_a, out_b) and torch.equal(images, before)
    assert out_a.min() >= 0 and out_a.max() <= 1
    other = PhotoProtector(ul.SecretKey(bytes(32)), ["x", "y"])
    assert not torch.equal(out_a, other.apply(images, torch.tensor([0, 1, 0]), other.plan(48, 48)))


def test_weaken_walks_high_mid_low_then_stops():
    protector = PhotoProtector(FIXED_KEY, ["a"], "high")
    plan, rungs = protector.plan(64, 64), []
    while plan is not None:
        rungs.append((plan.strength, plan.blur, plan.colour))
        plan = protector.weaken(plan)
    assert rungs == [("high", 0.45, 0.45), ("mid", 0.3, 0.3), ("low", 0.15, 0.15)]
    torch.manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4) * 0.6 + 0.2, size=(32, 32), mode="bilinear")
    colour_only = PhotoProtector(FIXED_KEY, ["a"], "high", PhotoParams(blur=0.0))
    changes = [
        (colour_only.apply(image, torch.tensor([0]), colour_only.params.scaled(s)) - image).abs().mean()
        for s in ("high", "mid", "low")
    ]
    assert changes[0] > changes[1] > changes[2]


def test_grey_images_get_the_grey_equivalent_of_the_colour_transform():
    transforms = colour_transforms(FIXED_KEY, ["a"], 0.2)
    grey = torch.rand(2, 1, 8, 8) * 0.5 + 0.25
    as_rgb = apply_colour(grey.expand(-1, 3, -1, -1), torch.tensor([0, 0]), transforms)
    assert torch.allclose(apply_colour_any(grey, torch.tensor([0, 0]), transforms), as_rgb.mean(1, keepdim=True), atol=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="reference"):
        PhotoParams(reference=4)
    with pytest.raises(ValueError, match="at least one"):
        PhotoParams(blur=0.0, colour=0.0)
    with pytest.raises(UsageError, match="strength"):
        PhotoConfig(strength="max")
    with pytest.raises(UsageError, match="labels"):
        PhotoConfig(labels="clusters")
    with pytest.raises(UsageError, match="odd"):
        photo_from_options({"kernel_size": 4})
    with pytest.raises(UsageError, match="blur"):
        PhotoConfig(blur=0.0)
    assert photo_from_options({"kernel_size": 5, "blur": 0.2}) == PhotoConfig(kernel_size=5, blur=0.2)


def test_photo_is_a_registered_method_that_protects_a_folder(tmp_path):
    entry, config = resolve_method("photo")
    assert entry is METHODS.get("photo") and config == PhotoConfig()
    source = make_labelled_folder(tmp_path / "in")
    one_worker = ul.RunOptions(workers=1)
    first = ul.protect_directory(source, tmp_path / "a", FIXED_KEY, "photo", one_worker)
    second = ul.protect_directory(source, tmp_path / "b", FIXED_KEY, PhotoConfig(), one_worker)
    assert not first.failed and len(first.succeeded) == 6 and not second.failed
    assert first.manifest.method == "photo"
    assert first.manifest.parameters["stack_version"] == 3
    assert first.manifest.parameters["cuda_application_version"] == 3
    digests_a, digests_b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    digests_a.pop(first.manifest_path.name), digests_b.pop(second.manifest_path.name)
    assert digests_a == digests_b and len(digests_a) == 6


def test_the_audit_rebuilds_the_marks_of_a_photo_manifest(tmp_path):
    from unlearnable.audit import audit_plan

    source = make_labelled_folder(tmp_path / "in", size=(48, 40))
    run = ul.protect_directory(source, tmp_path / "out", FIXED_KEY, "photo", ul.RunOptions(workers=1))
    plan = audit_plan(run.manifest, 128)
    assert plan.method == "photo" and plan.classes == ("cat", "dog")
    probes = torch.rand(2, 3, 128, 128)
    marks = plan.transforms([FIXED_KEY, ul.SecretKey(bytes(32))])(probes)
    assert marks.shape == (4, 2, 3, 128, 128)
    protector = PhotoProtector(FIXED_KEY, ["cat", "dog"])
    direct = protector.apply(probes, torch.tensor([1, 1]), protector.plan(128, 128))
    assert torch.allclose(marks[1], direct, atol=1 / 255 + 1e-6)
    assert not torch.allclose(marks[0], marks[2])
    small = plan.transforms([FIXED_KEY])(torch.rand(1, 3, 32, 32))
    assert small.shape == (2, 1, 3, 32, 32)
