"""Backdoor removal (EBYD stage B5 = RNP): learn per-channel batch-norm masks on the exposed
model with clean data, then prune the lowest channels of the **original** model.

1. **Masks.** Every batch-norm channel ``c`` gets a mask ``m_c`` in [0, 1], initialised to 1; a
   masked layer outputs ``gamma_c * m_c * x_hat + beta_c`` (only the scale is masked, as in
   RNP). With every weight of the exposed model frozen, the masks alone are trained to minimise
   ``alpha * CE`` on the defense set (SGD lr 0.2, momentum 0.9, alpha 0.2, 20 epochs, batch 128,
   train mode, masks clamped to [0, 1] after every step). Channels that clean behaviour needs
   recover towards 1; channels that only carry the backdoor are not needed and stay low.
2. **Pruning.** For a threshold ``tau``, every channel with ``m_c <= tau`` of the original
   model gets ``gamma_c = 0`` (its ``beta_c`` is kept, RNP's convention: the channel emits a
   constant). Nothing else changes, and there is no fine-tuning afterwards.
3. **Choosing tau without the trigger.** ``rule="fixed"``: ``tau = threshold`` (RNP's 0.2).
   ``rule="max-drop"`` (default): walk up the grid 0.05, 0.10, ..., 0.90 and keep the last
   ``tau`` before defense-set accuracy first falls by more than ``max_drop`` (absolute) below
   the unpruned model's (BackdoorBench's clean-accuracy tolerance rule); when even the
   channels whose mask is exactly 0 break the tolerance, nothing is pruned (threshold 0, no
   channels). ASR is never used.

Masks attach through forward hooks on ``nn.BatchNorm1d/2d/3d`` modules, so any of our models
works; TorchScript and ``torch.export`` archives have no hookable modules (``UsageError``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..training import (
    Callback,
    Columns,
    EpochProgress,
    FitConfig,
    ParamFilter,
    StepResult,
    fit,
    stream_generator,
)
from ..training.classification import ClassifierBatches, evaluate
from .exposure import clone_model

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 19))


def batch_norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every batch-norm layer of ``model``, in module order."""
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def require_batch_norm(model: nn.Module, what: str = "the model") -> list[tuple[str, nn.Module]]:
    """The batch-norm layers; ``UsageError`` saying why when they cannot be masked."""
    if isinstance(model, torch.jit.ScriptModule) or any(
        isinstance(m, (torch.jit.ScriptModule, torch.fx.GraphModule)) for m in model.modules()
    ):
        raise UsageError(
            f"{what} is a TorchScript or torch.export archive: its layers cannot be masked or "
            "edited. Removal needs the model as our safetensors format or as a state dict for a "
            "registered architecture (--arch); `scan` works on archives"
        )
    layers = batch_norm_layers(model)
    if not layers:
        raise UsageError(f"{what} has no batch-norm layers: BN-mask removal (RNP) needs them")
    return layers


@dataclass(frozen=True)
class MaskConfig:
    """Mask learning (RNP's filter-level recovery); see the module docstring."""

    lr: float = 0.2
    momentum: float = 0.9
    alpha: float = 0.2
    epochs: int = 20
    batch_size: int = 128
    augment: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 2 or self.alpha <= 0:
            raise UsageError("masks need lr > 0, alpha > 0, epochs >= 1 and batch_size >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PruneConfig:
    """How the pruning threshold is chosen: ``rule`` ``"max-drop"`` (``max_drop``: tolerated
    absolute drop of defense-set accuracy) or ``"fixed"`` (``threshold``); ``grid``: the
    thresholds tried (and reported) in increasing order."""

    rule: str = "max-drop"
    threshold: float = 0.2
    max_drop: float = 0.05
    grid: tuple[float, ...] = DEFAULT_GRID

    def __post_init__(self) -> None:
        if self.rule not in ("max-drop", "fixed"):
            raise UsageError(f"pruning rule must be 'max-drop' or 'fixed', got {self.rule!r}")
        if not 0 <= self.threshold <= 1 or not 0 <= self.max_drop <= 1:
            raise UsageError("threshold and max_drop must be in [0, 1]")
        object.__setattr__(self, "grid", tuple(sorted(float(t) for t in self.grid)))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "grid": list(self.grid)}


