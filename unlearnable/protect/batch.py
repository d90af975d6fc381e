"""``protect_batch``: protect a batch of images inside someone else's pipeline.

For a publisher who already has a ``datasets.map`` or a Ray Data pipeline: give encoded images
(bytes of JPEG, PNG, WebP, ...) or uint8 arrays with their labels, get the protected images
back. It runs exactly the per-record code of ``unlearnable protect``
(:func:`unlearnable.io.work.process_chunk`), so an image protected here equals, byte for byte,
the same file protected by the command line with the same key, method and output options::

    import unlearnable as ul

    key = ul.load_key_file("secret.bin")
    def protect(batch):                         # datasets.map(protect, batched=True)
        result = ul.protect_batch(batch["image_bytes"], batch["label"], key, "cuda")
        batch["image_bytes"] = result.images    # None where a record failed (result.records)
        return batch
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.manifest import FileRecord
from ..io.work import DEFAULT_OUTPUT, OutputOptions, Task, WorkContext, process_chunk
from ..keys import SecretKey
from .methods import DEFAULT_METHOD, MethodContext, RunOptions, resolve_method


@dataclass
class BatchResult:
    """``images``: the protected images in the input's order and kind (bytes, or uint8 arrays of
    the input's shape), None where a record failed; ``records``: one manifest record each
    (``path`` is the record's name: ``names`` or its index), with the reason of a failure."""

    images: list[bytes | np.ndarray | None]
    records: list[FileRecord]

    @property
    def failed(self) -> list[FileRecord]:
        return [r for r in self.records if r.status != "ok"]


def protect_batch(
    images: Sequence[bytes | np.ndarray],
    labels: Sequence[Any] | None,
    key: SecretKey,
    method: Any = DEFAULT_METHOD,
    *,
    options: OutputOptions = DEFAULT_OUTPUT,
    names: Sequence[str] | None = None,
) -> BatchResult:
    """Protect ``images`` (encoded bytes, or uint8 arrays ``(H, W)``, ``(H, W, 1)``,
    ``(H, W, 3)`` or ``(H, W, 4)``; arrays are protected as lossless PNG files would be) with
    ``labels`` (label names; anything else is made a name with ``str``, as the Parquet and
    WebDataset readers do; None: one label for all).

    ``method``: a method name or config whose classes come from labels (default: the tool's
    default method; with ``photo`` and ``cuda`` the change of a label depends only on the key
    and the label's name, so batches may hold any subset of
    the classes), or a ready :class:`~unlearnable.io.work.Protector` (e.g. ``FolderClusters
    .protector()`` from :func:`~unlearnable.protect.uc_pipeline.cluster_folder`), whose
    ``labels`` are then class ids (ints). ``options``: the output format as for the CLI.
    Returns a :class:`BatchResult`; a record that cannot be decoded is a failed record, not an
    exception. ``UsageError`` for a method that needs a folder (``uc``, ``cluster-cuda``: build
    their protector once and pass it).
    """
    count = len(images)
    if labels is not None and len(labels) != count:
        raise ValueError(f"{count} images but {len(labels)} labels")
    ids = list(names) if names is not None else [f"{i:09d}" for i in range(count)]
    if len(ids) != count or len(set(ids)) != count:
        raise ValueError("names must be unique, one per image")
    is_array = [isinstance(image, np.ndarray) for image in images]
    payloads = {
        name: _png(image) if array else bytes(image)  # type: ignore[arg-type]
        for name, image, array in zip(ids, images, is_array, strict=True)
    }
    protector, class_index, label_names = _protector(method, labels, ids, key)
    tasks = [
        Task(name, class_index[label], label_names[label])
        for name, label in zip(ids, labels if labels is not None else [None] * count, strict=True)
    ]
    context = WorkContext(Path("."), Path("."), protector, options, payloads=payloads, outputs={})
    result = process_chunk(context, tasks)
    by_name = {record.path: record for record in result.records}
    records = [by_name[name] for name in ids]
    outputs: list[bytes | np.ndarray | None] = []
    for record, array, image in zip(records, is_array, images, strict=True):
        if record.status != "ok":
            outputs.append(None)
            continue
        data = context.outputs[record.output_path]  # type: ignore[index]
        outputs.append(_pixels(data, image.shape) if array else data)  # type: ignore[union-attr]
    return BatchResult(outputs, records)


def _protector(method: Any, labels, ids: list[str], key: SecretKey):
    """(protector, label -> class id, label -> label name) for a method or a Protector."""
    keys = labels if labels is not None else [None] * len(ids)
    if hasattr(method, "apply") and hasattr(method, "plan"):
        ids_of = {label: 0 if label is None else int(label) for label in keys}
        return method, ids_of, {label: str(ids_of[label]) for label in keys}
    from ..datasets import SINGLE_LABEL, LabelAssignment

    entry, config = resolve_method(method)
    names = {label: SINGLE_LABEL if labels is None else str(label) for label in keys}

    def assign(source: str) -> LabelAssignment:
        from ..io.formats.run import refuse_folder_labels

        refuse_folder_labels(source)
        if source == "single":
            return LabelAssignment("single", {name: SINGLE_LABEL for name in ids})
        return LabelAssignment(
            "batch", {name: names[label] for name, label in zip(ids, keys, strict=True)}
        )

    if entry.uses_surrogate:
        from ..errors import UsageError

        raise UsageError(
            f"protect_batch: method {entry.name!r} clusters a whole folder with a surrogate; "
            "cluster once (unlearnable.cluster_folder) and pass its protector() as method"
        )
    context = MethodContext(Path("."), Path("."), list(ids), key, RunOptions(), labeller=assign)
    job = entry.prepare(config, context)
    index = {name: i for i, name in enumerate(job.classes)}
    single = job.label_mode == "single"
    return (
        job.protector,
        {label: index[SINGLE_LABEL if single else names[label]] for label in keys},
        {label: SINGLE_LABEL if single else names[label] for label in keys},
    )


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"array images must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    array = np.asarray(Image.open(io.BytesIO(data)))
    return array.reshape(shape)
