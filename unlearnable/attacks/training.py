"""Training as a scraper would train: ERM and PGD adversarial training of victim models.

The recipe follows the released CUDA code (see ``research/methods-protect.md`` A.3): SGD with
momentum 0.9 and weight decay 5e-4, lr 0.1, gradient-norm clipping at 5.0, random crop with
padding + horizontal flip, cross-entropy, no input normalisation outside the model (the victims
of :mod:`unlearnable.models` normalise inside), clean test accuracy after every epoch.

Images are stored as ``uint8`` tensors ``(N, C, H, W)`` (recommended: 4x less memory) or float
tensors in ``[0, 1]``; each mini-batch is converted to float ``[0, 1]`` on its own, so a whole
float copy of the data set is never made here. Labels are ``int64`` ``(N,)``.

Randomness: everything comes from the ``seed`` given to :func:`train_classifier`. Dedicated
``torch.Generator`` objects (on the CPU) drive shuffling, augmentation and the policy (PGD random
starts); other random ops inside the model (dropout) use the global RNG, which is seeded from
``seed`` inside :func:`torch.random.fork_rng`, so the caller's global RNG is not disturbed. Two
runs with the same seed, data and config give identical histories on the CPU (on a GPU,
non-deterministic kernels may make them differ slightly).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ATTACKS, Attack, ERMPolicy, TrainingPolicy

Norm = Literal["linf", "l2"]
Schedule = Literal["cosine", "step", "constant"]

#: ``progress(epoch, num_epochs, stats)`` after every epoch; ``epoch`` counts from 1 and
#: ``stats`` is the epoch's row of :attr:`TrainHistory.epochs`.
ProgressCallback = Callable[[int, int, dict[str, Any]], None]


# --------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """How a victim is trained.

    * ``epochs``: passes over the training set.
    * ``batch_size``: mini-batch size. A last mini-batch of a single image is skipped (batch
      norm cannot train on one sample); every other image is used every epoch.
    * ``lr``, ``momentum``, ``weight_decay``: SGD (Nesterov off), as in the CUDA code.
    * ``schedule``: the learning rate of each epoch (constant within an epoch):
      ``"cosine"``: ``lr * (1 + cos(pi * e / epochs)) / 2`` for epoch ``e = 0 .. epochs-1``;
      ``"step"``: ``lr``, times 0.1 from epoch ``round(0.4 * epochs)`` and times 0.01 from epoch
      ``round(0.8 * epochs)`` (at 100 epochs: 0.1 / 0.01 / 0.001 from epochs 0 / 40 / 80, the
      CUDA code's ``StepLR(step_size=40, gamma=0.1)``); ``"constant"``: ``lr`` throughout.
    * ``grad_clip``: max global L2 norm of the gradient (``None`` or 0: no clipping).
    * ``augment``: random crop with zero padding ``max(1, min(H, W) // 8)`` (4 at 32 px) and
      random horizontal flip, applied batched on tensors.
    * ``eval_batch_size``: batch size of test-set evaluation.
    * ``device``: torch device string for the model and batches (``"cpu"``, ``"cuda"``, ...).
    """

    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"
    grad_clip: float | None = 5.0
    augment: bool = True
    eval_batch_size: int = 512
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(
                f"schedule must be 'cosine', 'step' or 'constant', got {self.schedule!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)


def lr_at_epoch(config: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under ``config.schedule`` (see :class:`TrainConfig`)."""
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    milestones = (round(0.4 * config.epochs), round(0.8 * config.epochs))
    return config.lr * 0.1 ** sum(epoch >= m for m in milestones)


@dataclass(frozen=True)
class Budget:
    """A named training budget: the default victim model and how it is trained."""

    name: str
    model: str
    config: TrainConfig
    description: str

    def with_config(self, **changes: Any) -> Budget:
        """A copy with some :class:`TrainConfig` fields changed (e.g. ``device="cuda"``)."""
        return replace(self, config=replace(self.config, **changes))


#: Named budgets (use :func:`get_budget` to get a copy you may change).
#:
#: * ``smoke``: small-cnn, 2 epochs, batch 128, cosine. Seconds; checks that the pipeline runs,
#:   says nothing about the protection.
#: * ``quick``: small-cnn, 12 epochs, batch 128, cosine. A few minutes on 2 CPU cores for a few
#:   thousand 32 px images (per victim, ERM); a first look.
#: * ``standard``: resnet20, 30 epochs, batch 128, cosine. The benchmark setting; tens of minutes
#:   per victim on a CPU for a few thousand images, use a GPU for more.
#: * ``paper``: the CUDA code's recipe: resnet18, 100 epochs, batch 512, lr 0.1 stepped x0.1 at
#:   epochs 40 and 80, gradient clipping 5.0, crop + flip. Needs a GPU.
BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke",
        "small-cnn",
        TrainConfig(epochs=2, batch_size=128, schedule="cosine"),
        "2 epochs of small-cnn: checks the pipeline, says nothing about the protection",
    ),
    "quick": Budget(
        "quick",
        "small-cnn",
        TrainConfig(epochs=12, batch_size=128, schedule="cosine"),
        "12 epochs of small-cnn: a first look, minutes on a CPU for a few thousand images",
    ),
    "standard": Budget(
        "standard",
        "resnet20",
        TrainConfig(epochs=30, batch_size=128, schedule="cosine"),
        "30 epochs of ResNet-20: the benchmark setting",
    ),
    "paper": Budget(
        "paper",
        "resnet18",
        TrainConfig(epochs=100, batch_size=512, lr=0.1, schedule="step"),
        "the CUDA paper's recipe: ResNet-18, 100 epochs, batch 512, lr 0.1 x0.1 at 40 and 80",
    ),
}


