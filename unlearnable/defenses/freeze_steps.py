"""The inner steps of FreezeAsGuard mask learning (see :mod:`.freeze_learn` for the algorithm):
the soft-mask state, the simulated user's optimizer, the mask-step callback, paired batches of
both domains, the channel families tied to their BatchNorm, and the binarisation."""

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
    """Scores, differences and soft masks of the maskable tensors of the working copy.

    ``families``: lists of tensor indices that share one score per group (a convolution and the
    BatchNorm after it, see :func:`tied_families`); ``None``: every tensor on its own. Scores
    are kept per family (``scores[f]``, one value per group), in family order.
    ``fresh``: keep, per tensor, the *would-be* displacement of the simulated user since the
    last reset (``evidence``: the unmasked SGD steps, ``θ_pre - φ`` had the group been free),
    for mask learning against a fresh user (``FreezeConfig.reset_interval``).
    """

    def __init__(
        self,
        named: Sequence[tuple[str, nn.Parameter]],
        pre: Sequence[Tensor],
        level: str,
        temperature: float,
        generator: torch.Generator,
        families: Sequence[Sequence[int]] | None = None,
        fresh: bool = False,
    ) -> None:
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.index = {id(p): i for i, p in enumerate(self.params)}
        self.temperature = temperature
        self.level = level
        self.pre = list(pre)  # θ_pre, the released values
        if families is None:
            families = [[i] for i in range(len(self.params))]
        self.families = [list(f) for f in families]
        self.family_of = {i: f for f, members in enumerate(self.families) for i in members}
        if sorted(self.family_of) != list(range(len(self.params))):
            raise UsageError("every maskable tensor must be in exactly one family")
        self.scores: list[Tensor] = []
        for members in self.families:
            sizes = {self._groups(self.params[i]) for i in members}
            if len(sizes) != 1:
                raise UsageError("tensors of one family must have the same number of groups")
            p = self.params[members[0]]
            self.scores.append(torch.rand(sizes.pop(), generator=generator).to(p.device))
        self.diffs: list[Tensor] = []
        self.evidence: list[Tensor] | None = [] if fresh else None

    def _groups(self, p: Tensor) -> int:
        return 1 if self.level == "tensor" or p.dim() == 0 else p.shape[0]

    def view(self, i: int, values: Tensor) -> Tensor:
        """Per-group ``values`` shaped to broadcast over tensor ``i``."""
        p = self.params[i]
        if self.level == "tensor" or p.dim() == 0:
            return values.reshape([1] * p.dim()) if p.dim() else values.reshape(())
        return values.reshape([-1] + [1] * (p.dim() - 1))

    def soft(self, i: int) -> Tensor:
        """Soft mask of tensor ``i`` (its family's), one value per group in (0, 1)."""
        return self.soft_family(self.family_of[i])

    def soft_family(self, f: int) -> Tensor:
        return torch.sigmoid(self.scores[f] / self.temperature)

    @torch.no_grad()
    def start(self) -> None:
        """φ = the current weights (θ_ft, or θ_pre for a fresh user); D = θ_pre - φ;
        θ = φ + m·D."""
        self.diffs = []
        for i, p in enumerate(self.params):
            diff = self.pre[i] - p.detach()
            self.diffs.append(diff)
            p.add_(self.view(i, self.soft(i)) * diff)
        if self.evidence is not None:
            self.evidence = [d.clone() for d in self.diffs]

    @torch.no_grad()
    def reset(self, root: nn.Module, release: Mapping[str, Tensor]) -> None:
        """A fresh user: ``root`` (parameters and buffers, head included) back to the release
        values ``release`` (a state dict), so φ = θ = θ_pre and D = 0 (the mask's frozen part
        is at θ_pre anyway); the would-be displacements start again from 0."""
        root.load_state_dict(release)
        for d in self.diffs:
            d.zero_()
        for e in self.evidence or ():
            e.zero_()

    def free(self, p: Tensor) -> tuple[int, Tensor] | None:
        i = self.index.get(id(p))
        if i is None:
            return None
        return i, 1.0 - self.view(i, self.soft(i))

    def all_soft(self) -> Tensor:
        """Soft masks of every group (family order)."""
        return torch.cat([self.soft_family(f).cpu() for f in range(len(self.scores))])

    def group_sizes(self) -> list[int]:
        """Groups per family."""
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
                if self.masks.evidence is not None:  # the step had the group been free
                    self.masks.evidence[i].add_(p.grad, alpha=lr)


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
    """One mask step after every ``user_interval - 1`` user steps; stops after ``steps``.

    With ``config.reset_interval`` (and ``fresh=(root, release state dict)``) the simulated user
    is put back to θ_pre after every ``reset_interval`` user steps (:meth:`MaskState.reset`),
    the hypergradient uses the would-be displacements (``MaskState.evidence``) and is scaled by
    a running mean of its spread (right after a reset every displacement is small, and scaling
    each step by its own spread would turn that into full-size noise)."""

    def __init__(
        self,
        masks: MaskState,
        adapter: TaskAdapter,
        pairs: Iterator[dict[str, Any]],
        config: FreezeConfig,
        progress: Callable[[int, int, dict[str, Any]], None] | None,
        fresh: tuple[nn.Module, Mapping[str, Tensor]] | None = None,
    ) -> None:
        self.masks, self.adapter, self.pairs = masks, adapter, pairs
        self.config, self.progress = config, progress
        self.fresh = fresh
        self.spread: float | None = None
        self.user_steps = 0
        self.resets = 0
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
        elif self.fresh is not None and self.user_steps % self.config.reset_interval == 0:
            self.masks.reset(*self.fresh)
            self.resets += 1

    def _scale(self, spread: float) -> float:
        """The spread that standardises this step's hypergradient."""
        if self.fresh is None:
            return spread
        self.spread = spread if self.spread is None else 0.9 * self.spread + 0.1 * spread
        return self.spread

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
            moved = masks.diffs if masks.evidence is None else masks.evidence
            hyper = []
            for f, members in enumerate(masks.families):  # h = Σ D ⊙ ∂J/∂θ per group
                total = torch.zeros(masks.scores[f].numel(), dtype=torch.float64)
                for i in members:
                    p = masks.params[i]
                    if p.grad is None:
                        continue
                    product = moved[i] * p.grad
                    if masks.level == "tensor" or p.dim() == 0:
                        total += product.sum().cpu().double()
                    else:
                        total += product.reshape(product.shape[0], -1).sum(1).cpu().double()
                hyper.append(total)
            sizes = masks.group_sizes()
            h = torch.cat(hyper).double()
            spread = float(h.std() if h.numel() > 1 else h.abs().mean())
            scale = self._scale(spread)
            h = (h - h.mean()) / (scale + 1e-12) if scale > 0 else torch.zeros_like(h)
            mean_soft = float(masks.all_soft().mean())
            shift = cfg.penalty * (mean_soft - cfg.ratio)
            step = (cfg.mask_lr * (h + shift)).float()
            for f, part in enumerate(torch.split(step, sizes)):
                old = masks.soft_family(f)
                masks.scores[f] = (masks.scores[f] - part.to(old.device)).clamp(-X_LIMIT, X_LIMIT)
                change = masks.soft_family(f) - old
                for i in masks.families[f]:
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
    for f, part in enumerate(torch.split(chosen, masks.group_sizes())):
        if not bool(part.any()):
            continue
        for i in masks.families[f]:
            p = masks.params[i]
            whole = config.level == "tensor" or p.dim() == 0 or bool(part.all())
            frozen[masks.names[i]] = None if whole else tuple(int(j) for j in part.nonzero()[:, 0])
    return frozen


