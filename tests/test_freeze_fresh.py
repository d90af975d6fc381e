"""FreezeAsGuard options beyond the paper: channel groups tied to their BatchNorm
(``tie_norm``) and mask learning against a fresh simulated user (``reset_interval``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearnable.defenses.freeze import FreezeConfig, learn_freeze_mask
from unlearnable.defenses.freeze_steps import tied_families
from unlearnable.errors import UsageError
from unlearnable.training import Callback

from .test_freeze import ILLEGAL, LEGAL, Tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def config(**changes) -> FreezeConfig:
    base = {
        "ratio": 0.4, "level": "channel", "steps": 60, "user_interval": 4, "batch_size": 8,
        "relearn_epochs": 0, "mask_lr": 0.1,
    }  # fmt: skip
    return FreezeConfig(**{**base, **changes})


def test_tied_families_join_each_conv_with_the_batchnorm_after_it() -> None:
    tiny = Tiny()
    names = [n for n, _ in tiny.named_parameters() if not n.startswith("head")]
    assert tied_families(tiny, names) == [
        ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"],
        ["conv2.weight", "conv2.bias"],
    ]
    # through a parameter-free module; a width mismatch or an excluded conv leaves BN alone
    stack = nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(6),
        nn.Conv2d(6, 4, 3), nn.BatchNorm2d(5),
        nn.Linear(4, 7), nn.BatchNorm1d(7),
    )  # fmt: skip
    every = [n for n, _ in stack.named_parameters()]
    assert tied_families(stack, every) == [
        ["0.weight", "2.weight", "2.bias"],
        ["3.weight", "3.bias"],
        ["4.weight", "4.bias"],
        ["5.weight", "5.bias", "6.weight", "6.bias"],
    ]
    without_conv = [n for n in every if n != "0.weight"]
    assert ["2.weight", "2.bias"] in tied_families(stack, without_conv)
    # a transposed convolution's dim 0 is its input channels: never tied
    up = nn.Sequential(nn.ConvTranspose2d(6, 6, 3), nn.BatchNorm2d(6))
    up_names = [n for n, _ in up.named_parameters()]
    assert tied_families(up, up_names) == [["0.weight", "0.bias"], ["1.weight", "1.bias"]]


def test_tied_mask_freezes_the_same_channels_of_a_conv_and_its_norm() -> None:
    model = Tiny(width=12)
    for ratio in (0.25, 0.6):
        result = learn_freeze_mask(model, ILLEGAL, LEGAL, config=config(ratio=ratio, tie_norm=True))
        mask = result.mask
        assert abs(result.rows[-1]["mask_mean"] - ratio) < 0.05
        family = ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"]
        frozen = {mask.frozen.get(n, ()) for n in family}
        assert len(frozen) == 1  # the same channels (or none) in all four tensors
        assert mask.scores["conv1.weight"] == mask.scores["bn1.bias"]
        assert mask.frozen.get("conv2.weight", ()) == mask.frozen.get("conv2.bias", ())

        sizes = {"conv1.weight": 12, "conv2.weight": 8}
        joined = sum(
            size if mask.frozen.get(n, ()) is None else len(mask.frozen.get(n, ()))
            for n, size in sizes.items()
        )
        assert joined == round(ratio * (12 + 8))  # top-k over the 20 joined groups


class ReleaseSpy(Callback):
    """After every user step: is the working copy (parameters and buffers) the release?"""

    def __init__(self, release: dict[str, torch.Tensor]) -> None:
        self.release = release
        self.at_release: list[bool] = []

    def on_step_end(self, state, step) -> None:
        if step.updated:
            now = state.model.state_dict()
            self.at_release.append(all(torch.equal(now[k], v) for k, v in self.release.items()))


def test_fresh_user_starts_at_the_release_and_is_reset_there() -> None:
    model = Tiny(width=12)
    release = {k: v.clone() for k, v in model.state_dict().items()}
    spy = ReleaseSpy(release)
    result = learn_freeze_mask(
        model, ILLEGAL, LEGAL, config=config(reset_interval=15, relearn_epochs=2), callbacks=[spy]
    )
    assert result.relearn_history is None  # a fresh user needs no θ_ft
    assert result.mask.metadata["resets"] == 3  # after steps 15, 30, 45 (not after the last)
    assert len(spy.at_release) == 60
    reset_steps = {15, 30, 45}
    for step, back in enumerate(spy.at_release, start=1):
        assert back == (step in reset_steps), step  # head and BN buffers included
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in release.items())  # untouched


def test_fresh_user_mask_tracks_the_ratio_and_repeats_per_seed() -> None:
    model = Tiny(width=12)
    for ratio in (0.2, 0.6):
        cfg = config(ratio=ratio, reset_interval=20, tie_norm=ratio > 0.5, steps=90)
        first = learn_freeze_mask(model, ILLEGAL, LEGAL, config=cfg)
        means = [r["mask_mean"] for r in first.rows]
        assert abs(means[-1] - ratio) < 0.05, means
        again = learn_freeze_mask(model, ILLEGAL, LEGAL, config=cfg)
        assert dict(again.mask.frozen) == dict(first.mask.frozen)
        assert again.mask.scores == first.mask.scores


def test_fresh_and_tied_options_are_checked() -> None:
    with pytest.raises(UsageError, match="channel"):
        FreezeConfig(level="tensor", tie_norm=True)
    with pytest.raises(UsageError, match="reset_interval"):
        FreezeConfig(reset_interval=-1)
