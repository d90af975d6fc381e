"""Files in and out: discovery, decoding/encoding with metadata, atomic writes, hashes, caches,
the manifest, and the file -> tensor -> file runner with its executors.

The runner's names (:mod:`.runner`, :mod:`.work`, :mod:`.executors`) are imported on first use,
so that importing this package does not load torch.
"""

from importlib import import_module
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from .discover import Discovery, discover_images
from .hashing import sha256_bytes, sha256_file, sha256_strings
from .images import DecodedImage, ImageDecodeError, decode_image, encode_image
from .journal import JOURNAL_NAME, Journal, read_journal
from .manifest import MANIFEST_NAME, FileRecord, Manifest, ManifestError, read_manifest
from .memory import BYTES_PER_PIXEL, MemoryGate
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
    "RunStorageError": ".runner",
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
    "BYTES_PER_PIXEL",
    "JOURNAL_NAME",
    "MANIFEST_NAME",
    "DecodedImage",
    "Discovery",
    "FileRecord",
    "ImageDecodeError",
    "Journal",
    "Manifest",
    "ManifestError",
    "MemoryGate",
    "atomic_write_bytes",
    "atomic_write_text",
    "decode_image",
    "discover_images",
    "encode_image",
    "load_npz_cache",
    "read_journal",
    "read_manifest",
    "remove_stale_temporaries",
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
    "RunStorageError",
    "default_executor",
    "discover_and_check",
    "run_folder",
]
