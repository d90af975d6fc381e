"""decode_image's pixels are exactly Pillow's (``np.asarray`` of the upright image), whatever
the mode, size and orientation: the one-call packing of large images changes no byte."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from unlearnable.io.images import _pixel_array, decode_image


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _reference(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """What decode_image gave before: ``np.asarray`` of the EXIF-upright image in L/LA/RGB/RGBA,
    split into colour ``(H, W, C)`` and alpha."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if alpha else "RGB")
    array = np.asarray(image)
    if image.mode == "L":
        return array[..., None], None
    colour = array[..., :1] if image.mode == "LA" else array[..., :3]
    return colour, array[..., -1] if image.mode in ("LA", "RGBA") else None


def _photo(size: tuple[int, int], mode: str, seed: int = 0) -> Image.Image:
    width, height = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "PA", "1", "I", "F", "CMYK"])
@pytest.mark.parametrize("size", [(1, 1), (7, 1), (1, 9), (31, 17), (700, 130)])
def test_pixel_array_equals_numpy_view_of_pillow(mode, size):
    image = _photo(size, mode)
    packed, reference = _pixel_array(image), np.asarray(image)
    assert packed.dtype == reference.dtype and packed.shape == reference.shape
    assert np.array_equal(packed, reference)


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"),
     ("P", "PNG"), ("1", "PNG"), ("RGB", "WEBP"), ("RGBA", "TIFF"), ("L", "BMP")],
)  # fmt: skip
def test_decoded_pixels_and_alpha_are_pillows(mode, fmt):
    data = _encoded(_photo((640, 480), mode, seed=1), fmt)
    decoded = decode_image(data)
    colour, alpha = _reference(data)
    assert np.array_equal(decoded.pixels, colour)
    assert (decoded.alpha is None) == (alpha is None)
    if alpha is not None:
        assert np.array_equal(decoded.alpha, alpha)
    assert decoded.pixels.flags.c_contiguous and decoded.pixels.flags.writeable


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_pillows_upright_pixels(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encoded(_photo((300, 200), "RGB", seed=orientation), "JPEG", exif=exif.tobytes())
    decoded = decode_image(data)
    assert np.array_equal(decoded.pixels, _reference(data)[0])
    expected = (200, 300) if orientation < 5 else (300, 200)
    assert decoded.pixels.shape[:2] == expected


def test_decoded_pixels_do_not_share_memory_between_decodes():
    data = _encoded(_photo((64, 48), "RGB"), "PNG")
    first, second = decode_image(data), decode_image(data)
    first.pixels[:] = 0
    assert not np.shares_memory(first.pixels, second.pixels)
    assert np.array_equal(second.pixels, _reference(data)[0])