def tied_families(root: nn.Module, names: Sequence[str]) -> list[list[str]]:
    """Channel groups that join each convolution (or linear) output channel j with channel j of
    the BatchNorm that follows it: ``[[conv.weight, conv.bias, bn.weight, bn.bias], ...]``, and
    every other tensor of ``names`` on its own (model order of the first member).

    "Follows" is module registration order: a ``_BatchNorm`` whose ``num_features`` equals the
    output width of the last convolution or linear layer registered before it (the layout of
    ``nn.Sequential`` stacks and of ResNet blocks). Only tensors in ``names`` (the maskable
    ones) are joined; a BatchNorm that matches nothing stays on its own."""
    wanted = set(names)
    owner: dict[str, list[str]] = {}  # first member -> family
    last: tuple[str, int] | None = None  # (first member of the last conv/linear family, width)
    for prefix, module in root.named_modules():
        own = [
            f"{prefix}.{n}" if prefix else n
            for n, _ in module.named_parameters(recurse=False)
            if (f"{prefix}.{n}" if prefix else n) in wanted
        ]
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            last = None
            if own:
                owner[own[0]] = own
            if own and not getattr(module, "transposed", False):  # dim 0 = output channels
                last = (own[0], int(module.weight.shape[0]))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and own:
            if last is not None and module.num_features == last[1]:
                owner[last[0]].extend(own)
            else:
                owner[own[0]] = own
            last = None
        elif own:
            owner[own[0]] = own
            last = None
    order = {n: k for k, n in enumerate(names)}
    families = sorted(owner.values(), key=lambda members: order[members[0]])
    seen = {n for members in families for n in members}
    families += [[n] for n in names if n not in seen]  # tensors of no module (unlikely)
    return sorted(families, key=lambda members: order[members[0]])


__all__ = [
    "MaskState",
    "MaskSteps",
    "PairBatches",
    "SimulatedUser",
    "binarize",
    "cycle",
    "pair_loss",
    "tied_families",
]