class MaskedModel(nn.Module):
    """``net`` with a mask parameter ``masks[i]`` ``(C_i,)`` on its ``i``-th batch-norm layer,
    applied by a forward hook: ``out * m + (1 - m) * beta`` = ``gamma * m * x_hat + beta``.
    Call :meth:`remove` to detach the hooks."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.layers = require_batch_norm(net)
        self.masks = nn.ParameterList(
            [nn.Parameter(torch.ones(m.num_features, device=_device(m))) for _, m in self.layers]
        )
        self.handles = [
            m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)
        ]

    def _hook(self, index: int) -> Callable[..., Tensor]:
        def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
            shape = (1, -1) + (1,) * (out.dim() - 2)
            mask = self.masks[index].view(shape)
            beta = module.bias.view(shape) if module.bias is not None else 0.0
            return out * mask + (1 - mask) * beta

        return hook

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def values(self) -> dict[str, Tensor]:
        """Layer name -> mask values ``(C,)`` on the CPU."""
        return {
            name: m.detach().cpu().clone()
            for (name, _), m in zip(self.layers, self.masks, strict=True)
        }


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


class _Clamp(Callback):
    def __init__(self, masks: nn.ParameterList) -> None:
        self.masks = masks

    def on_step_end(self, state, step) -> None:  # noqa: D102
        with torch.no_grad():
            for m in self.masks:
                m.clamp_(0.0, 1.0)


@dataclass
class MaskResult:
    """Learned masks (layer name -> ``(C,)`` values in [0, 1]) and the per-epoch rows."""

    masks: dict[str, Tensor]
    rows: list[dict[str, Any]]

    def ranked(self) -> list[tuple[float, str, int]]:
        """Every channel as ``(mask value, layer, channel)``, lowest first."""
        return sorted(
            (float(v), name, c)
            for name, vals in self.masks.items()
            for c, v in enumerate(vals.tolist())
        )


def learn_masks(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    config: MaskConfig | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> MaskResult:
    """Learn batch-norm masks on a copy of ``model`` (normally the exposed model; left as it
    is). ``images``: uint8 or float ``(N, C, S, S)``; ``labels`` int64 ``(N,)``."""
    config = config or MaskConfig()
    masked = MaskedModel(clone_model(model))
    device = masked.masks[0].device
    batches = ClassifierBatches(
        images,
        labels,
        config.batch_size,
        device,
        shuffle=stream_generator(config.seed, "mask-shuffle"),
        augment=stream_generator(config.seed, "mask-augment") if config.augment else None,
    )

    def loss(net: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        x, y = batch
        return StepResult(config.alpha * F.cross_entropy(net(x), y), x.shape[0])

    def columns(net: nn.Module) -> dict[str, Any]:
        values = torch.cat([m.detach().flatten() for m in masked.masks])
        return {
            "clean_acc": evaluate(net, images, labels),
            "mask_mean": float(values.mean()),
            "masks_below_0.2": int((values <= 0.2).sum()),
        }

    callbacks: list[Callback] = [_Clamp(masked.masks), Columns(columns)]
    if progress is not None:
        callbacks.append(EpochProgress(progress))
    history = fit(
        masked,
        batches,
        loss,
        lambda params: torch.optim.SGD(params, lr=config.lr, momentum=config.momentum),
        FitConfig(epochs=config.epochs, seed=config.seed),
        params=ParamFilter.prefixes("masks."),
        callbacks=callbacks,
    )
    masked.remove()
    return MaskResult(masked.values(), [dict(r) for r in history.rows])


def prune(
    model: nn.Module, masks: dict[str, Tensor], threshold: float
) -> tuple[nn.Module, list[tuple[str, int]]]:
    """A copy of ``model`` with ``gamma_c = 0`` for every batch-norm channel whose mask is
    <= ``threshold`` (``beta`` kept); returns it and the pruned ``(layer, channel)`` pairs."""
    pruned = clone_model(model)
    layers = dict(require_batch_norm(pruned))
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise UsageError(f"masks name batch-norm layers the model lacks: {unknown[:5]}")
    chosen: list[tuple[str, int]] = []
    with torch.no_grad():
        for name, values in masks.items():
            channels = torch.nonzero(values <= threshold).flatten()
            if channels.numel():
                layers[name].weight[channels.to(layers[name].weight.device)] = 0.0
                chosen += [(name, int(c)) for c in channels]
    return pruned, chosen


@dataclass
class PruneChoice:
    """The chosen threshold, the pruned model, its channels, and the sweep rows
    ``{"threshold", "pruned", "defense_acc"}`` (plus columns a caller's ``extra`` adds)."""

    threshold: float
    model: nn.Module
    channels: list[tuple[str, int]]
    sweep: list[dict[str, Any]]
    reference_acc: float


def choose_pruning(
    model: nn.Module,
    masks: dict[str, Tensor],
    images: Tensor,
    labels: Tensor,
    config: PruneConfig | None = None,
    extra: Callable[[nn.Module], dict[str, Any]] | None = None,
) -> PruneChoice:
    """Sweep ``config.grid`` on the original ``model``, pick the threshold by ``config.rule``
    from defense-set accuracy only (``images``, ``labels``), and return the pruned model.
    ``extra(pruned) -> columns`` adds reporting columns to each sweep row (for example held-out
    accuracy and, in benchmarks, ASR); it never influences the choice."""
    config = config or PruneConfig()
    reference = evaluate(model, images, labels)
    sweep: list[dict[str, Any]] = []
    chosen_tau, exceeded = 0.0, False
    grid = sorted(set(config.grid) | ({config.threshold} if config.rule == "fixed" else set()))
    for tau in grid:
        pruned, channels = prune(model, masks, tau)
        acc = evaluate(pruned, images, labels)
        row = {"threshold": tau, "pruned": len(channels), "defense_acc": acc}
        if extra is not None:
            row.update(extra(pruned))
        sweep.append(row)
        if config.rule == "max-drop" and not exceeded:
            if reference - acc <= config.max_drop:
                chosen_tau = tau
            else:
                exceeded = True
    if config.rule == "fixed":
        chosen_tau = config.threshold
    final, channels = prune(model, masks, chosen_tau)
    if config.rule == "max-drop" and chosen_tau == 0.0 and channels:
        # channels whose mask fell to exactly 0: prune them only within the tolerance too
        if reference - evaluate(final, images, labels) > config.max_drop:
            final, channels = clone_model(model), []
    return PruneChoice(chosen_tau, final, channels, sweep, reference)


__all__ = [
    "DEFAULT_GRID",
    "MaskConfig",
    "MaskResult",
    "MaskedModel",
    "PruneChoice",
    "PruneConfig",
    "batch_norm_layers",
    "choose_pruning",
    "learn_masks",
    "prune",
    "require_batch_norm",
]
