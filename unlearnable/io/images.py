"""Decode and encode image files, keeping what a person expects to get back.

Decoding applies the EXIF orientation (the filter is applied to the image as displayed) and
splits off the alpha channel, which protections never touch. Encoding writes the same format
by default, with the EXIF (orientation reset to 1, GPS removed on request), the ICC profile,
the DPI and the alpha channel. JPEG files are re-encoded with their own quantisation tables
and chroma subsampling unless a quality is given, so the size and quality stay close.

Supported: 8-bit grayscale (L, LA), RGB, RGBA, palette (P, converted to RGB/RGBA: a palette
cannot hold the filtered colours) and bilevel (1, converted to L) images in JPEG, PNG, WebP, BMP
and TIFF. CMYK, 16-bit and floating-point images are refused with a clear message, and so are
animations (animated WebP and PNG) and multi-page TIFF files: protecting only the first frame and
writing it as "ok" would lose the others silently. GIF files are not decoded at all (a palette
of 256 colours cannot hold the protected image); discovery reports them as skipped, and so
are files in formats that are not protected (HEIC, AVIF, JPEG XL, JPEG 2000, camera raw, ...).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable, limit before decoding

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff"})
_UNSUPPORTED = {
    "HEIC/HEIF": (".heic", ".heif", ".hif"),
    "AVIF": (".avif",),
    "JPEG XL": (".jxl",),
    "JPEG 2000": (".jp2", ".j2k", ".jpf", ".jpx"),
    "camera raw": (".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw"),
    "Photoshop": (".psd",),
    "SVG": (".svg",),
    "ICO": (".ico",),
}
SKIPPED_EXTENSIONS = {
    ".gif": "GIF is not supported (its 256-colour palette cannot hold the protected image); "
    "skipped: convert it to PNG to protect it",
    **{
        suffix: f"{kind} is not supported; skipped: convert it to JPEG or PNG to protect it"
        for kind, suffixes in _UNSUPPORTED.items()
        for suffix in suffixes
    },
}
"""Image extensions that discovery reports as skipped (with the reason), not as failed: photos
in formats that are not protected are listed, never left out without a word."""
DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels are refused unless ``max_pixels`` is raised (a decompression-bomb
guard that also bounds a worker's memory: see :mod:`unlearnable.io.work`). 100 MP covers every
camera up to medium format (e.g. 11648 x 8736 = 101.8 MP needs ``--max-pixels``)."""
LOSSY_FORMATS = frozenset({"JPEG", "WEBP"})
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
EXTENSION_FOR_FORMAT = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
_ORIENTATION = 0x0112
_GPS_IFD = 0x8825
_ICC_SAFE_MODES = {"RGB", "RGBA", "L", "LA"}
_PACKED_MODES = frozenset({"L", "LA", "RGB", "RGBA"})  # 8 bits per band: see _pixel_array


class ImageDecodeError(Exception):
    """A file could not be read as a supported image; the message says why."""


