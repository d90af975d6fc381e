"""The protections a data owner applies, each a registered method with a frozen config.

Methods (:mod:`.methods` explains the registry and how to add one): ``cuda``
(:mod:`.cuda`, :mod:`.cuda_method`), ``cluster-cuda`` and ``uc`` (Unlearnable Clusters:
:mod:`.clusters`, :mod:`.uc_optimise`, :mod:`.uc_method`, the folder clustering in
:mod:`.uc_pipeline`). The files -> tensors -> files runner is :mod:`unlearnable.io.runner`.

Names are imported on first use (PEP 562), so the command line can list the methods without
loading torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: public name -> the module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    # the registry and the run
    "METHODS": ".methods",
    "Method": ".methods",
    "MethodContext": ".methods",
    "MethodOption": ".methods",
    "RunOptions": ".methods",
    "method_config": ".methods",
    "register_method": ".methods",
    "resolve_method": ".methods",
    "protect_directory": ".api",
    "FolderJob": "..io.runner",
    "OutputOptions": "..io.runner",
    "ProtectRun": "..io.runner",
    "ProtectUsageError": "..io.runner",
    "Protector": "..io.runner",
    # method configs
    "ClusterCudaConfig": ".cuda_method",
    "CudaConfig": ".cuda_method",
    "PhotoConfig": ".photo_method",
    "UCMethodConfig": ".uc_method",
    "DEFAULT_CLUSTERS": ".uc_config",
    "DEFAULT_SURROGATE": ".uc_config",
    "UCConfig": ".uc_config",
    # CUDA
    "CudaProtector": ".cuda",
    "apply_cuda": ".cuda",
    "PhotoProtector": ".photo",
    "cuda_filters": ".cuda",
    "cuda_params": ".cuda",
    # Unlearnable Clusters
    "ClusterProtector": ".clusters",
    "ClusterResult": ".clusters",
    "apply_cluster_perturbations": ".clusters",
    "cluster_features": ".clusters",
    "normalized_mutual_info": ".clusters",
    "optimise_cluster_perturbations": ".uc_optimise",
    "FolderClusters": ".uc_pipeline",
    "cluster_folder": ".uc_pipeline",
    "cluster_names": ".uc_pipeline",
    # surrogates
    "Surrogate": ".surrogate",
    "SurrogateError": ".surrogate",
    "WeakSurrogateWarning": ".surrogate",
    "extract_features": ".surrogate",
    "load_surrogate": ".surrogate",
    "surrogate_from_module": ".surrogate",
}

__all__ = [  # literal, so tools can read it; the same names as _LAZY
    "ClusterCudaConfig",
    "ClusterProtector",
    "ClusterResult",
    "CudaConfig",
    "CudaProtector",
    "DEFAULT_CLUSTERS",
    "DEFAULT_SURROGATE",
    "FolderClusters",
    "FolderJob",
    "METHODS",
    "Method",
    "MethodContext",
    "MethodOption",
    "OutputOptions",
    "PhotoConfig",
    "PhotoProtector",
    "ProtectRun",
    "ProtectUsageError",
    "Protector",
    "RunOptions",
    "Surrogate",
    "SurrogateError",
    "UCConfig",
    "UCMethodConfig",
    "WeakSurrogateWarning",
    "apply_cluster_perturbations",
    "apply_cuda",
    "cluster_features",
    "cluster_folder",
    "cluster_names",
    "cuda_filters",
    "cuda_params",
    "extract_features",
    "load_surrogate",
    "method_config",
    "normalized_mutual_info",
    "optimise_cluster_perturbations",
    "protect_directory",
    "register_method",
    "resolve_method",
    "surrogate_from_module",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # the same names, imported eagerly, for type checkers and IDEs
    from ..io.runner import FolderJob, OutputOptions, Protector, ProtectRun, ProtectUsageError
    from .api import protect_directory
    from .clusters import (
        ClusterProtector,
        ClusterResult,
        apply_cluster_perturbations,
        cluster_features,
        normalized_mutual_info,
    )
    from .cuda import CudaProtector, apply_cuda, cuda_filters, cuda_params
    from .cuda_method import ClusterCudaConfig, CudaConfig
    from .methods import (
        METHODS,
        Method,
        MethodContext,
        MethodOption,
        RunOptions,
        method_config,
        register_method,
        resolve_method,
    )
    from .photo import PhotoProtector
    from .photo_method import PhotoConfig
    from .surrogate import (
        Surrogate,
        SurrogateError,
        WeakSurrogateWarning,
        extract_features,
        load_surrogate,
        surrogate_from_module,
    )
    from .uc_config import DEFAULT_CLUSTERS, DEFAULT_SURROGATE, UCConfig
    from .uc_method import UCMethodConfig
    from .uc_optimise import optimise_cluster_perturbations
    from .uc_pipeline import FolderClusters, cluster_folder, cluster_names
