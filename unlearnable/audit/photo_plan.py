"""The audit plan of the ``photo`` method (:mod:`unlearnable.protect.photo`).

A class's mark is the whole stack the protection applied (CUDA at the scraper scale plus the
colour transform), rebuilt from the manifest's parameters for any key. Probes smaller than the
stack's reference size are first resized up to it, marked, and resized back, which is what a
scraper that downsizes protected photos to the probe size saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.manifest import Manifest
from ..keys import SecretKey
from .methods import AUDIT_METHODS, AuditMethodError, ClassTransforms


@dataclass(frozen=True)
class PhotoAuditPlan:
    """The ``photo`` stack of a manifest: classes, strength and :class:`PhotoParams` fields."""

    classes: tuple[str, ...]
    strength: str
    params: dict[str, Any]
    method: str = "photo"
    stack_version: int = 1

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "strength": self.strength, **self.params}

    def transforms(self, keys: Sequence[SecretKey]) -> ClassTransforms:
        from ..protect.photo import PhotoParams, PhotoProtector

        params = PhotoParams(**{**self.params, "plaid_cycles": tuple(self.params["plaid_cycles"])})
        protectors = [
            PhotoProtector(key, list(self.classes), self.strength, params, self.stack_version)
            for key in keys
        ]

        def mark(images: Tensor) -> Tensor:
            b, c, h, w = images.shape
            short = min(h, w)
            scale = params.reference / short if short < params.reference else 1.0
            work = images.float()
            if scale > 1.0:
                size = (round(h * scale), round(w * scale))
                work = F.interpolate(work, size=size, mode="bilinear", align_corners=False)
            out = []
            for protector in protectors:
                plan = protector.plan(*work.shape[-2:])
                for label in range(len(self.classes)):
                    labels = torch.full((b,), label, dtype=torch.int64)
                    marked = protector.apply(work, labels, plan)
                    if scale > 1.0:
                        marked = F.interpolate(
                            marked,
                            size=(h, w),
                            mode="bilinear",
                            align_corners=False,
                            antialias=True,
                        )
                    out.append(marked.clamp(0.0, 1.0).mul(255.0).round().div(255.0))
            return torch.stack(out)

        return mark


@AUDIT_METHODS.register("photo")
def photo_audit_plan(manifest: Manifest, probe_size: int) -> PhotoAuditPlan:
    """The manifest's ``photo`` stack (every stack version of :data:`STACK_VERSIONS`)."""
    from ..protect.photo_method import STACK_VERSIONS

    params = dict(manifest.parameters or {})
    version = params.get("stack_version")
    if version not in STACK_VERSIONS:
        raise AuditMethodError(
            f"the manifest's photo stack is version {version}; this tool derives versions "
            f"{', '.join(map(str, STACK_VERSIONS))}"
        )
    if not manifest.classes:
        raise AuditMethodError("the manifest lists no classes, so there are no marks to test")
    names = ("reference", "kernel_size", "blur", "colour", "plaid_eps", "plaid_cycles")
    try:
        fields = {name: params[name] for name in names}
    except KeyError as exc:
        raise AuditMethodError(f"the manifest's photo parameters lack {exc}") from None
    strength = str(params.get("strength") or "mid")
    return PhotoAuditPlan(tuple(manifest.classes), strength, fields, stack_version=version)
