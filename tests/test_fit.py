"""The one training loop (unlearnable.training.fit): early stop, parameter filters, gradient
ascent, CSV columns, non-classification tasks on dict batches, accumulation, determinism."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnable.errors import UsageError
from unlearnable.training import (
    Callback,
    Columns,
    CSVLogger,
    EpochProgress,
    FitConfig,
    Mean,
    MultiStep,
    ParamFilter,
    StepResult,
    StopOnNonFinite,
    StopWhen,
    fit,
    select_parameters,
    stop_when,
    stream_generator,
)
from unlearnable.training.batches import batch_len, to_device
from unlearnable.training.classification import (
    ClassifierBatches,
    evaluate,
    predict,
    prediction_histogram,
)

CLASSES = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def colour_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """float (n, 3, 8, 8) images in [0, 1] whose mean colour depends on the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    colours = torch.tensor([[0.8, 0.3, 0.3], [0.3, 0.8, 0.3], [0.3, 0.3, 0.8], [0.7, 0.7, 0.3]])
    x = colours[labels][:, :, None, None] + 0.1 * torch.randn(n, 3, 8, 8, generator=g)
    return x.clamp(0, 1), labels


def tiny_classifier(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, CLASSES))


def regression_data(n: int = 64, seed: int = 0) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.05 * torch.randn(n, 1, generator=g)
    return [{"x": x[i : i + 16], "y": y[i : i + 16]} for i in range(0, n, 16)]


def mlp(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def mse(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return F.mse_loss(model(batch["x"]), batch["y"])


def full_loss(model: nn.Module, batches: list[dict[str, Tensor]]) -> float:
    with torch.no_grad():
        return float(sum(mse(model, b) for b in batches)) / len(batches)


def sgd(lr: float = 0.05, **kw):
    return lambda params: torch.optim.SGD(params, lr=lr, **kw)


# --------------------------------------------------------------------------- early stop


def test_clean_unlearning_stops_when_clean_accuracy_falls() -> None:
    """EBYD-style: ascend the cross-entropy on a small clean set, stop when clean accuracy falls
    (to below 0.3 here: with 4 classes a model that predicts one class still scores 0.25)."""
    x, y = colour_data(64, 0)
    model = tiny_classifier()
    fit(model, [(x, y)], lambda m, b: F.cross_entropy(m(b[0]), b[1]), sgd(2.0), FitConfig(60))
    assert evaluate(model, x, y) > 0.9, "the model must learn the task first"

    def columns(m: nn.Module) -> dict:
        preds = predict(m, x)
        return {
            "clean_acc": float((preds == y).float().mean()),
            "histogram": prediction_histogram(preds, CLASSES),
        }

    history = fit(
        model,
        [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)],
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        sgd(0.5),
        FitConfig(epochs=50, ascend=True),
        callbacks=[Columns(columns), stop_when("clean_acc", "<", 0.3)],
    )
    assert history.stopped_early
    assert 1 <= len(history.rows) < 50
    assert history.stop_epoch == len(history.rows)
    assert history.last["clean_acc"] < 0.3
    assert all(r["clean_acc"] >= 0.3 for r in history.rows[:-1]), "stopped at the first epoch"
    assert "clean_acc" in history.stop_reason and "< 0.3" in history.stop_reason
    assert f"epoch {len(history.rows)}" in history.stop_reason
    assert sum(history.last["histogram"]) == pytest.approx(1.0)
    assert evaluate(model, x, y) == history.last["clean_acc"]


def test_no_stop_without_the_condition_and_step_level_stop() -> None:
    batches = regression_data()
    full = fit(mlp(), batches, mse, sgd(), FitConfig(epochs=3))
    assert not full.stopped_early and full.stop_reason is None and len(full.rows) == 3
    assert full.updates == 3 * len(batches)

    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen_steps: list[int] = []

    class Record(Callback):
        def on_step_end(self, state, step) -> None:
            seen_steps.append(step.step)

    history = fit(
        model,
        batches,
        mse,
        sgd(),
        FitConfig(epochs=3),
        callbacks=[
            Record(),
            StopWhen(lambda s: s.step >= 6, "six steps", every="step"),
        ],
    )
    assert history.stopped_early and history.stop_reason == "six steps"
    assert (history.stop_epoch, history.stop_step, history.updates) == (2, 6, 6)
    assert seen_steps == [1, 2, 3, 4, 5, 6]
    assert len(history.rows) == 2, "the interrupted epoch still gets its row"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_step_stop_on_running_metric_and_non_finite_loss() -> None:
    x, y = colour_data(32, 1)
    model = tiny_classifier()

    def loss_fn(m: nn.Module, b) -> StepResult:
        logits = m(b[0])
        correct = (logits.argmax(1) == b[1]).sum()
        return StepResult(F.cross_entropy(logits, b[1]), metrics={"acc": Mean(correct, len(b[1]))})

    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    stopper = stop_when("loss", ">", 3.0, every="step")
    history = fit(
        model, batches, loss_fn, sgd(5.0), FitConfig(30, ascend=True), callbacks=[stopper]
    )
    assert (
        history.stopped_early and "loss" in history.stop_reason and "batch" in history.stop_reason
    )
    assert 0 <= history.last["acc"] <= 1

    nan_batches = [{"x": torch.ones(2, 4), "y": torch.full((2, 1), float("nan"))}]
    history = fit(mlp(), nan_batches, mse, sgd(), FitConfig(3), callbacks=[StopOnNonFinite()])
    assert history.stopped_early and "non-finite" in history.stop_reason
    assert len(history.rows) == 1


# --------------------------------------------------------------------------- parameter filter


OPTIMIZERS = {
    "adamw-wd": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.5),
    "sgd-momentum-wd": lambda params: torch.optim.SGD(
        params, lr=0.05, momentum=0.9, weight_decay=0.1
    ),
}
FILTERS = {
    "head-by-prefix": (ParamFilter.prefixes("2."), {"2.weight", "2.bias"}),
    "first-layer-by-names": (ParamFilter.only(["0.weight", "0.bias"]), {"0.weight", "0.bias"}),
    "weights-by-predicate": (
        ParamFilter.where(lambda name, p: p.dim() == 2),
        {"0.weight", "2.weight"},
    ),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("filter_name", sorted(FILTERS))
def test_parameter_filter_leaves_other_tensors_bit_identical(opt_name, filter_name) -> None:
    model = mlp()
    selection, expected = FILTERS[filter_name]
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    handed: list[nn.Parameter] = []

    def factory(params):
        handed.extend(params)
        return OPTIMIZERS[opt_name](params)

    history = fit(model, regression_data(), mse, factory, FitConfig(epochs=3), params=selection)
    assert history.updates == 12
    names = {name for name, p in model.named_parameters() if any(p is q for q in handed)}
    assert names == expected, "only the selected tensors reach the optimizer"
    for name, p in model.named_parameters():
        assert p.requires_grad, "requires_grad is restored after the run"
        if name in expected:
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), f"{name} changed"
            assert p.grad is None, f"{name} got a gradient"


