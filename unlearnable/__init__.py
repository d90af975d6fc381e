"""unlearnable: protect image folders against unauthorised training, and verify the protection.

The public Python API (everything the CLI does)::

    import unlearnable as ul

    key = ul.write_key_file("secret.bin")           # or ul.load_key_file("secret.bin")
    run = ul.protect_directory("photos", "photos-protected", key)
    filters = ul.cuda_filters(key, ["cat", "dog"], kernel_size=3, blur=0.3)   # (2, 3, 3)
    protected = ul.apply_cuda(images, labels, filters)   # (B, C, H, W) float in [0, 1]

    # Unlearnable Clusters (label-agnostic): surrogate features -> k-means -> one perturbation
    # per cluster; ``surrogate`` is a spec ("ViT-B-32:openai", "tv:resnet50", "random") or a
    # ``ul.Surrogate`` (e.g. ``ul.surrogate_from_module(my_cnn, name="cnn", input_size=32)``).
    method = ul.UCMethodConfig(surrogate="random", clusters=10, uc=ul.UCConfig(eps=16 / 255))
    run = ul.protect_directory("photos", "photos-uc", key, method, ul.RunOptions(workers=2))

    # Datasets: WebDataset shards or Parquet files too, locally or on Ray; or one batch at a time.
    run = ul.protect_dataset("shards", "shards-protected", key, "cuda",
                             ul.RunOptions(executor=ul.RayExecutor()))      # pip install ...[ray]
    result = ul.protect_batch(list_of_jpeg_bytes, labels, key, "cuda")     # result.images

    # Verify: train victims on the protected and on the clean copy, score, write a run folder.
    run = ul.verify_folders("photos-protected", "photos", "test-photos",
                            ul.VerifyOptions(attacks=("erm",), budget="quick"))

    # Models: safetensors + JSON; TorchScript / torch.export archives for models built elsewhere.
    loaded = ul.load_model("model-folder")

Names are imported on first use (PEP 562), so ``import unlearnable`` and the command line's
``--help`` do not load torch. Errors raised on purpose derive from :class:`UnlearnableError`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    InputError,
    IntegrityError,
    ModelFileError,
    PartialFailure,
    UnlearnableError,
    UsageError,
)

#: public name -> the module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    # keys
    "SecretKey": ".keys",
    "load_key_file": ".keys",
    "write_key_file": ".keys",
    # protection
    "ClusterCudaConfig": ".protect",
    "ClusterProtector": ".protect",
    "CudaConfig": ".protect",
    "CudaProtector": ".protect",
    "FolderClusters": ".protect",
    "OutputOptions": ".protect",
    "PhotoConfig": ".protect",
    "ProtectRun": ".protect",
    "ProtectUsageError": ".protect",
    "Surrogate": ".protect",
    "SurrogateError": ".protect",
    "UCConfig": ".protect",
    "UCMethodConfig": ".protect",
    "RunOptions": ".protect",
    "register_method": ".protect",
    "apply_cluster_perturbations": ".protect",
    "apply_cuda": ".protect",
    "cluster_folder": ".protect",
    "cuda_filters": ".protect",
    "cuda_params": ".protect",
    "load_surrogate": ".protect",
    "protect_directory": ".protect",
    "surrogate_from_module": ".protect",
    # dataset scale: publisher formats, per-batch protection, the Ray engine
    "BatchResult": ".protect.batch",
    "FormatOptions": ".io.formats",
    "RayExecutor": ".engines.ray_engine",
    "protect_batch": ".protect.batch",
    "protect_dataset": ".protect.dataset",
    # verification
    "Thresholds": ".verify",
    "VerifyData": ".verify",
    "VerifyResult": ".verify",
    "run_verification": ".verify",
    "VerifyOptions": ".verify_run",
    "VerifyRun": ".verify_run",
    "verify_folders": ".verify_run",
    # models and training
    "build_victim": ".models",
}

# models
_LAZY.update(
    {
        "LoadedModel": ".checkpoints",
        "ModelSpec": ".checkpoints",
        "load_model": ".checkpoints",
        "read_state_dict": ".checkpoints",
        "save_model": ".checkpoints",
    }
)

# model side: backdoors (EBYD)
_LAZY.update(
    {
        "scan_model": ".defenses.ebyd",
        "purify_model": ".defenses.purify",
        "save_purified": ".defenses.purify",
        "ScanConfig": ".defenses.ebyd",
        "PurifyConfig": ".defenses.purify",
        "ScanResult": ".defenses.ebyd",
        "PurifyResult": ".defenses.purify",
        "ExposureConfig": ".defenses.exposure",
        "expose": ".defenses.exposure",
        "DetectionConfig": ".defenses.detection",
        "make_backdoor": ".attacks.backdoor",
        "backdoor_from_spec": ".attacks.backdoor",
        "PoisonConfig": ".attacks.backdoor",
        "poison_training_set": ".attacks.backdoor",
        "attack_success_rate": ".attacks.backdoor",
    }
)

# model side: FreezeAsGuard
_LAZY.update(
    {
        "learn_freeze_mask": ".defenses.freeze",
        "relearn": ".defenses.freeze",
        "finetune": ".defenses.freeze",
        "load_mask": ".defenses.freeze",
        "save_mask": ".defenses.freeze",
        "build_mask": ".defenses.freeze",
        "FreezeConfig": ".defenses.freeze",
        "FreezeResult": ".defenses.freeze",
        "FinetuneConfig": ".defenses.freeze",
        "FinetuneResult": ".defenses.freeze",
        "FreezeMask": ".defenses.freeze",
        "MaskFileError": ".defenses.freeze",
        "TaskAdapter": ".defenses.freeze",
        "ClassificationAdapter": ".defenses.freeze",
        "DiffusionAdapter": ".defenses.freeze",
        "load_diffusion_model": ".defenses.freeze",
    }
)

# audit
_LAZY.update(
    {
        "AuditConfig": ".audit",
        "AuditResult": ".audit",
        "audit_model": ".audit",
        "load_probes": ".audit",
        "write_audit_folder": ".audit",
    }
)

__all__ = [  # literal, so tools can read it; tests check it matches _LAZY
    "AuditConfig",
    "AuditResult",
    "BatchResult",
    "ClassificationAdapter",
    "ClusterCudaConfig",
    "ClusterProtector",
    "CudaConfig",
    "CudaProtector",
    "DetectionConfig",
    "DiffusionAdapter",
    "ExposureConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "FolderClusters",
    "FormatOptions",
    "FreezeConfig",
    "FreezeMask",
    "FreezeResult",
    "InputError",
    "IntegrityError",
    "LoadedModel",
    "MaskFileError",
    "ModelFileError",
    "ModelSpec",
    "OutputOptions",
    "PartialFailure",
    "PhotoConfig",
    "PoisonConfig",
    "ProtectRun",
    "ProtectUsageError",
    "PurifyConfig",
    "PurifyResult",
    "RayExecutor",
    "RunOptions",
    "ScanConfig",
    "ScanResult",
    "SecretKey",
    "Surrogate",
    "SurrogateError",
    "TaskAdapter",
    "Thresholds",
    "UCConfig",
    "UCMethodConfig",
    "UnlearnableError",
    "UsageError",
    "VerifyData",
    "VerifyOptions",
    "VerifyResult",
    "VerifyRun",
    "__version__",
    "apply_cluster_perturbations",
    "apply_cuda",
    "attack_success_rate",
    "audit_model",
    "backdoor_from_spec",
    "build_mask",
    "build_victim",
    "cluster_folder",
    "cuda_filters",
    "cuda_params",
    "expose",
    "finetune",
    "learn_freeze_mask",
    "load_diffusion_model",
    "load_key_file",
    "load_mask",
    "load_model",
    "load_probes",
    "load_surrogate",
    "make_backdoor",
    "poison_training_set",
    "protect_batch",
    "protect_dataset",
    "protect_directory",
    "purify_model",
    "read_state_dict",
    "register_method",
    "relearn",
    "run_verification",
    "save_mask",
    "save_model",
    "save_purified",
    "scan_model",
    "surrogate_from_module",
    "verify_folders",
    "write_audit_folder",
    "write_key_file",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'unlearnable' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .attacks.backdoor import (
        PoisonConfig,
        attack_success_rate,
        backdoor_from_spec,
        make_backdoor,
        poison_training_set,
    )
    from .audit import AuditConfig, AuditResult, audit_model, load_probes, write_audit_folder
    from .checkpoints import LoadedModel, ModelSpec, load_model, read_state_dict, save_model
    from .defenses.detection import DetectionConfig
    from .defenses.ebyd import ScanConfig, ScanResult, scan_model
    from .defenses.exposure import ExposureConfig, expose
    from .defenses.freeze import (
        ClassificationAdapter,
        DiffusionAdapter,
        FinetuneConfig,
        FinetuneResult,
        FreezeConfig,
        FreezeMask,
        FreezeResult,
        MaskFileError,
        TaskAdapter,
        build_mask,
        finetune,
        learn_freeze_mask,
        load_diffusion_model,
        load_mask,
        relearn,
        save_mask,
    )
    from .defenses.purify import PurifyConfig, PurifyResult, purify_model, save_purified
    from .engines.ray_engine import RayExecutor
    from .io.formats import FormatOptions
    from .keys import SecretKey, load_key_file, write_key_file
    from .models import build_victim
    from .protect import (
        ClusterCudaConfig,
        ClusterProtector,
        CudaConfig,
        CudaProtector,
        FolderClusters,
        OutputOptions,
        PhotoConfig,
        ProtectRun,
        ProtectUsageError,
        RunOptions,
        Surrogate,
        SurrogateError,
        UCConfig,
        UCMethodConfig,
        apply_cluster_perturbations,
        apply_cuda,
        cluster_folder,
        cuda_filters,
        cuda_params,
        load_surrogate,
        protect_directory,
        register_method,
        surrogate_from_module,
    )
    from .protect.batch import BatchResult, protect_batch
    from .protect.dataset import protect_dataset
    from .verify import Thresholds, VerifyData, VerifyResult, run_verification
    from .verify_run import VerifyOptions, VerifyRun, verify_folders
