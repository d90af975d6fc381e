"""Files in and out: discovery, decoding/encoding with metadata, atomic writes, hashes, caches,
the manifest, and the file -> tensor -> file runner with its executors.

The runner's names (:mod:`.runner`, :mod:`.work`, :mod:`.executors`) are imported on first use,
so that importing this package does not load torch.
"""

from importlib import import_module
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_text
from .discover import Discovery, discover_images
from .hashing import sha256_bytes, sha256_file, sha256_strings
from .images import DecodedImage, ImageDecodeError, decode_image, encode_image
from .manifest import MANIFEST_NAME, FileRecord, Manifest, ManifestError, read_manifest
from .npz_cache import load_npz_cache, save_npz_cache

_LAZY = {
    "Executor": ".executors",
    "ProcessExecutor": ".executors",
    "SerialExecutor": ".executors",
    "default_workers": ".executors",
    "FolderJob": ".runner",
    "OutputOptions": ".runner",
    "ProtectRun": ".runner",
    "ProtectUsageError": ".runner",
    "Protector": ".runner",
    "default_executor": ".runner",
    "discover_and_check": ".runner",
    "run_folder": ".runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)


__all__ = [  # eager names, then the runner's lazy ones
    "MANIFEST_NAME",
    "DecodedImage",
    "Discovery",
    "FileRecord",
    "ImageDecodeError",
    "Manifest",
    "ManifestError",
    "atomic_write_bytes",
    "atomic_write_text",
    "decode_image",
    "discover_images",
    "encode_image",
    "load_npz_cache",
    "read_manifest",
    "save_npz_cache",
    "sha256_bytes",
    "sha256_file",
    "sha256_strings",
    "Executor",
    "ProcessExecutor",
    "SerialExecutor",
    "default_workers",
    "FolderJob",
    "OutputOptions",
    "ProtectRun",
    "ProtectUsageError",
    "Protector",
    "default_executor",
    "discover_and_check",
    "run_folder",
]
