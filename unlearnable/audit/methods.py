"""What the audit applies for each protection method: a small registry of *audit plans*.

The audit needs, for a key, one image transform per owner class: the mark the protection left
on that class's images, applied to clean probe images at the resolution the suspect model sees.
A method plugs in with a plan builder ``(manifest, probe_size) -> AuditPlan``::

    @AUDIT_METHODS.register("my-method")
    def my_plan(manifest: Manifest, probe_size: int) -> AuditPlan: ...

An :class:`AuditPlan` says which classes it marks (``classes``, the manifest's names), describes
itself as JSON (``describe()``), and gives the marks of any keys (``transforms(keys)``): a
callable ``images (B, C, H, W) float [0, 1] -> (G * K, B, C, H, W) float [0, 1]`` for ``G``
keys and ``K`` classes, one marked copy per key and class (key-major, classes in ``classes``
order). Owner and null keys go through the same plan, which is what makes the test's null
distribution valid.

Built in: ``cuda`` (the manifest's CUDA filters, see :func:`cuda_audit_plan`). Methods whose
marks are not derived from the key alone (``uc``: perturbations learned on a surrogate's
clusters) are refused with a clear reason, as are unknown methods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from ..io.manifest import Manifest
from ..keys import SecretKey
from ..registry import Registry

ClassTransforms = Callable[[Tensor], Tensor]
"""``images (B, C, H, W) float [0, 1] -> (G * K, B, C, H, W)``: the images marked with each of
``G`` keys' ``K`` class marks (key-major)."""


class AuditMethodError(UsageError):
    """The manifest's protection method cannot be audited (unsupported, unknown, bad params)."""


