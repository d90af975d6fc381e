"""The inner steps of FreezeAsGuard mask learning (see :mod:`.freeze_learn` for the algorithm):
the soft-mask state, the simulated user's optimizer, the mask-step callback, paired batches of
both domains and the binarisation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..training import Callback, FitState, Mean, StepInfo, StepResult, to_device
from .freeze_adapters import TaskAdapter

if TYPE_CHECKING:
    from .freeze_learn import FreezeConfig

X_LIMIT = 1.0
"""Scores are clipped to [-X_LIMIT, X_LIMIT] (the soft mask stays within about
sigmoid(±5) at T = 0.2, so a score can always move back)."""


# ------------------------------------------------------------------------- mask state


class MaskState:
    """Scores, differences and soft masks of the maskable tensors of the working copy."""

    def __init__(
        self,
        named: Sequence[tuple[str, nn.Parameter]],
        pre: Sequence[Tensor],
        level: str,
        temperature: float,
        generator: torch.Generator,
    ) -> None:
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.index = {id(p): i for i, p in enumerate(self.params)}
        self.temperature = temperature
        self.level = level
        self.pre = list(pre)  # θ_pre, the released values
        self.scores: list[Tensor] = []
        for p in self.params:
            groups = 1 if level == "tensor" or p.dim() == 0 else p.shape[0]
            self.scores.append(torch.rand(groups, generator=generator).to(p.device))
        self.diffs: list[Tensor] = []

    def view(self, i: int, values: Tensor) -> Tensor:
        """Per-group ``values`` shaped to broadcast over tensor ``i``."""
        p = self.params[i]
        if self.level == "tensor" or p.dim() == 0:
            return values.reshape([1] * p.dim()) if p.dim() else values.reshape(())
        return values.reshape([-1] + [1] * (p.dim() - 1))

    def soft(self, i: int) -> Tensor:
        return torch.sigmoid(self.scores[i] / self.temperature)

    @torch.no_grad()
    def start(self) -> None:
        """φ = the current weights (θ_ft); D = θ_pre - φ; θ = φ + m·D."""
        self.diffs = []
        for i, p in enumerate(self.params):
            diff = self.pre[i] - p.detach()
            self.diffs.append(diff)
            p.add_(self.view(i, self.soft(i)) * diff)

    def free(self, p: Tensor) -> tuple[int, Tensor] | None:
        i = self.index.get(id(p))
        if i is None:
            return None
        return i, 1.0 - self.view(i, self.soft(i))

    def all_soft(self) -> Tensor:
        return torch.cat([self.soft(i).cpu() for i in range(len(self.params))])

    def group_sizes(self) -> list[int]:
        return [s.numel() for s in self.scores]


class SimulatedUser(torch.optim.Optimizer):
    """Plain SGD on the user's copy φ through the soft mask (step 3 of the module docstring)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, masks: MaskState) -> None:
        super().__init__(list(params), {"lr": lr})
        self.masks = masks

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                found = self.masks.free(p)
                if found is None:  # not maskable (the head): plain SGD
                    p.add_(p.grad, alpha=-lr)
                    continue
                i, free = found
                delta = p.grad * free * -lr  # Δφ
                p.add_(delta * free)
                self.masks.diffs[i].sub_(delta)


# ------------------------------------------------------------------------- batches


class PairBatches:
    """``{"illegal": batch, "legal": batch}`` pairs; an epoch is as long as the longer domain
    (the shorter one is cycled, reshuffled on every pass)."""

    def __init__(self, illegal: Iterable[Any], legal: Iterable[Any]) -> None:
        self.illegal, self.legal = illegal, legal

    def __len__(self) -> int:
        return max(len(self.illegal), len(self.legal))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        a, b = cycle(self.illegal), cycle(self.legal)
        for _ in range(len(self)):
            yield {"illegal": next(a), "legal": next(b)}


