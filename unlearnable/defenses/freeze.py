"""FreezeAsGuard (Huang, Wang, Gao; MobiCom 2025): publish a model with the tensors that illegal
fine-tuning needs frozen, and fine-tune only under that mask.

The pieces live in small modules; this one is the public face::

    from unlearnable.defenses.freeze import (
        ClassificationData, FreezeConfig, FinetuneConfig, finetune, learn_freeze_mask,
        load_mask, save_mask,
    )

    result = learn_freeze_mask(model, illegal, legal, config=FreezeConfig(ratio=0.2))
    save_mask(result.mask, "release/mask.json")           # publish with the model
    ...
    mask = load_mask("release/mask.json")                 # the fine-tuning service
    finetune(user_model, mask, user_data, config=FinetuneConfig(epochs=5, lr=1e-3))

* :mod:`.freeze_learn`: :func:`learn_freeze_mask`, :class:`FreezeConfig`,
  :class:`FreezeResult` (the algorithm);
* :mod:`.freeze_enforce`: :func:`finetune`, :class:`FinetuneConfig`, :class:`FinetuneResult`;
* :mod:`.freeze_mask`: :class:`FreezeMask`, :func:`load_mask`, :func:`save_mask`,
  :class:`MaskFileError` (the versioned mask file);
* :mod:`.freeze_adapters`: :class:`TaskAdapter` (how to add a task), :data:`TASKS`,
  :class:`ClassificationAdapter`, :class:`ClassificationData`;
* :mod:`.freeze_diffusion`: :class:`DiffusionAdapter`, :class:`DiffusionModel`,
  :func:`load_diffusion_model` (needs ``pip install "unlearnable[diffusion]"``).
"""

from .freeze_adapters import (
    TASKS,
    ClassificationAdapter,
    ClassificationData,
    TaskAdapter,
    detect_task,
    load_classification_folder,
)
from .freeze_diffusion import (
    DiffusionAdapter,
    DiffusionData,
    DiffusionModel,
    load_caption_folder,
    load_diffusion_model,
)
from .freeze_enforce import FinetuneConfig, FinetuneResult, finetune
from .freeze_learn import FreezeConfig, FreezeResult, learn_freeze_mask, relearn
from .freeze_mask import (
    MASK_FILE,
    FreezeMask,
    MaskFileError,
    architecture_fingerprint,
    build_mask,
    load_mask,
    save_mask,
)

__all__ = [
    "MASK_FILE",
    "TASKS",
    "ClassificationAdapter",
    "ClassificationData",
    "DiffusionAdapter",
    "DiffusionData",
    "DiffusionModel",
    "FinetuneConfig",
    "FinetuneResult",
    "FreezeConfig",
    "FreezeMask",
    "FreezeResult",
    "MaskFileError",
    "TaskAdapter",
    "architecture_fingerprint",
    "build_mask",
    "detect_task",
    "finetune",
    "learn_freeze_mask",
    "load_caption_folder",
    "load_classification_folder",
    "load_diffusion_model",
    "load_mask",
    "relearn",
    "save_mask",
]