class MaskedLinear(nn.Module):
    """A linear layer whose weight is gated by learnable mask scores (FreezeAsGuard-like)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()
        self.scores = nn.Parameter(torch.zeros(8, 4))

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.scores)
        h = F.relu(F.linear(x, self.body[0].weight * gate, self.body[0].bias))
        return self.body[2](h)


def test_alternating_mask_steps_through_thawed_parameters() -> None:
    """Fine-tune the body; every other step a callback ascends the loss in the mask scores (a
    parameter outside the filter) through ``state.thawed()``; the fit optimizer never sees them."""
    model = MaskedLinear()
    scores_before = model.scores.detach().clone()
    batches = regression_data()
    mask_steps: list[int] = []
    grads_seen: list[bool] = []

    class MaskStep(Callback):
        def on_step_end(self, state, step) -> None:
            grads_seen.append(model.scores.grad is not None or model.scores.requires_grad)
            if step.step % 2:
                return
            batch = batches[(step.batch - 1) % len(batches)]
            with state.thawed():
                (grad,) = torch.autograd.grad(mse(state.model, batch), [model.scores])
            with torch.no_grad():
                model.scores.add_(0.5 * grad)
            mask_steps.append(step.step)

    history = fit(
        model,
        batches,
        mse,
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        FitConfig(epochs=2),
        params=ParamFilter.prefixes("body."),
        callbacks=[MaskStep()],
    )
    assert history.updates == 8 and mask_steps == [2, 4, 6, 8]
    assert not any(grads_seen), "outside thawed() the scores neither require nor get gradients"
    assert not torch.equal(model.scores, scores_before), "the mask steps moved the scores"
    assert model.scores.requires_grad


def test_parameter_filter_errors() -> None:
    model = mlp()
    with pytest.raises(UsageError, match="no parameters named"):
        select_parameters(model, ParamFilter.only(["0.wieght"]))
    with pytest.raises(UsageError, match="selects no"):
        select_parameters(model, ParamFilter.prefixes("nothing."))
    model[0].bias.requires_grad_(False)
    with pytest.raises(UsageError, match="do not require"):
        select_parameters(model, ParamFilter.only(["0.bias"]))
    assert [n for n, _ in select_parameters(model)] == ["0.weight", "2.weight", "2.bias"]
    everything = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UsageError, match="outside the parameter filter"):
        fit(model, regression_data(), mse, everything, params=ParamFilter.prefixes("2."))


# --------------------------------------------------------------------------- ascent


def test_gradient_ascent_raises_the_loss_and_descent_lowers_it() -> None:
    batches = regression_data()
    start = full_loss(mlp(), batches)
    up, down = mlp(), mlp()
    h_up = fit(up, batches, mse, sgd(0.01), FitConfig(epochs=3, ascend=True))
    h_down = fit(down, batches, mse, sgd(0.01), FitConfig(epochs=3))
    assert full_loss(up, batches) > 1.1 * start
    assert full_loss(down, batches) < start
    assert h_down.column("train_loss")[-1] < h_down.column("train_loss")[0]
    assert h_up.column("train_loss")[-1] > h_up.column("train_loss")[0] > 0, (
        "the recorded loss is the loss, not its negation"
    )


# --------------------------------------------------------------------------- logging


def test_extra_columns_reach_the_csv(tmp_path) -> None:
    path = tmp_path / "logs" / "epochs.csv"
    calls: list[tuple[int, int]] = []

    def columns(model: nn.Module) -> dict:
        epoch = len(calls) + 1
        out = {"clean_acc": 1.0 / (epoch + 2), "histogram": [0.5, 0.25, 0.25, 0.0]}
        if epoch >= 2:
            out["late"] = epoch  # a column that appears after the first epoch
        return out

    history = fit(
        mlp(),
        regression_data(),
        mse,
        sgd(),
        FitConfig(epochs=3),
        schedule=MultiStep(0.05, (2,), 0.1),
        callbacks=[
            Columns(columns),
            EpochProgress(lambda e, n, row: calls.append((e, n))),
            CSVLogger(path),
        ],
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header, lines = reader.fieldnames, list(reader)
    assert header == [
        "epoch", "train_loss", "clean_acc", "histogram", "lr", "seconds", "late",
    ]  # fmt: skip
    assert len(lines) == 3
    for line, row in zip(lines, history.rows, strict=True):
        assert int(line["epoch"]) == row["epoch"]
        assert float(line["train_loss"]) == row["train_loss"], "floats are written exactly"
        assert float(line["clean_acc"]) == row["clean_acc"]
        assert json.loads(line["histogram"]) == [0.5, 0.25, 0.25, 0.0]
        assert float(line["lr"]) == row["lr"]
    assert [line["late"] for line in lines] == ["", "2", "3"]
    assert history.column("lr") == [0.05, 0.05, pytest.approx(0.005)]
    assert [p.name for p in path.parent.iterdir()] == ["epochs.csv"], "no temporary files left"


def test_duplicate_columns_are_an_error() -> None:
    with pytest.raises(UsageError, match="twice"):
        fit(mlp(), regression_data(), mse, sgd(), callbacks=[Columns(lambda m: {"epoch": 0})])


# --------------------------------------------------------------------------- other tasks


class NoisePredictor(nn.Module):
    """A tiny conv net that predicts the noise added to an image at noise level ``t``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 3, 3, padding=1)
        )

    def forward(self, noisy: Tensor, t: Tensor) -> Tensor:
        level = t.view(-1, 1, 1, 1).expand(-1, 1, *noisy.shape[-2:])
        return self.net(torch.cat([noisy, level], dim=1))


