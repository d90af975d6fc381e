"""Reading input image files whole, with a size guard (what a worker reads for each file)."""

from __future__ import annotations

import errno
import os


def input_byte_limit(max_pixels: int) -> int:
    """The largest image file read (:func:`read_image_file`): ``8 * max_pixels`` bytes (an
    uncompressed 16-bit RGBA image) plus 64 MiB of metadata. A larger file cannot be an image
    within the pixel limit, and reading it whole could take a worker's memory."""
    return 8 * max_pixels + 64 * 1024 * 1024


def read_image_file(path: str | os.PathLike[str], max_pixels: int) -> bytes:
    """The bytes of the image file ``path``; ``OSError`` when it cannot be read, with ``EFBIG``
    (and not read) when it is larger than :func:`input_byte_limit` allows."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        limit = input_byte_limit(max_pixels)
        if size > limit:
            raise OSError(
                errno.EFBIG,
                f"the file has {size:,} bytes, more than an image within the pixel limit can "
                f"take ({limit:,}); not read (a video or archive with an image's extension?)",
            )
        return handle.read()
