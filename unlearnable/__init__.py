"""unlearnable: protect image folders against unauthorised training, and verify the protection.

The public Python API (everything the CLI does)::

    import unlearnable as ul

    key = ul.write_key_file("secret.bin")           # or ul.load_key_file("secret.bin")
    run = ul.protect_directory("photos", "photos-protected", key)
    filters = ul.cuda_filters(key, ["cat", "dog"], kernel_size=3, blur=0.3)   # (2, 3, 3)
    protected = ul.apply_cuda(images, labels, filters)   # (B, C, H, W) float in [0, 1]
"""

from ._version import __version__
from .keys import SecretKey, load_key_file, write_key_file
from .protect import (
    CudaProtector,
    OutputOptions,
    ProtectRun,
    ProtectUsageError,
    apply_cuda,
    cuda_filters,
    cuda_params,
    protect_directory,
)

__all__ = [
    "CudaProtector",
    "OutputOptions",
    "ProtectRun",
    "ProtectUsageError",
    "SecretKey",
    "__version__",
    "apply_cuda",
    "cuda_filters",
    "cuda_params",
    "load_key_file",
    "protect_directory",
    "write_key_file",
]