def noise_prediction_run(seed: int) -> tuple[list[dict], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(100)
    images = torch.rand(32, 3, 8, 8, generator=g)
    batches = [
        {"images": images[i : i + 8], "t": torch.rand(8, generator=g)} for i in range(0, 32, 8)
    ]
    noise_gen = stream_generator(seed, "noise")

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x0, t = batch["images"], batch["t"]
        noise = torch.randn(x0.shape, generator=noise_gen).to(x0.device)
        a = (1.0 - t).view(-1, 1, 1, 1)
        return F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t), noise)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = NoisePredictor()
    history = fit(
        model,
        batches,
        loss_fn,
        lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01),
        FitConfig(epochs=12, grad_clip=1.0, seed=seed, device="cpu"),
    )
    return history.rows, model.state_dict()


def test_noise_prediction_on_dict_batches_trains() -> None:
    rows, _ = noise_prediction_run(0)
    losses = [r["train_loss"] for r in rows]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert set(rows[0]) == {"epoch", "train_loss", "lr", "seconds"}


def test_batches_of_any_structure() -> None:
    batch = {"a": [torch.zeros(5, 2), 3], "b": (torch.ones(5),)}
    assert batch_len(batch) == 5 and batch_len([1, 2]) == 1
    moved = to_device(batch, "cpu")
    assert moved["a"][1] == 3 and moved["a"][0] is batch["a"][0]

    def by_epoch(epoch: int) -> list[dict]:
        return regression_data(seed=epoch)[:2]

    history = fit(mlp(), by_epoch, mse, sgd(), FitConfig(epochs=2))
    assert history.updates == 4
    with pytest.raises(UsageError, match="one-shot"):
        fit(mlp(), iter(regression_data()), mse, sgd(), FitConfig(epochs=2))
    with pytest.raises(UsageError, match="scalar"):
        fit(mlp(), regression_data(), lambda m, b: m(b["x"]), sgd())


