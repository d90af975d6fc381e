"""Training as a scraper trains: config, schedules, augmentation, PGD, adversarial training,
repeatability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unlearnable.attacks import training as training_module
from unlearnable.attacks.adversarial import (
    AdversarialTraining,
    AdversarialTrainingPolicy,
    default_step_size,
    pgd_attack,
)
from unlearnable.attacks.base import ATTACKS, make_attack
from unlearnable.attacks.training import (
    BUDGETS,
    TrainConfig,
    TrainHistory,
    derive_seed,
    evaluate,
    get_budget,
    lr_at_epoch,
    random_crop_flip,
    train_classifier,
)
from unlearnable.models import build_victim

SIZE = 16
CLASSES = 4


def colour_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, 16, 16) images whose mean colour depends on the class, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    colours = torch.tensor([[0.8, 0.3, 0.3], [0.3, 0.8, 0.3], [0.3, 0.3, 0.8], [0.7, 0.7, 0.3]])
    x = colours[labels][:, :, None, None] + 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small-cnn trained for 2 epochs on colour data, with float test images in [0, 1]."""
    x, y = colour_data(128, 0)
    xt, yt = colour_data(32, 1)
    model = build_victim("small-cnn", CLASSES, SIZE, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    history = train_classifier(model, x, y, xt, yt, cfg, seed=0)
    assert history.last_test_acc > 0.9
    return model, xt.float() / 255, yt


# --------------------------------------------------------------------------- config


def test_config_validation_and_roundtrip() -> None:
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError):
        TrainConfig(schedule="linear")  # type: ignore[arg-type]
    cfg = TrainConfig(epochs=3, device="cpu")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"epochs": 3, "optimizer": "adam"})


def test_step_schedule_matches_cuda_code() -> None:
    cfg = TrainConfig(epochs=100, schedule="step", lr=0.1)
    assert lr_at_epoch(cfg, 0) == pytest.approx(0.1)
    assert lr_at_epoch(cfg, 39) == pytest.approx(0.1)
    assert lr_at_epoch(cfg, 40) == pytest.approx(0.01)
    assert lr_at_epoch(cfg, 79) == pytest.approx(0.01)
    assert lr_at_epoch(cfg, 80) == pytest.approx(0.001)
    assert lr_at_epoch(cfg, 99) == pytest.approx(0.001)


def test_cosine_schedule_decreases() -> None:
    cfg = TrainConfig(epochs=10, schedule="cosine", lr=0.1)
    lrs = [lr_at_epoch(cfg, e) for e in range(10)]
    assert lrs[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] > 0


def test_budgets() -> None:
    assert set(BUDGETS) == {"smoke", "quick", "standard", "paper"}
    paper = get_budget("paper")
    assert paper.model == "resnet18"
    c = paper.config
    assert (c.epochs, c.batch_size, c.lr, c.schedule, c.grad_clip) == (100, 512, 0.1, "step", 5.0)
    assert (c.momentum, c.weight_decay, c.augment) == (0.9, 5e-4, True)
    assert get_budget("smoke").model == "small-cnn"
    changed = get_budget("quick")
    changed.config.epochs = 1
    assert BUDGETS["quick"].config.epochs != 1, "get_budget must return a copy"
    assert get_budget("quick").with_config(device="cuda").config.device == "cuda"
    with pytest.raises(ValueError, match="smoke"):
        get_budget("huge")


def test_derive_seed_streams_differ() -> None:
    assert derive_seed(0, "shuffle") == derive_seed(0, "shuffle")
    assert derive_seed(0, "shuffle") != derive_seed(0, "augment")
    assert derive_seed(0, "shuffle") != derive_seed(1, "shuffle")
    assert 0 <= derive_seed(2**40, "x") < 2**63


# --------------------------------------------------------------------------- augmentation


def test_random_crop_flip_is_a_padded_crop() -> None:
    images = torch.rand(6, 3, 8, 8)
    before = images.clone()
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert torch.equal(images, before)
    assert out.shape == images.shape
    again = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    pad = 1  # max(1, 8 // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    for i in range(images.shape[0]):
        candidates = [
            crop.flip(2) if flip else crop
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for crop in [padded[i, :, dy : dy + 8, dx : dx + 8]]
            for flip in (False, True)
        ]
        assert any(torch.equal(out[i], c) for c in candidates)


# --------------------------------------------------------------------------- PGD


@pytest.mark.parametrize(("norm", "eps"), [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_budget_range_and_loss(trained, norm: str, eps: float) -> None:
    model, x, y = trained
    model.train()
    before = x.clone()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    adv = pgd_attack(model, x, y, norm, eps, steps=5, generator=torch.Generator().manual_seed(0))
    assert model.training, "the model's mode must be restored"
    assert torch.equal(x, before), "the input must not change"
    assert not adv.requires_grad
    assert adv.shape == x.shape
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps + 1e-5).all()
    after = [p.grad for p in model.parameters()]
    assert all(
        (a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, after, strict=True)
    ), "the attack must not touch parameter gradients"
    model.eval()
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y)
        adv_loss = F.cross_entropy(model(adv), y)
    assert adv_loss > 1.15 * clean_loss, (clean_loss, adv_loss)
    again = pgd_attack(model, x, y, norm, eps, steps=5, generator=torch.Generator().manual_seed(0))
    assert not model.training, "an eval-mode model stays in eval mode"
    assert torch.equal(adv, again)


