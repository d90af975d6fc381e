"""Task adapters: what FreezeAsGuard needs to know about a task, and image classification.

Mask learning and enforced fine-tuning are task-agnostic; a :class:`TaskAdapter` supplies the
rest. To add a task, subclass it, implement the four abstract methods, and register the class
in :data:`TASKS` (the CLI's ``--task`` lists the registry)::

    @TASKS.register("segmentation")
    class SegmentationAdapter(TaskAdapter):
        name = "segmentation"
        def loss(self, model, batch): ...          # scalar mean loss of one batch
        def batches(self, data, batch_size, device, generator): ...  # re-iterable, with len()
        def size(self, data): ...                   # items in a data set
        def evaluate(self, model, data, device): ...  # {"loss": ..., ...}

Optional overrides: :meth:`~TaskAdapter.maskable` (the module whose tensors a mask names),
:meth:`~TaskAdapter.default_exclude` (tensors never masked, e.g. the head), and for the CLI
:meth:`~TaskAdapter.claims`, :meth:`~TaskAdapter.open`, :meth:`~TaskAdapter.load_data` and
:meth:`~TaskAdapter.save`.

A data set is whatever the adapter understands (:class:`ClassificationData` here). Batches are
any structure :func:`~unlearnable.training.fit` can move to a device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, UsageError
from ..registry import Registry
from ..training.modes import kept_modes


class TaskAdapter(ABC):
    """The task side of FreezeAsGuard (see the module docstring)."""

    name: str = "task"

    # ------------------------------------------------------------------ required

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The mean loss (scalar float32 tensor with a gradient) of ``model`` on ``batch``."""

    @abstractmethod
    def batches(
        self, data: Any, batch_size: int, device: torch.device, generator: torch.Generator
    ) -> Iterable[Any]:
        """Shuffled mini-batches of ``data``: an iterable with ``len()`` that draws a new
        shuffle from ``generator`` every time it is iterated (one pass = one epoch)."""

    @abstractmethod
    def size(self, data: Any) -> int:
        """Items in ``data``."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Any, device: torch.device) -> dict[str, float]:
        """Metrics of ``model`` on ``data`` (at least ``"loss"``); the model's mode is kept."""

    # ------------------------------------------------------------------ optional

    def maskable(self, model: nn.Module) -> nn.Module:
        """The module whose ``named_parameters()`` a mask names (default: ``model`` itself,
        or the network inside a :class:`~unlearnable.checkpoints.LoadedModel`)."""
        from ..checkpoints import LoadedModel

        return model.module if isinstance(model, LoadedModel) else model

    def default_exclude(self, root: nn.Module) -> tuple[str, ...]:
        """Names of tensors of ``root`` that are never masked unless the caller says otherwise."""
        return ()

    @classmethod
    def claims(cls, path: Path) -> bool:
        """Whether the model at ``path`` is one of this task's (``--task auto``)."""
        return False

    @classmethod
    def open(cls, path: Path, model_file: Any, device: str) -> tuple[nn.Module, TaskAdapter]:
        """Load a model for this task from ``path`` (CLI); ``model_file`` holds the CLI's
        model-file options."""
        raise UsageError(f"the {cls.name} task cannot load models from files")

    def load_data(self, model: nn.Module, folder: Path, limit: int | None = None) -> Any:
        """Read a data folder for ``model`` (CLI); at most ``limit`` items."""
        raise UsageError(f"the {self.name} task cannot read data folders")

    def save(self, model: nn.Module, folder: Path, note: Mapping[str, Any]) -> Path:
        """Write the (fine-tuned) ``model`` into ``folder`` (CLI); returns what was written."""
        raise UsageError(f"the {self.name} task cannot save models")

    def check_savable(self, model: nn.Module) -> None:
        """Raise :class:`UsageError` now, before any training, when :meth:`save` could not
        write ``model`` (default: no check)."""
        return None


TASKS: Registry[type[TaskAdapter]] = Registry("freeze task")


def detect_task(path: Path) -> str:
    """The registered task whose :meth:`TaskAdapter.claims` accepts ``path`` (the first in name
    order), else ``"classification"``."""
    for name in TASKS.names():
        if name != "classification" and TASKS.get(name).claims(path):
            return name
    return "classification"