class AuditPlan(Protocol):
    """How the audit marks probe images for one protection (see the module docstring)."""

    method: str
    classes: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable parameters, for the report."""
        ...

    def transforms(self, keys: Sequence[SecretKey]) -> ClassTransforms:
        """The per-class marks of ``keys`` (owner or null keys), see :data:`ClassTransforms`."""
        ...


PlanBuilder = Callable[[Manifest, int], AuditPlan]

#: manifest method name -> plan builder ``(manifest, probe_size) -> AuditPlan``.
AUDIT_METHODS: Registry[PlanBuilder] = Registry("audit method")

#: Methods the audit knows and cannot test, with the reason shown to the user.
UNSUPPORTED_METHODS: dict[str, str] = {
    "uc": (
        "Unlearnable Clusters perturbations are optimised on a surrogate's clusters, not derived "
        "from the key alone, so no null distribution of 'other keys' exists for them"
    ),
}


def audit_plan(manifest: Manifest, probe_size: int) -> AuditPlan:
    """The registered plan for ``manifest.method`` at probes of ``probe_size`` pixels (short
    side); :class:`AuditMethodError` for an unsupported or unknown method."""
    method = str(manifest.method)
    supported = ", ".join(AUDIT_METHODS.names())
    if method.lower() in AUDIT_METHODS.names():
        return AUDIT_METHODS.get(method)(manifest, probe_size)
    reason = UNSUPPORTED_METHODS.get(method.lower())
    if reason is not None:
        raise AuditMethodError(
            f"the audit cannot test a manifest of method {method!r}: {reason}. "
            f"It supports: {supported}"
        )
    raise AuditMethodError(
        f"unknown protection method {method!r} in the manifest; the audit supports: {supported}"
    )


# --------------------------------------------------------------------------- CUDA


@dataclass(frozen=True)
class CudaAuditPlan:
    """CUDA filters ``(kernel_size, blur)`` upscaled by ``upscale`` for probes of one size.

    ``source`` says where the parameters came from (the manifest's per-file plans or the
    presets at the probe size).
    """

    classes: tuple[str, ...]
    kernel_size: int
    blur: float
    upscale: int
    source: str
    method: str = "cuda"

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kernel_size": self.kernel_size,
            "blur": self.blur,
            "upscale": self.upscale,
            "source": self.source,
        }

    def transforms(self, keys: Sequence[SecretKey]) -> ClassTransforms:
        from ..protect.cuda import cuda_filters, upscale_filters

        banks = [cuda_filters(key, list(self.classes), self.kernel_size, self.blur) for key in keys]
        bank = upscale_filters(torch.cat(banks), self.upscale)
        return lambda images: filter_all_classes(images, bank)


def filter_all_classes(images: Tensor, bank: Tensor) -> Tensor:
    """Every image filtered with every filter of ``bank``, as the CUDA protection does it.

    ``images``: ``(B, C, H, W)`` float in [0, 1]; ``bank``: ``(K, kh, kw)`` non-negative filters.
    Returns ``(K, B, C, H, W)`` float32 in [0, 1]: depthwise zero-padded "same"
    cross-correlation, divided by each image's maximum (an all-black image stays black), then
    rounded to the 256 levels the protected files were stored with. Equal (up to float rounding)
    to :func:`unlearnable.protect.cuda.apply_cuda` with each filter in turn, in one convolution.
    """
    b, c, h, w = images.shape
    k, kh, kw = bank.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    planes = images.float().reshape(b * c, 1, h, w)
    padded = F.pad(planes, (left, kw - 1 - left, top, kh - 1 - top))
    weight = bank.to(device=planes.device, dtype=planes.dtype).reshape(k, 1, kh, kw)
    out = F.conv2d(padded, weight)  # (B*C, K, H, W)
    out = out.reshape(b, c, k, h, w).permute(2, 0, 1, 3, 4)  # (K, B, C, H, W)
    peak = out.amax(dim=(2, 3, 4), keepdim=True)
    out = torch.where(peak > 1e-12, out / peak.clamp_min(1e-12), out).clamp_(0.0, 1.0)
    return out.mul_(255.0).round_().div_(255.0)


@AUDIT_METHODS.register("cuda")
def cuda_audit_plan(manifest: Manifest, probe_size: int) -> CudaAuditPlan:
    """The CUDA filters the protection used, at the probe size.

    The protection chose ``(kernel size k, blur p_b, upscale d)`` per image from its size
    (:func:`unlearnable.protect.cuda.cuda_params`) and recorded it in each file's manifest
    record. A scraper resizes the protected images to the model's input size, which rescales
    the filter: a file of short side ``s`` filtered with a ``k*d`` filter looks, at ``S`` px,
    like the ``k`` filter upscaled by ``max(1, round(d * S / s))``. The audit uses the most
    common such plan among the manifest's files (the dominant image size). A manifest without
    per-file plans falls back to the presets for an ``S x S`` image.
    """
    from ..protect.cuda import FILTER_VERSION, cuda_params

    params = manifest.parameters or {}
    version = params.get("filter_version", FILTER_VERSION)
    if version != FILTER_VERSION:
        raise AuditMethodError(
            f"the manifest's CUDA filters are version {version}; this tool derives version "
            f"{FILTER_VERSION}"
        )
    if not manifest.classes:
        raise AuditMethodError("the manifest lists no classes, so there are no filters to test")
    counts: Counter[tuple[int, float, int]] = Counter()
    recorded = 0
    for record in manifest.files:
        if record.status != "ok" or not record.params:
            continue
        try:
            k = int(record.params["kernel_size"])
            blur = float(record.params["blur"])
            upscale = int(record.params.get("upscale", 1))
        except (KeyError, TypeError, ValueError):
            continue
        recorded += 1
        short = min(record.width or 0, record.height or 0)
        effective = upscale if short <= 0 else max(1, round(upscale * probe_size / short))
        counts[(k, blur, effective)] += 1
    if counts:
        (k, blur, upscale), n = min(counts.items(), key=lambda item: (-item[1], item[0]))
        source = (
            f"the plan of {n} of {recorded} protected files (kernel {k}, blur {blur}, upscale "
            f"{upscale} at {probe_size} px)"
        )
    else:
        try:
            chosen = cuda_params(
                probe_size,
                probe_size,
                params.get("strength") or "mid",
                params.get("kernel_size"),
                params.get("blur"),
            )
        except ValueError as exc:
            raise AuditMethodError(f"the manifest's CUDA parameters are invalid: {exc}") from None
        k, blur, upscale = chosen.kernel_size, chosen.blur, chosen.upscale
        source = f"the presets for {probe_size} px images (the manifest records no per-file plan)"
    return CudaAuditPlan(tuple(manifest.classes), k, blur, upscale, source)


from . import photo_plan as _photo_plan  # noqa: E402,F401  (registers the "photo" plan)

__all__ = [
    "AUDIT_METHODS",
    "UNSUPPORTED_METHODS",
    "AuditMethodError",
    "AuditPlan",
    "ClassTransforms",
    "CudaAuditPlan",
    "PlanBuilder",
    "audit_plan",
    "cuda_audit_plan",
    "filter_all_classes",
]