def test_pgd_without_random_start_and_trivial_budgets(trained) -> None:
    model, x, y = trained
    adv = pgd_attack(model, x, y, "l2", 0.25, steps=3, random_start=False)
    assert ((adv - x).flatten(1).norm(dim=1) <= 0.25 + 1e-5).all()
    assert torch.equal(pgd_attack(model, x, y, "linf", 0.0, steps=3), x)
    assert torch.equal(pgd_attack(model, x, y, "linf", 0.1, steps=0), x)
    with pytest.raises(ValueError):
        pgd_attack(model, x, y, "l1", 0.1, steps=1)  # type: ignore[arg-type]


def test_default_step_size() -> None:
    assert default_step_size(0.1, 10) == pytest.approx(0.025)


def test_pgd_names_still_importable_from_training() -> None:
    """PGD moved to attacks/adversarial.py; older imports from attacks.training keep working."""
    assert training_module.pgd_attack is pgd_attack
    assert training_module.AdversarialTraining is AdversarialTraining
    assert training_module.AdversarialTrainingPolicy is AdversarialTrainingPolicy
    assert training_module.default_step_size is default_step_size


def test_adversarial_training_attacks_registered() -> None:
    for name in ("at-linf-4", "at-linf-8", "at-l2-0.25", "at-l2-0.5"):
        assert name in ATTACKS.names()
    at = make_attack("at-linf-8")
    assert isinstance(at, AdversarialTraining)
    assert at.name == "at-linf-8" and at.eps == pytest.approx(8 / 255) and at.steps == 5
    assert at.step_size == pytest.approx(2.5 * (8 / 255) / 5)
    custom = make_attack("at-l2-0.5", steps=10, step_size=0.075)
    d = custom.describe()
    assert (d["norm"], d["eps"], d["steps"], d["step_size"]) == ("l2", 0.5, 10, 0.075)
    assert isinstance(custom.policy(), AdversarialTrainingPolicy)


def test_adversarial_training_policy_trains() -> None:
    x, y = colour_data(32, 3)
    model = build_victim("small-cnn", CLASSES, SIZE, seed=0)
    policy = make_attack("at-linf-4", steps=2).policy()
    loss = policy.loss(model, x.float() / 255, y, CLASSES, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert model.training
    cfg = TrainConfig(epochs=1, batch_size=16)
    history = train_classifier(model, x, y, x, y, cfg, policy, seed=0)
    assert history.epochs[0]["train_acc"] is not None


# --------------------------------------------------------------------------- training


def tiny_dropout_net() -> torch.nn.Module:
    """Conv + batch norm + dropout: every kind of randomness a victim model has."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(128, CLASSES),
    )


def _without_seconds(history: TrainHistory) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history.epochs]


def test_training_is_repeatable_and_seeded() -> None:
    x, y = colour_data(64, 0)
    xt, yt = colour_data(16, 1)
    x_before = x.clone()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)

    def run(seed: int, images: torch.Tensor) -> tuple[TrainHistory, dict]:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = tiny_dropout_net()
        calls: list[tuple[int, int]] = []
        h = train_classifier(
            model, images, y, xt, yt, cfg, seed=seed, progress=lambda e, n, s: calls.append((e, n))
        )
        assert calls == [(1, 2), (2, 2)]
        return h, model.state_dict()

    torch.manual_seed(99)
    expected_global = torch.rand(4)
    torch.manual_seed(99)
    h1, w1 = run(0, x)
    assert torch.equal(torch.rand(4), expected_global), "training disturbed the global RNG"
    h2, w2 = run(0, x)
    h3, _ = run(1, x)
    h4, _ = run(0, x.float() / 255)  # float input is the same data as uint8 input
    assert torch.equal(x, x_before)
    assert _without_seconds(h1) == _without_seconds(h2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert _without_seconds(h1) != _without_seconds(h3)
    assert _without_seconds(h1) == _without_seconds(h4)
    row = h1.epochs[0]
    assert set(row) == {"epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds"}
    assert 0 <= row["test_acc"] <= 1 and math.isfinite(row["train_loss"])


def test_history_properties() -> None:
    h = TrainHistory(
        [
            {"epoch": 1, "test_acc": 0.4},
            {"epoch": 2, "test_acc": 0.7},
            {"epoch": 3, "test_acc": 0.7},
            {"epoch": 4, "test_acc": 0.5},
        ]
    )
    assert (h.peak_test_acc, h.peak_epoch, h.last_test_acc) == (0.7, 2, 0.5)
    assert h.to_dict()["peak_epoch"] == 2


def test_evaluate(trained) -> None:
    model, x, y = trained
    model.train()
    acc = evaluate(model, (x * 255).round().to(torch.uint8), y, batch_size=7)
    assert model.training
    assert 0.9 <= acc <= 1.0
    assert evaluate(model, x[:0], y[:0]) == 0.0


def test_bad_labels_rejected() -> None:
    x, y = colour_data(8, 0)
    model = build_victim("small-cnn", CLASSES, SIZE)
    with pytest.raises(TypeError, match="int64"):
        train_classifier(model, x, y.int(), x, y, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="labels"):
        train_classifier(model, x, y[:4], x, y, TrainConfig(epochs=1))


def test_evaluate_and_predict_give_back_every_submodules_mode() -> None:
    from unlearnable.training.classification import evaluate, predict
    from unlearnable.training.modes import kept_modes

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(2),
    )
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8)
    net(images.float())  # materialise the lazy layer
    net.train()
    net[1].eval()  # a caller's mixed modes: batch norm frozen inside a training network
    modes = [m.training for m in net.modules()]
    predict(net, images)
    evaluate(net, images, torch.zeros(6, dtype=torch.long))
    assert [m.training for m in net.modules()] == modes
    with pytest.raises(RuntimeError), kept_modes(net):
        net.eval()
        raise RuntimeError("the block failed")
    assert [m.training for m in net.modules()] == modes