@dataclass
class DecodedImage:
    """An image as displayed, split into colour and alpha, with what is needed to write it back.

    ``pixels`` is uint8 ``(H, W, C)`` with C = 1 (grayscale) or 3 (RGB); ``alpha`` is uint8
    ``(H, W)`` or None.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    mode: str
    exif: Image.Exif | None = None
    icc_profile: bytes | None = None
    save_options: dict = field(default_factory=dict)
    lossless_webp: bool = False

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``data`` (a whole image file) into a :class:`DecodedImage`.

    Raises :class:`ImageDecodeError` for empty, truncated, corrupt, unsupported, too large
    (more than ``max_pixels`` pixels) or non-image data.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] == 16:
        raise ImageDecodeError("16-bit PNG images are not supported; convert to 8 bits per channel")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image file, or a format Pillow cannot read") from None
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise ImageDecodeError(f"corrupt image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image has {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a possible decompression bomb; raise --max-pixels to allow it)"
        )
    if image.format not in EXTENSION_FOR_FORMAT:
        raise ImageDecodeError(f"unsupported image format {image.format}")
    source_format = image.format
    frames = _frame_count(image)
    if frames > 1:
        kind = "multi-page" if source_format == "TIFF" else "animated"
        raise ImageDecodeError(
            f"{kind} {source_format} with {frames} frames: only single-frame images are "
            "protected (writing the first frame alone would drop the others); refused. "
            "Save each frame as its own file to protect them"
        )
    try:
        image.load()
    except Exception as exc:
        raise ImageDecodeError(f"truncated or corrupt image data: {exc}") from None
    if image.mode == "CMYK":
        raise ImageDecodeError("CMYK images are not supported; convert to RGB first")
    if image.mode.startswith(("I", "F")) or ";16" in image.mode:
        raise ImageDecodeError(
            f"{image.mode} images (16/32-bit) are not supported; convert to 8 bits per channel"
        )
    if image.mode not in {"1", "L", "LA", "P", "PA", "RGB", "RGBA"}:
        raise ImageDecodeError(f"images in mode {image.mode} are not supported")

    save_options = _format_save_options(image, source_format)
    exif = image.getexif()
    exif = exif if len(exif) else None
    icc_profile = image.info.get("icc_profile")
    try:
        rotated = exif is not None and exif.get(_ORIENTATION, 1) != 1
        upright = (ImageOps.exif_transpose(image) or image) if rotated else image
    except Exception as exc:
        raise ImageDecodeError(f"cannot apply EXIF orientation: {exc}") from None
    original_mode = image.mode
    upright = _to_supported_mode(upright)
    array = _pixel_array(upright)
    if upright.mode in ("L", "LA"):
        pixels = array[..., None] if upright.mode == "L" else array[..., :1]
    else:
        pixels = array[..., :3]
    alpha = array[..., -1].copy() if upright.mode in ("LA", "RGBA") else None
    return DecodedImage(
        pixels=np.array(pixels, order="C"),  # a writable copy (the bytes are read-only)
        alpha=alpha,
        format=source_format,
        mode=original_mode,
        exif=exif,
        icc_profile=icc_profile,
        save_options=save_options,
        lossless_webp=source_format == "WEBP" and b"VP8L" in data[:64],
    )


def _pixel_array(image: Image.Image) -> np.ndarray:
    """``np.asarray(image)`` (uint8 ``(H, W)`` for L, ``(H, W, bands)`` otherwise; read-only),
    without its cost on large images: ``asarray`` goes through ``Image.tobytes``, which packs
    the pixels in 64 KB pieces and joins them (a second pass over the image and a second
    buffer; 2-3 ms of a 6 MP photo's decode). Here Pillow's raw encoder (what ``tobytes``
    uses) packs the whole image in one call into one buffer: the same bytes, one pass. Falls
    back to ``asarray`` for other modes, empty images, or if Pillow's encoder interface (a
    private one) is not there."""
    if image.mode not in _PACKED_MODES or image.width == 0 or image.height == 0:
        return np.asarray(image)
    bands = len(image.getbands())
    size = image.width * image.height * bands
    try:
        encoder = Image._getencoder(image.mode, "raw", image.mode)
    except (AttributeError, OSError, ValueError):
        return np.asarray(image)
    try:
        encoder.setimage(image.im, (0, 0, *image.size))
        _, status, data = encoder.encode(size + 1)
    finally:
        encoder.cleanup()
    if status != 1 or len(data) != size:  # not all of it in one call: take the general path
        return np.asarray(image)
    shape = (image.height, image.width) if bands == 1 else (image.height, image.width, bands)
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _frame_count(image: Image.Image) -> int:
    try:
        return int(getattr(image, "n_frames", 1))
    except Exception as exc:  # a corrupt page table
        raise ImageDecodeError(f"cannot count the frames of the image: {exc}") from None


def _to_supported_mode(image: Image.Image) -> Image.Image:
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    return image


def _format_save_options(image: Image.Image, source_format: str) -> dict:
    """Options that keep a re-encoded file close to its source (quality, compression, DPI)."""
    options: dict = {}
    if "dpi" in image.info:
        options["dpi"] = image.info["dpi"]
    if source_format == "JPEG":
        quantization = getattr(image, "quantization", None)
        if quantization:
            options["qtables"] = quantization
        sampling = JpegImagePlugin.get_sampling(image)
        if sampling != -1:
            options["subsampling"] = sampling
    elif source_format == "TIFF":
        compression = image.info.get("compression")
        if compression in {"raw", "tiff_lzw", "tiff_adobe_deflate", "packbits"}:
            options["compression"] = compression
    return options


def decode_pixels(data: bytes, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels of an image this module encoded (orientation already upright), uint8
    ``(H, W, channels)`` with channels 1 or 3: a light decode for quality metrics. With the
    ``(width, height)`` ``size``, a JPEG goes straight to the decoder (no header parsing in
    Python; the same pixels)."""
    mode = "L" if channels == 1 else "RGB"
    if size is not None and data[:2] == b"\xff\xd8":
        try:
            array = np.asarray(Image.frombytes(mode, size, data, "jpeg", mode, ""))
            return array[..., None] if channels == 1 else array
        except (OSError, ValueError):
            pass  # e.g. a CMYK or progressive quirk: take the general path
    image = Image.open(io.BytesIO(data)).convert(mode)
    array = np.asarray(image)
    return array[..., None] if channels == 1 else array


