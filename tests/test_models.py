"""The victim model zoo: every model builds, takes [0, 1] images and gives (B, num_classes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearnable.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VICTIMS,
    Normalize,
    build_victim,
    check_victim_name,
    count_parameters,
    victim_names,
    vit_patch_size,
)

BUILTIN = ["small-cnn", "resnet18", "resnet20", "vgg11-bn", "vit-tiny"]


def test_builtin_victims_are_registered() -> None:
    assert set(BUILTIN) <= set(VICTIMS.names())
    assert "tv:<torchvision model>" in victim_names()


@pytest.mark.parametrize("name", VICTIMS.names())
def test_every_registered_victim_gives_logits(name: str) -> None:
    model = build_victim(name, num_classes=5, image_size=16, seed=0)
    x = torch.rand(2, 3, 16, 16)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    model.eval()
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name", ["small-cnn", "resnet20", "vgg11-bn", "vit-tiny"])
def test_grey_images(name: str) -> None:
    model = build_victim(name, num_classes=3, image_size=16, in_channels=1)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)


def test_torchvision_victim_small() -> None:
    model = build_victim("tv:resnet18", num_classes=7, image_size=32, seed=0)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(model[0], Normalize)
    # ImageNet statistics, from the one definition that surrogates use too
    assert torch.allclose(model[0].mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(model[0].std.flatten(), torch.tensor(IMAGENET_STD))
    from unlearnable.protect import surrogate_loaders as surrogate

    assert surrogate.IMAGENET_MEAN is IMAGENET_MEAN and surrogate.IMAGENET_STD is IMAGENET_STD


def test_unknown_names_list_choices() -> None:
    with pytest.raises(ValueError, match="small-cnn.*tv:") as err:
        build_victim("resnet-9000", 10, 32)
    assert "resnet-9000" in str(err.value)
    with pytest.raises(ValueError, match="resnet50"):
        check_victim_name("tv:not_a_model")


def test_seed_fixes_weights_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_victim("small-cnn", 4, 16, seed=7)
    after = torch.rand(3)
    assert torch.equal(expected, after), "building with a seed disturbed the global RNG"
    b = build_victim("small-cnn", 4, 16, seed=7)
    c = build_victim("small-cnn", 4, 16, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_sizes_and_structure() -> None:
    assert 300_000 <= count_parameters(build_victim("small-cnn", 10, 32)) <= 1_000_000
    assert 250_000 <= count_parameters(build_victim("resnet20", 10, 32)) <= 300_000
    r18 = build_victim("resnet18", 10, 32)
    assert 11_000_000 <= count_parameters(r18) <= 11_300_000
    assert not any(isinstance(m, nn.MaxPool2d) for m in r18.modules())
    stem = r18.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)


def test_normalisation_is_fixed() -> None:
    norm = Normalize([0.5], [0.25], 3)
    assert list(norm.parameters()) == []
    x = torch.full((1, 3, 2, 2), 0.75)
    assert torch.allclose(norm(x), torch.ones_like(x))


def test_vit_patch_size() -> None:
    assert vit_patch_size(32) == 4
    assert vit_patch_size(16) == 2
    assert vit_patch_size(224) == 16
    assert vit_patch_size(28) == 4