def test_gradient_accumulation_equals_one_big_batch() -> None:
    data = regression_data(32)
    whole = [{"x": torch.cat([b["x"] for b in data]), "y": torch.cat([b["y"] for b in data])}]
    halves = [
        {"x": whole[0]["x"][:16], "y": whole[0]["y"][:16]},
        {"x": whole[0]["x"][16:], "y": whole[0]["y"][16:]},
    ]
    a, b = mlp(), mlp()
    fit(a, whole, mse, sgd(0.1), FitConfig(epochs=2))
    h = fit(b, halves, mse, sgd(0.1), FitConfig(epochs=2, accumulate=2))
    assert h.updates == 2
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    thirds = fit(mlp(), regression_data(48), mse, sgd(0.1), FitConfig(epochs=1, accumulate=2))
    assert thirds.updates == 2, "the remainder batch gets its own update"


def test_eval_mode_keeps_batch_norm_statistics() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    stats = model[1].running_mean.clone()
    fit(model, regression_data(), mse, sgd(), FitConfig(epochs=1, train_mode=False))
    assert torch.equal(model[1].running_mean, stats)
    fit(model, regression_data(), mse, sgd(), FitConfig(epochs=1))
    assert not torch.equal(model[1].running_mean, stats)
    assert not model.training, "the model is left in eval mode"


# --------------------------------------------------------------------------- determinism


def dropout_run(seed: int) -> tuple[list[dict], dict[str, Tensor]]:
    x, y = colour_data(48, 2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(32, CLASSES),
        )  # fmt: skip
    batches = ClassifierBatches(
        x, y, 16, "cpu", stream_generator(seed, "shuffle"), stream_generator(seed, "augment")
    )
    assert len(batches) == len(list(batches))
    history = fit(
        model,
        batches,
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        sgd(0.1, momentum=0.9),
        FitConfig(epochs=2, grad_clip=5.0, seed=seed),
        callbacks=[Columns(lambda m: {"acc": evaluate(m, x, y)})],
    )
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in history.rows]
    return rows, model.state_dict()


def test_same_seed_same_run_and_global_rng_untouched() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    rows1, w1 = dropout_run(0)
    assert torch.equal(torch.rand(3), expected), "fit disturbed the caller's global RNG"
    rows2, w2 = dropout_run(0)
    rows3, w3 = dropout_run(1)
    assert rows1 == rows2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert rows1 != rows3
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)
    n1, v1 = noise_prediction_run(5)
    n2, v2 = noise_prediction_run(5)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(n1) == strip(n2) and all(torch.equal(v1[k], v2[k]) for k in v1)


def test_config_validation_and_history_dict() -> None:
    with pytest.raises(UsageError):
        FitConfig(epochs=0)
    with pytest.raises(UsageError):
        FitConfig(accumulate=0)
    with pytest.raises(ValueError):  # UsageError is a ValueError too
        stop_when("acc", "=<", 0.2)
    with pytest.raises(UsageError, match="Callback"):
        fit(mlp(), regression_data(), mse, sgd(), callbacks=[object()])  # type: ignore[list-item]
    history = fit(mlp(), regression_data(), mse, sgd(), FitConfig(epochs=2))
    d = history.to_dict()
    assert d["stopped_early"] is False and len(d["rows"]) == 2 and d["updates"] == 8
    assert prediction_histogram(torch.tensor([0, 0, 3]), 4) == [2 / 3, 0.0, 0.0, 1 / 3]