def output_format(source_format: str, requested: str) -> str:
    """Pillow format name to write: the source's for ``keep``, else png/jpeg/webp."""
    if requested == "keep":
        return source_format
    if requested not in OUTPUT_FORMATS:
        raise ValueError(f"format must be keep, png, jpeg or webp, got {requested!r}")
    return OUTPUT_FORMATS[requested]


def is_lossy(fmt: str, decoded: DecodedImage | None = None) -> bool:
    """Whether writing ``fmt`` is lossy (WebP kept from a lossless source is not)."""
    if fmt == "WEBP" and decoded is not None and decoded.format == "WEBP" and decoded.lossless_webp:
        return False
    return fmt in LOSSY_FORMATS


def encode_image(
    pixels: np.ndarray,
    decoded: DecodedImage,
    fmt: str,
    quality: int | None = None,
    strip_gps: bool = False,
) -> bytes:
    """Encode ``pixels`` (uint8 ``(H, W, C)``, same size as ``decoded``) with decoded's alpha
    and metadata into ``fmt`` (a Pillow format name). Returns the file's bytes."""
    if pixels.shape[:2] != decoded.pixels.shape[:2]:
        raise ValueError("encoded pixels must keep the decoded image's size")
    channels = pixels.shape[2]
    if decoded.alpha is not None:
        if fmt == "JPEG":
            raise ImageDecodeError(
                "JPEG cannot store the alpha channel; use --format png or webp for this file"
            )
        stacked = np.concatenate([pixels, decoded.alpha[..., None]], axis=2)
        image = Image.fromarray(stacked, "LA" if channels == 1 else "RGBA")
    else:
        image = Image.fromarray(
            pixels[..., 0] if channels == 1 else pixels, "L" if channels == 1 else "RGB"
        )

    options: dict = {}
    if fmt == decoded.format:
        options.update(decoded.save_options)
    elif "dpi" in decoded.save_options:
        options["dpi"] = decoded.save_options["dpi"]
    if fmt == "JPEG":
        if quality is not None:
            options.pop("qtables", None)
            options["quality"] = quality
        elif "qtables" not in options:
            options["quality"] = 95
    elif fmt == "WEBP":
        if quality is not None:
            options["quality"] = quality
        elif decoded.format == "WEBP" and decoded.lossless_webp:
            options["lossless"] = True
        else:
            options["quality"] = 90
        options["method"] = 4
    exif = _output_exif(decoded.exif, strip_gps)
    if exif is not None and fmt in {"JPEG", "PNG", "WEBP", "TIFF"}:
        options["exif"] = exif
    if decoded.icc_profile and image.mode in _ICC_SAFE_MODES and fmt != "BMP":
        options["icc_profile"] = decoded.icc_profile
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _output_exif(exif: Image.Exif | None, strip_gps: bool) -> bytes | None:
    if exif is None or len(exif) == 0:
        return None
    out = Image.Exif()
    out.load(exif.tobytes())
    if _ORIENTATION in out:
        out[_ORIENTATION] = 1
    if strip_gps and _GPS_IFD in out:
        del out[_GPS_IFD]
    return out.tobytes()
