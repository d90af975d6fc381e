"""DAT: deconvolution-based adversarial training, the CUDA paper's adaptive attack.

Sadasivan, Soltanolkotabi & Feizi, "CUDA: Convolution-based Unlearnable Datasets", CVPR 2023,
section 5.2 (released as ``final_muladv.py``; see ``../shared/research/methods-protect.md`` A.3.3).
The scraper tries to *learn* per-class de-blurring filters adversarially, for every mini-batch:

1. the classifier is held fixed (no gradient reaches its parameters);
2. fresh per-class filters ``g_c``: a transposed convolution 1 -> 1 channel, ``k_d x k_d`` kernel
   (7 by default), stride 1, padding ``(k_d - 1) / 2`` (same size), with bias, PyTorch's default
   init ``U(-1/k_d, 1/k_d)``; each filter acts on every colour channel of its class's images
   separately;
3. ``steps`` times: clamp every filter weight and bias to ``[-bound, bound]`` (5), then take a
   raw-gradient *ascent* step ``theta_c += eta * grad`` (``eta = 0.1``, no sign, no
   normalisation) on the mean cross-entropy of the classifier on ``g_c(x_c)`` with labels ``c``;
4. apply the final filters (not re-clamped after the last step, as in the paper's code), min-max
   normalise each image over all its channels and pixels, and train the classifier with
   cross-entropy on the result.

Choices and deviations from the paper's code:

* **BN mode of the inner maximisation.** The paper runs it in train mode, so BatchNorm uses the
  statistics of the deconvolved batches and its running statistics are updated by them (dossier
  A.6 item 8 calls this a quirk). By default we run the inner steps in **eval mode** (as PGD
  adversarial training does with torchattacks): the filters are optimised against the model the
  test set will see and BN running statistics are only ever updated by the training step.
  ``inner_mode="train"`` reproduces the paper's behaviour (running stats then get polluted).
* **One batched step for all classes.** The paper loops over the classes present and steps each
  filter from its own class loss. We compute ``sum_c mean_{i in c} CE_i`` in one forward pass:
  since each filter only touches its own class, its gradient is exactly that class's loss
  gradient (in eval mode the result is identical; in train mode BN statistics are over the
  whole batch instead of one class).
* **Steps.** Default 5 (the paper used 10): the cost is about ``steps + 1`` forward/backward
  passes per batch, and 5 matches the default PGD steps of the ``at-*`` attacks so CPU budgets
  stay comparable. Pass ``steps=10`` to reproduce the paper's setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import PolicyAttack, rand_uniform
from .base import ATTACKS, Attack

__all__ = [
    "DATPolicy",
    "dat_batch",
    "dat_objective",
    "deconvolve_per_class",
    "init_filters",
    "learn_filters",
    "minmax_normalise",
]

PAPER = (
    "Sadasivan et al., CUDA: Convolution-based Unlearnable Datasets, CVPR 2023, section 5.2 (DAT)"
)


def deconvolve_per_class(images: Tensor, labels: Tensor, weights: Tensor, biases: Tensor) -> Tensor:
    """Apply class ``labels[n]``'s transposed-conv filter to every channel of image ``n``.

    images: ``(N, C, H, W)`` float; labels: ``(N,)`` int64; weights: ``(K, k, k)`` (odd ``k``);
    biases: ``(K,)``. Returns ``(N, C, H, W)`` (stride 1, padding ``(k - 1) / 2``), not clamped.
    Differentiable in ``weights`` and ``biases``.
    """
    n, c, h, w = images.shape
    k = weights.shape[-1]
    if k % 2 != 1:
        raise ValueError(f"DAT kernel size must be odd, got {k}")
    w_img = weights[labels].repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, k, k)
    b_img = biases[labels].repeat_interleave(c, dim=0)  # (N*C,)
    out = F.conv_transpose2d(
        images.reshape(1, n * c, h, w),
        w_img.to(images.dtype),
        b_img.to(images.dtype),
        padding=(k - 1) // 2,
        groups=n * c,
    )
    return out.reshape(n, c, h, w)


def minmax_normalise(images: Tensor, eps: float = 1e-12) -> Tensor:
    """``(x - min) / (max - min)`` per image over all channels and pixels; ``(N, C, H, W)`` ->
    same, in [0, 1] (a constant image maps to 0)."""
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - lo) / (hi - lo).clamp_min(eps)).clamp(0.0, 1.0)


def dat_objective(
    model: nn.Module, images: Tensor, labels: Tensor, weights: Tensor, biases: Tensor
) -> Tensor:
    """The DAT inner objective: ``sum_c mean_{i in class c} CE(model(g_c(x_i)), c)`` (a scalar).

    Equals the sum of the per-class losses the paper maximises one class at a time; each filter
    only touches its own class, so its gradient is that class's loss gradient.
    """
    counts = torch.bincount(labels, minlength=weights.shape[0]).clamp_min(1).to(images.dtype)
    per_sample = F.cross_entropy(
        model(deconvolve_per_class(images, labels, weights, biases)), labels, reduction="none"
    )
    return (per_sample / counts[labels]).sum()


def init_filters(
    num_classes: int, kernel_size: int, generator: torch.Generator, device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """Fresh per-class filters ``(weights (K, k, k), biases (K,))`` with PyTorch's default
    ``ConvTranspose2d(1, 1, k)`` init, ``U(-1/k, 1/k)`` (``1 / sqrt(fan_in)``, ``fan_in = k * k``),
    drawn from ``generator``."""
    k = int(kernel_size)
    weights = (2.0 * rand_uniform((num_classes, k, k), generator, device) - 1.0) / k
    biases = (2.0 * rand_uniform((num_classes,), generator, device) - 1.0) / k
    return weights, biases


def learn_filters(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    generator: torch.Generator,
    kernel_size: int = 7,
    steps: int = 5,
    step_size: float = 0.1,
    bound: float = 5.0,
    inner_mode: str = "eval",
) -> tuple[Tensor, Tensor]:
    """The DAT inner maximisation; returns the final detached ``(weights, biases)``.

    ``steps`` times: clamp weights and biases to ``[-bound, bound]``, then ascend
    :func:`dat_objective` by ``step_size`` times the raw gradient. The last step is not followed
    by a clamp (as in the paper's code). The model's parameters receive no gradient; its
    train/eval mode is set to ``inner_mode`` during the steps and restored on return.
    """
    if inner_mode not in ("eval", "train"):
        raise ValueError(f"inner_mode must be 'eval' or 'train', got {inner_mode!r}")
    weights, biases = init_filters(num_classes, kernel_size, generator, images.device)
    weights.requires_grad_()
    biases.requires_grad_()
    was_training = model.training
    model.train(inner_mode == "train")
    try:
        with torch.enable_grad():
            for _ in range(int(steps)):
                with torch.no_grad():
                    weights.clamp_(-bound, bound)
                    biases.clamp_(-bound, bound)
                loss = dat_objective(model, images, labels, weights, biases)
                grad_w, grad_b = torch.autograd.grad(loss, [weights, biases])
                with torch.no_grad():
                    weights.add_(step_size * grad_w)
                    biases.add_(step_size * grad_b)
    finally:
        model.train(was_training)
    return weights.detach(), biases.detach()


def dat_batch(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    generator: torch.Generator,
    kernel_size: int = 7,
    steps: int = 5,
    step_size: float = 0.1,
    bound: float = 5.0,
    inner_mode: str = "eval",
) -> Tensor:
    """The DAT-deconvolved batch: ``(N, C, H, W)`` float in [0, 1], detached.

    images: ``(N, C, H, W)`` float in [0, 1]; labels ``(N,)`` int64 in ``[0, num_classes)``.
    :func:`learn_filters` (filters initialised from ``generator``), then the final filters are
    applied and each image is min-max normalised (:func:`minmax_normalise`). ``images`` and the
    model's parameters and mode are left as they were (with ``inner_mode="train"`` BatchNorm
    running statistics are updated, as in the paper).
    """
    weights, biases = learn_filters(
        model, images, labels, num_classes, generator,
        kernel_size, steps, step_size, bound, inner_mode,
    )  # fmt: skip
    with torch.no_grad():
        return minmax_normalise(deconvolve_per_class(images, labels, weights, biases))


class DATPolicy:
    """A :class:`~unlearnable.attacks.base.TrainingPolicy`: cross-entropy on the DAT batch."""

    def __init__(
        self,
        kernel_size: int = 7,
        steps: int = 5,
        step_size: float = 0.1,
        bound: float = 5.0,
        inner_mode: str = "eval",
    ) -> None:
        self.kernel_size = kernel_size
        self.steps = steps
        self.step_size = step_size
        self.bound = bound
        self.inner_mode = inner_mode

    def loss(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Mean cross-entropy of ``model`` (in its own mode) on :func:`dat_batch`; a scalar."""
        adv = dat_batch(
            model, images, labels, num_classes, generator,
            self.kernel_size, self.steps, self.step_size, self.bound, self.inner_mode,
        )  # fmt: skip
        return F.cross_entropy(model(adv), labels)


@ATTACKS.register("dat")
def _dat(
    kernel_size: int = 7,
    steps: int = 5,
    step_size: float = 0.1,
    bound: float = 5.0,
    inner_mode: str = "eval",
) -> Attack:
    kernel_size, steps = int(kernel_size), int(steps)
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if inner_mode not in ("eval", "train"):
        raise ValueError(f"inner_mode must be 'eval' or 'train', got {inner_mode!r}")
    params = {
        "kernel_size": kernel_size,
        "steps": steps,
        "step_size": float(step_size),
        "bound": float(bound),
        "inner_mode": inner_mode,
    }
    return PolicyAttack(
        "dat",
        f"deconvolution-based adversarial training: per-class {kernel_size}x{kernel_size} "
        f"transposed-conv filters maximise the loss ({steps} ascent steps) every batch",
        PAPER,
        params,
        lambda: DATPolicy(**params),
    )