def get_budget(name: str) -> Budget:
    """A copy of ``BUDGETS[name]``; ``ValueError`` listing the choices for an unknown name."""
    key = name.lower()
    if key not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose from: {', '.join(BUDGETS)}")
    budget = BUDGETS[key]
    return replace(budget, config=replace(budget.config))


# --------------------------------------------------------------------------- tensors


def to_float_images(images: Tensor) -> Tensor:
    """``uint8`` ``(B, C, H, W)`` -> float32 in [0, 1] (``/ 255``); float input is returned as
    float32 (a new tensor only if the dtype changes). Never modifies ``images``."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images.float()


def random_crop_flip(
    images: Tensor, generator: torch.Generator, padding: int | None = None
) -> Tensor:
    """Batched random crop with zero padding and random horizontal flip.

    ``images``: float ``(B, C, H, W)``; returns a new tensor of the same shape. Each image gets
    its own offset in ``[0, 2 * padding]`` (both axes) and is flipped with probability 1/2.
    ``padding`` defaults to ``max(1, min(H, W) // 8)`` (4 at 32 px). The random numbers come
    from ``generator`` (on any device; they are moved to the images' device).
    """
    b, c, h, w = images.shape
    pad = max(1, min(h, w) // 8) if padding is None else padding
    dev = images.device
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=generator.device)
    flips = torch.rand(b, generator=generator, device=generator.device) < 0.5
    offsets, flips = offsets.to(dev), flips.to(dev)
    out = images
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = offsets[0][:, None] + torch.arange(h, device=dev)  # (B, H)
        cols = offsets[1][:, None] + torch.arange(w, device=dev)  # (B, W)
        out = padded[
            torch.arange(b, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random ``stream`` (``"shuffle"``, ``"augment"``, ...) of a run
    seeded with ``seed``: independent streams that do not change when streams are added.
    (``numpy.random.SeedSequence`` over ``seed`` and a SHA-256 digest of ``stream``.)"""
    digest = hashlib.sha256(stream.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    seq = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, *words])
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- PGD


def default_step_size(eps: float, steps: int) -> float:
    """Our default PGD step size ``2.5 * eps / steps`` (Madry et al.'s rule; enough to walk from
    one side of the ball to the other). The CUDA code used ``1.5 * eps / steps``: pass
    ``step_size=1.5 * eps / steps`` to reproduce it."""
    return 2.5 * eps / steps


def pgd_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    norm: Norm,
    eps: float,
    steps: int,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    random_start: bool = True,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy, untargeted.

    ``images``: float ``(B, C, H, W)`` in [0, 1]; ``labels``: int64 ``(B,)``. Returns detached
    adversarial images, same shape, in [0, 1], with ``||x_adv - images|| <= eps`` per sample in
    ``norm`` (``"linf"``: max over C, H, W; ``"l2"``: L2 norm over C, H, W).

    * ``"linf"`` (torchattacks ``PGD``): start at ``images + U(-eps, eps)`` clamped to [0, 1];
      each step adds ``step_size * sign(grad)``, projects onto the eps-box and clamps to [0, 1].
    * ``"l2"`` (torchattacks ``PGDL2``): start at a random point of the eps-ball (uniform
      direction, radius ``U(0, eps)``), clamped to [0, 1]; each step adds ``step_size *
      grad / ||grad||_2`` (per sample), projects onto the L2 ball and clamps to [0, 1]. Note that
      torchattacks 3.2.6, which the CUDA paper used, computed the L2 random start but never added
      it: pass ``random_start=False`` to reproduce that.

    ``step_size`` defaults to :func:`default_step_size` (``2.5 * eps / steps``). The model runs in
    eval mode (batch-norm running statistics, no dropout) during the attack and is put back in
    its previous mode afterwards; parameter gradients are not touched. ``images`` is unchanged.
    Random starts come from ``generator`` (a fresh unseeded one if ``None``).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or steps < 0:
        raise ValueError("eps and steps must be >= 0")
    x0 = images.detach()
    if eps == 0 or steps == 0:
        return x0.clone()
    alpha = default_step_size(eps, steps) if step_size is None else step_size
    gen = generator if generator is not None else torch.Generator()
    shape = (x0.shape[0],) + (1,) * (x0.dim() - 1)

    def l2(t: Tensor) -> Tensor:
        return t.flatten(1).norm(dim=1).view(shape)

    def project(x: Tensor) -> Tensor:
        delta = x - x0
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            delta = delta * (eps / l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x0 + delta).clamp(0.0, 1.0)

    x = x0.clone()
    if random_start:
        if norm == "linf":
            noise = torch.rand(x0.shape, generator=gen, device=gen.device) * (2 * eps) - eps
        else:
            direction = torch.randn(x0.shape, generator=gen, device=gen.device)
            radius = torch.rand(shape, generator=gen, device=gen.device) * eps
            noise = direction / l2(direction).clamp_min(1e-12) * radius
        x = project(x0 + noise.to(x0.device, x0.dtype))

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                x.requires_grad_(True)
                loss = F.cross_entropy(model(x), labels)
                (grad,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    if norm == "linf":
                        x = x + alpha * grad.sign()
                    else:
                        x = x + alpha * grad / l2(grad).clamp_min(1e-12)
                    x = project(x)
    finally:
        model.train(was_training)
    return x.detach()


class AdversarialTrainingPolicy:
    """PGD adversarial training (Madry et al.): the loss is the cross-entropy on the PGD
    adversarial batch only (no clean term), as in the CUDA code. See :func:`pgd_attack`."""

    def __init__(
        self,
        norm: Norm,
        eps: float,
        steps: int,
        step_size: float | None = None,
        random_start: bool = True,
    ) -> None:
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        self.norm: Norm = norm
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = (
            default_step_size(eps, steps) if step_size is None and steps > 0 else step_size
        )
        self.random_start = random_start

    def loss(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        """images: ``(B, C, H, W)`` float in [0, 1]; labels: ``(B,)`` int64; returns a scalar."""
        adv = pgd_attack(
            model,
            images,
            labels,
            self.norm,
            self.eps,
            self.steps,
            self.step_size,
            generator,
            self.random_start,
        )
        return F.cross_entropy(model(adv), labels)


class AdversarialTraining(Attack):
    """The scraper trains with PGD adversarial training (on the data as it is)."""

    def __init__(
        self,
        name: str,
        norm: Norm,
        eps: float,
        steps: int = 5,
        step_size: float | None = None,
        random_start: bool = True,
        eps_label: str | None = None,
    ) -> None:
        self.name = name
        self.norm: Norm = norm
        self.eps = float(eps)
        self.steps = int(steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.step_size = (
            default_step_size(self.eps, self.steps) if step_size is None else float(step_size)
        )
        self.random_start = random_start
        label = eps_label or f"{eps:g}"
        self.summary = (
            f"PGD-{self.steps} adversarial training, {'L-inf' if norm == 'linf' else 'L2'} "
            f"eps {label}"
        )

    def policy(self) -> TrainingPolicy:  # noqa: D102
        return AdversarialTrainingPolicy(
            self.norm, self.eps, self.steps, self.step_size, self.random_start
        )

    def describe(self) -> dict:  # noqa: D102
        return {
            "name": self.name,
            "summary": self.summary,
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
        }


def _register_at(name: str, norm: Norm, eps: float, eps_label: str) -> None:
    def factory(steps: int = 5, step_size: float | None = None) -> Attack:
        return AdversarialTraining(name, norm, eps, steps, step_size, eps_label=eps_label)

    factory.__doc__ = (
        f"PGD adversarial training, {norm} eps {eps_label}. Options: ``steps`` (default 5, to "
        f"fit CPU budgets; the CUDA paper used 10) and ``step_size`` (default 2.5 * eps / steps; "
        f"the CUDA code used 1.5 * eps / steps)."
    )
    ATTACKS.add(name, factory)


_register_at("at-linf-4", "linf", 4 / 255, "4/255")
_register_at("at-linf-8", "linf", 8 / 255, "8/255")
_register_at("at-l2-0.25", "l2", 0.25, "0.25")
_register_at("at-l2-0.5", "l2", 0.5, "0.5")


# --------------------------------------------------------------------------- training


@dataclass
class TrainHistory:
    """Per-epoch record of one training run.

    ``epochs[i]`` = ``{"epoch": i + 1, "train_loss", "train_acc", "test_acc", "lr", "seconds"}``;
    accuracies are fractions in [0, 1]. ``train_acc`` is measured on the training forward passes
    (augmented, adversarial for AT) and is ``None`` when the policy made none the trainer could
    see; ``train_loss`` is the mean policy loss over the epoch's images.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def peak_test_acc(self) -> float:
        """Highest test accuracy of any epoch (what early stopping on the test set would keep)."""
        return max(e["test_acc"] for e in self.epochs)

    @property
    def last_test_acc(self) -> float:
        """Test accuracy after the last epoch."""
        return self.epochs[-1]["test_acc"]

    @property
    def peak_epoch(self) -> int:
        """1-based epoch of :attr:`peak_test_acc` (the first one on ties)."""
        best = self.peak_test_acc
        return next(e["epoch"] for e in self.epochs if e["test_acc"] == best)

    def to_dict(self) -> dict[str, Any]:
        """``{"peak_test_acc", "last_test_acc", "peak_epoch", "epochs": [...]}``."""
        return {
            "peak_test_acc": self.peak_test_acc,
            "last_test_acc": self.last_test_acc,
            "peak_epoch": self.peak_epoch,
            "epochs": [dict(e) for e in self.epochs],
        }


def _batches(n: int, batch_size: int, perm: Tensor) -> Iterator[Tensor]:
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if idx.numel() < 2 and n >= 2:
            return  # batch norm cannot train on a single sample
        yield idx


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (in eval mode; its mode is restored afterwards).

    ``images``: ``(N, C, H, W)`` uint8, or float in [0, 1]; ``labels``: int64 ``(N,)``.
    ``device`` defaults to the model's parameter device. Returns 0.0 for an empty set.
    """
    n = images.shape[0]
    if n == 0:
        return 0.0
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, n, batch_size):
            x = to_float_images(images[start : start + batch_size].to(device))
            y = labels[start : start + batch_size].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return correct / n


class _LogitsTap:
    """Keeps the last training-mode output of ``model`` whose batch size matches (for train acc)."""

    def __init__(self, model: nn.Module) -> None:
        self.logits: Tensor | None = None
        self.batch: int = -1
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and isinstance(output, Tensor) and output.dim() == 2:
            if output.shape[0] == self.batch:
                self.logits = output.detach()

    def reset(self, batch: int) -> None:
        self.batch, self.logits = batch, None


def _check_data(images: Tensor, labels: Tensor, what: str) -> None:
    if images.dim() != 4:
        raise ValueError(f"{what} images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"{what} labels must be ({images.shape[0]},), got shape {tuple(labels.shape)}"
        )
    if labels.dtype != torch.int64:
        raise TypeError(f"{what} labels must be int64, got {labels.dtype}")


def train_classifier(
    model: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    config: TrainConfig,
    policy: TrainingPolicy | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    num_classes: int | None = None,
) -> TrainHistory:
    """Train ``model`` in place with SGD as :class:`TrainConfig` says; test after every epoch.

    ``train_images``/``test_images``: ``(N, C, H, W)`` uint8 (recommended) or float in [0, 1],
    on the CPU or the training device; converted to float per mini-batch. Labels: int64
    ``(N,)``. ``policy`` turns each (augmented) mini-batch into the loss (default: ERM).
    ``num_classes`` defaults to ``1 + max label`` of train and test. The model is moved to
    ``config.device`` and left in eval mode with its gradients cleared.
    ``progress(epoch, epochs, row)`` is called after every epoch with the epoch's row of
    :attr:`TrainHistory.epochs`. See the module docstring for how ``seed`` makes runs
    repeatable (the initial weights are the caller's: build the model with
    ``build_victim(..., seed=seed)``).
    """
    _check_data(train_images, train_labels, "train")
    _check_data(test_images, test_labels, "test")
    if train_images.shape[0] < 2:
        raise ValueError("need at least 2 training images")
    policy = policy if policy is not None else ERMPolicy()
    if num_classes is None:
        top = int(train_labels.max())
        if test_labels.numel():
            top = max(top, int(test_labels.max()))
        num_classes = top + 1
    device = torch.device(config.device)
    model.to(device)
    g_shuffle = _generator(derive_seed(seed, "shuffle"))
    g_augment = _generator(derive_seed(seed, "augment"))
    g_policy = _generator(derive_seed(seed, "policy"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    n = train_images.shape[0]
    history = TrainHistory()
    tap = _LogitsTap(model)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(derive_seed(seed, "global"))
            for epoch in range(config.epochs):
                start = time.perf_counter()
                lr = lr_at_epoch(config, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                model.train()
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device, dtype=torch.int64)
                seen = seen_acc = 0
                perm = torch.randperm(n, generator=g_shuffle)
                for idx in _batches(n, config.batch_size, perm):
                    x = to_float_images(train_images[idx.to(train_images.device)].to(device))
                    y = train_labels[idx.to(train_labels.device)].to(device)
                    if config.augment:
                        x = random_crop_flip(x, g_augment)
                    tap.reset(x.shape[0])
                    loss = policy.loss(model, x, y, num_classes, g_policy)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.grad_clip:
                        nn.utils.clip_grad_norm_(params, config.grad_clip)
                    optimizer.step()
                    loss_sum += loss.detach() * x.shape[0]
                    seen += x.shape[0]
                    if tap.logits is not None:
                        correct += (tap.logits.argmax(1) == y).sum()
                        seen_acc += x.shape[0]
                test_acc = evaluate(model, test_images, test_labels, config.eval_batch_size, device)
                row = {
                    "epoch": epoch + 1,
                    "train_loss": float(loss_sum) / max(seen, 1),
                    "train_acc": int(correct) / seen_acc if seen_acc else None,
                    "test_acc": test_acc,
                    "lr": lr,
                    "seconds": time.perf_counter() - start,
                }
                history.epochs.append(row)
                if progress is not None:
                    progress(epoch + 1, config.epochs, dict(row))
    finally:
        tap.handle.remove()
        optimizer.zero_grad(set_to_none=True)  # free the gradient memory
    model.eval()
    return history


__all__ = [
    "BUDGETS",
    "AdversarialTraining",
    "AdversarialTrainingPolicy",
    "Budget",
    "TrainConfig",
    "TrainHistory",
    "default_step_size",
    "derive_seed",
    "evaluate",
    "get_budget",
    "lr_at_epoch",
    "pgd_attack",
    "random_crop_flip",
    "to_float_images",
    "train_classifier",
]
