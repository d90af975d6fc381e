"""The protections a data owner applies (CUDA, Unlearnable Clusters) and the folder pipeline."""

from .api import protect_directory
from .cuda import CudaProtector, apply_cuda, cuda_filters, cuda_params
from .folder import OutputOptions, ProtectRun, ProtectUsageError

__all__ = [
    "CudaProtector",
    "OutputOptions",
    "ProtectRun",
    "ProtectUsageError",
    "apply_cuda",
    "cuda_filters",
    "cuda_params",
    "protect_directory",
]
