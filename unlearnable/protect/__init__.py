"""The protections a data owner applies (CUDA, Unlearnable Clusters) and the folder pipeline."""

from .api import METHODS, protect_directory
from .clusters import (
    ClusterProtector,
    ClusterResult,
    UCConfig,
    apply_cluster_perturbations,
    cluster_features,
    normalized_mutual_info,
    optimise_cluster_perturbations,
)
from .cuda import CudaProtector, apply_cuda, cuda_filters, cuda_params
from .folder import OutputOptions, ProtectRun, ProtectUsageError
from .surrogate import (
    Surrogate,
    SurrogateError,
    WeakSurrogateWarning,
    extract_features,
    load_surrogate,
    surrogate_from_module,
)
from .uc_pipeline import DEFAULT_SURROGATE, FolderClusters, cluster_folder, cluster_names

__all__ = [
    "DEFAULT_SURROGATE",
    "METHODS",
    "ClusterProtector",
    "ClusterResult",
    "CudaProtector",
    "FolderClusters",
    "OutputOptions",
    "ProtectRun",
    "ProtectUsageError",
    "Surrogate",
    "SurrogateError",
    "UCConfig",
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
    "normalized_mutual_info",
    "optimise_cluster_perturbations",
    "protect_directory",
    "surrogate_from_module",
]