def cycle(source: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for item in source:
            empty = False
            yield item
        if empty:
            raise UsageError("a data set gives no batches")


def pair_loss(adapter: TaskAdapter) -> Callable[[nn.Module, Any], StepResult]:
    def loss_fn(model: nn.Module, pair: Mapping[str, Any]) -> StepResult:
        illegal = adapter.loss(model, pair["illegal"])
        legal = adapter.loss(model, pair["legal"])
        metrics = {
            "illegal_loss": Mean(illegal.detach(), 1),
            "legal_loss": Mean(legal.detach(), 1),
        }
        return StepResult((illegal + legal) / 2, count=1, metrics=metrics)

    return loss_fn


# ------------------------------------------------------------------------- mask steps


class MaskSteps(Callback):
    """One mask step after every ``user_interval - 1`` user steps; stops after ``steps``."""

    def __init__(
        self,
        masks: MaskState,
        adapter: TaskAdapter,
        pairs: Iterator[dict[str, Any]],
        config: FreezeConfig,
        progress: Callable[[int, int, dict[str, Any]], None] | None,
    ) -> None:
        self.masks, self.adapter, self.pairs = masks, adapter, pairs
        self.config, self.progress = config, progress
        self.user_steps = 0
        self.user_loss: list[float] = []
        self.rows: list[dict[str, Any]] = []

    def on_step_end(self, state: FitState, step: StepInfo) -> None:  # noqa: D102
        if not step.updated:
            return
        self.user_steps += 1
        self.user_loss.append(float(step.loss))
        if self.user_steps % (self.config.user_interval - 1) == 0:
            self.mask_step(state)
        if self.user_steps >= self.config.steps:
            state.request_stop(f"{self.config.steps} simulated-user steps")

    def mask_step(self, state: FitState) -> None:
        masks, cfg = self.masks, self.config
        pair = to_device(next(self.pairs), state.device)
        for p in state.model.parameters():
            p.grad = None
        with state.thawed():
            illegal = self.adapter.loss(state.model, pair["illegal"])
            legal = self.adapter.loss(state.model, pair["legal"])
            ((legal - illegal) / 2).backward()
        with torch.no_grad():
            hyper = []
            for i, p in enumerate(masks.params):
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                product = masks.diffs[i] * grad
                if masks.scores[i].numel() == 1:
                    hyper.append(product.sum().reshape(1))
                else:
                    hyper.append(product.reshape(product.shape[0], -1).sum(1))
            sizes = masks.group_sizes()
            h = torch.cat([v.cpu().double() for v in hyper])
            spread = h.std() if h.numel() > 1 else h.abs().mean()
            h = (h - h.mean()) / (spread + 1e-12) if float(spread) > 0 else torch.zeros_like(h)
            mean_soft = float(masks.all_soft().mean())
            shift = cfg.penalty * (mean_soft - cfg.ratio)
            step = (cfg.mask_lr * (h + shift)).float()
            for i, part in enumerate(torch.split(step, sizes)):
                old = masks.soft(i)
                masks.scores[i] = (masks.scores[i] - part.to(old.device)).clamp(-X_LIMIT, X_LIMIT)
                change = masks.soft(i) - old
                masks.params[i].add_(masks.view(i, change) * masks.diffs[i])
        for p in state.model.parameters():
            p.grad = None
        soft = masks.all_soft()
        row = {
            "step": self.user_steps,
            "mask_step": len(self.rows) + 1,
            "mask_mean": float(soft.mean()),
            "hard_ratio": float((soft > 0.5).float().mean()),
            "illegal_loss": float(illegal.detach()),
            "legal_loss": float(legal.detach()),
            "user_loss": sum(self.user_loss) / max(len(self.user_loss), 1),
        }
        self.user_loss = []
        self.rows.append(row)
        if self.progress is not None:
            self.progress(self.user_steps, cfg.steps, dict(row))


def binarize(masks: MaskState, config: FreezeConfig) -> dict[str, tuple[int, ...] | None]:
    scores = torch.cat([s.cpu() for s in masks.scores])
    if config.binarize == "top-k":
        k = round(config.ratio * scores.numel())
        order = torch.argsort(scores, descending=True, stable=True)
        chosen = torch.zeros(scores.numel(), dtype=torch.bool)
        chosen[order[:k]] = True
    else:
        chosen = torch.sigmoid(scores / config.temperature) > 0.5
    frozen: dict[str, tuple[int, ...] | None] = {}
    for i, part in enumerate(torch.split(chosen, masks.group_sizes())):
        p = masks.params[i]
        if not bool(part.any()):
            continue
        whole = config.level == "tensor" or p.dim() == 0 or bool(part.all())
        frozen[masks.names[i]] = None if whole else tuple(int(j) for j in part.nonzero()[:, 0])
    return frozen


__all__ = [
    "MaskState",
    "MaskSteps",
    "PairBatches",
    "SimulatedUser",
    "binarize",
    "cycle",
    "pair_loss",
]
