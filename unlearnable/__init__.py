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
    run = ul.protect_directory("photos", "photos-uc", key, method="uc", surrogate="random",
                               clusters=10, uc_config=ul.UCConfig(eps=16 / 255, steps=100))
"""

from ._version import __version__
from .keys import SecretKey, load_key_file, write_key_file
from .protect import (
    ClusterProtector,
    CudaProtector,
    FolderClusters,
    OutputOptions,
    ProtectRun,
    ProtectUsageError,
    Surrogate,
    SurrogateError,
    UCConfig,
    apply_cluster_perturbations,
    apply_cuda,
    cluster_folder,
    cuda_filters,
    cuda_params,
    load_surrogate,
    protect_directory,
    surrogate_from_module,
)

__all__ = [
    "ClusterProtector",
    "CudaProtector",
    "FolderClusters",
    "OutputOptions",
    "ProtectRun",
    "ProtectUsageError",
    "SecretKey",
    "Surrogate",
    "SurrogateError",
    "UCConfig",
    "__version__",
    "apply_cluster_perturbations",
    "apply_cuda",
    "cluster_folder",
    "cuda_filters",
    "cuda_params",
    "load_key_file",
    "load_surrogate",
    "protect_directory",
    "surrogate_from_module",
    "write_key_file",
]