# ------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class ClassificationData:
    """Labelled images: ``images`` ``(N, C, H, W)`` uint8 (or float in [0, 1]), ``labels``
    int64 ``(N,)`` indices into the model's outputs; ``skipped``: relative path -> why, for
    files of the folder that could not be read and were left out."""

    images: Tensor
    labels: Tensor
    skipped: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise UsageError("images must be (N, C, H, W) and labels (N,)")
        if self.images.shape[0] != self.labels.shape[0]:
            raise UsageError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.images.shape[0] < 2:
            raise InputError("a data set needs at least 2 images")

    def subset(self, index: Tensor) -> ClassificationData:
        return ClassificationData(self.images[index], self.labels[index], self.skipped)


@TASKS.register("classification")
class ClassificationAdapter(TaskAdapter):
    """Image classification with cross-entropy.

    ``augment``: random crop + flip on training batches. ``readout``: class indices the loss
    and accuracy are restricted to (e.g. the 4 new classes a user adds), or ``None`` for all
    outputs.
    """

    name = "classification"

    def __init__(self, augment: bool = True, readout: Sequence[int] | None = None) -> None:
        self.augment = augment
        self.readout = None if readout is None else torch.tensor(list(readout))

    def _restricted(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.readout is None:
            return logits, labels
        readout = self.readout.to(logits.device)
        lookup = torch.full((logits.shape[1],), -1, dtype=torch.long, device=logits.device)
        lookup[readout] = torch.arange(readout.numel(), device=logits.device)
        mapped = lookup[labels]
        if bool((mapped < 0).any()):
            raise InputError("a label is outside the adapter's readout classes")
        return logits[:, readout], mapped

    def loss(self, model: nn.Module, batch: Any) -> Tensor:  # noqa: D102
        images, labels = batch
        logits, labels = self._restricted(model(_as_model_dtype(images, model)), labels)
        return F.cross_entropy(logits.float(), labels)

    def batches(self, data, batch_size, device, generator):  # noqa: D102
        from ..training.classification import ClassifierBatches

        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        augment = torch.Generator().manual_seed(seed) if self.augment else None
        return ClassifierBatches(
            data.images, data.labels, min(batch_size, data.images.shape[0]), device,
            generator, augment,
        )  # fmt: skip

    def size(self, data: ClassificationData) -> int:  # noqa: D102
        return int(data.images.shape[0])

    @torch.no_grad()
    def evaluate(self, model, data, device, batch_size: int = 256):  # noqa: D102
        from ..training.classification import to_float_images

        total, correct, n = 0.0, 0, int(data.images.shape[0])
        with kept_modes(model):
            model.eval()
            for start in range(0, n, batch_size):
                x = to_float_images(data.images[start : start + batch_size].to(device))
                y = data.labels[start : start + batch_size].to(device)
                logits, y = self._restricted(model(_as_model_dtype(x, model)), y)
                total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
        return {"loss": total / max(n, 1), "acc": correct / max(n, 1)}

    def default_exclude(self, root: nn.Module) -> tuple[str, ...]:
        """The parameters of the last ``nn.Linear`` (the head: a user can always attach a
        fresh one, so masking it would protect nothing)."""
        last = None
        for name, module in root.named_modules():
            if isinstance(module, nn.Linear):
                last = name
        if last is None:
            return ()
        prefix = f"{last}." if last else ""
        return tuple(n for n, _ in root.named_parameters() if n.startswith(prefix))

    @classmethod
    def open(cls, path, model_file, device):  # noqa: D102
        """:func:`~unlearnable.checkpoints.load_model` with ``model_file``'s fields (``arch``,
        ``input_size``, ``mean``, ``std``, ``classes``, ``in_channels``, ``trust_pickle``)."""
        from ..checkpoints import load_model
        from ..verify_run import resolve_device

        fields = ("arch", "input_size", "mean", "std", "classes", "in_channels", "trust_pickle")
        options = {f: getattr(model_file, f) for f in fields if model_file is not None}
        return load_model(path, device=resolve_device(device), **options), cls()

    def load_data(self, model, folder, limit=None):  # noqa: D102
        spec = getattr(model, "spec", None)
        if spec is None:
            raise UsageError("reading a folder needs a model loaded with load_model (its classes)")
        return load_classification_folder(folder, spec.classes, spec.input_size, limit)

    def check_savable(self, model: nn.Module) -> None:
        """``UsageError`` (before any training) unless :meth:`save` can write ``model``: our
        format (or a state dict of a registered architecture) or a TorchScript archive."""
        from ..checkpoints import LoadedModel

        if isinstance(model, LoadedModel) and (
            model.spec.arch is not None or isinstance(model.module, torch.jit.ScriptModule)
        ):
            return
        raise UsageError(
            "this model cannot be saved after fine-tuning: only unlearnable's own format "
            "(model.json + safetensors), a state dict with --arch, or a TorchScript archive; a "
            "torch.export archive cannot be re-exported (export its state dict and use --arch)"
        )

    def save(self, model, folder, note):  # noqa: D102
        from ..checkpoints import LoadedModel, ModelSpec, save_model

        self.check_savable(model)
        assert isinstance(model, LoadedModel)
        if model.spec.arch is None:  # a TorchScript archive: written back as one
            return _save_script(model.module, Path(folder) / "model.pt")
        spec = model.spec
        spec = ModelSpec(
            classes=spec.classes, input_size=spec.input_size, arch=spec.arch,
            in_channels=spec.in_channels, mean=spec.mean, std=spec.std,
            normalized_by_model=spec.normalized_by_model,
            metadata={**dict(spec.metadata), "freeze_finetune": dict(note)},
        )  # fmt: skip
        return save_model(model.module, folder, spec)


def _as_model_dtype(images: Tensor, model: nn.Module) -> Tensor:
    """Float ``images`` in the precision of ``model``'s first floating parameter (a float64
    model gets float64 inputs); unchanged when they already match or the model has none."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), images.dtype)
    return images if images.dtype == dtype else images.to(dtype)


def _save_script(module: torch.jit.ScriptModule, path: Path) -> Path:
    """Write a TorchScript module atomically to ``path`` (``torch.jit.save``); returns it."""
    import io
    import warnings

    from ..io.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        torch.jit.save(module, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_classification_folder(
    folder: str | Path,
    classes: Sequence[str],
    image_size: int,
    limit: int | None = None,
) -> ClassificationData:
    """Images in class subfolders (``folder/<class>/*.jpg``) as :class:`ClassificationData`:
    square RGB uint8 ``(N, 3, image_size, image_size)``, labels = the index of the subfolder's
    name in ``classes`` (the model's output order). ``limit``: at most that many images per
    class (the first in sorted order). Unreadable files are left out and listed in
    :attr:`ClassificationData.skipped`. ``InputError`` for an empty folder, files outside class
    subfolders, a class the model does not have, or fewer than 2 readable images."""
    from ..datasets import assign_labels
    from ..imageops import square_rgb, to_uint8
    from ..io.discover import discover_images
    from ..io.images import ImageDecodeError, decode_image
    from .ebyd_data import near_miss_hint, printable

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    found = discover_images(root)
    files = found.files
    if not files:
        raise InputError(f"no images found in {root}")
    assignment = assign_labels(root, files, "folders")
    if assignment.problems:
        first, message = next(iter(assignment.problems.items()))
        raise InputError(
            f"{root}: {len(assignment.problems)} images have no usable class folder, e.g. "
            f"{first}: {message}"
        )
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(assignment.labels.values()) - set(index))
    if unknown:
        raise InputError(
            f"{root}: class folder(s) {', '.join(unknown[:5])} are not classes of the model "
            f"({', '.join(list(classes)[:10])})" + near_miss_hint(unknown, classes)
        )
    chosen: list[str] = []
    per_class: dict[str, int] = {}
    for rel in sorted(assignment.labels):
        label = assignment.labels[rel]
        if limit is not None and per_class.get(label, 0) >= limit:
            continue
        per_class[label] = per_class.get(label, 0) + 1
        chosen.append(rel)
    images = torch.empty((len(chosen), 3, image_size, image_size), dtype=torch.uint8)
    kept: list[str] = []
    skipped = {printable(rel): why for rel, why in found.problems.items()}
    for rel in chosen:
        try:
            decoded = decode_image((root / rel).read_bytes())
        except (OSError, ImageDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            skipped[printable(rel)] = why
            continue
        images[len(kept)] = to_uint8(square_rgb(decoded.pixels, image_size))
        kept.append(rel)
    if len(kept) < 2:
        raise InputError(
            f"{root}: {len(kept)} readable image(s); {len(skipped)} could not be read"
            + ("" if not skipped else f", e.g. {next(iter(skipped.items()))}")
        )
    labels = torch.tensor([index[assignment.labels[rel]] for rel in kept], dtype=torch.long)
    return ClassificationData(images[: len(kept)].clone(), labels, skipped)


def _register_optional() -> None:
    """Register the diffusion task (its module imports diffusers only when used)."""
    from . import freeze_diffusion  # noqa: F401


_register_optional()

__all__ = [
    "TASKS",
    "ClassificationAdapter",
    "ClassificationData",
    "TaskAdapter",
    "detect_task",
    "load_classification_folder",
]
