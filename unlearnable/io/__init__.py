"""Files in and out: discovery, decoding/encoding with metadata, atomic writes, the manifest."""

from .atomic import atomic_write_bytes, atomic_write_text
from .discover import Discovery, discover_images
from .images import DecodedImage, ImageDecodeError, decode_image, encode_image
from .manifest import MANIFEST_NAME, FileRecord, Manifest, ManifestError, read_manifest

__all__ = [
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
    "read_manifest",
]
