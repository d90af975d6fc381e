import io
import os

import numpy as np
import pytest
from PIL import Image, ImageCms

from unlearnable.io.atomic import atomic_write_bytes
from unlearnable.io.images import ImageDecodeError, decode_image, encode_image

from .conftest import random_image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_exif_orientation_is_applied_and_reset_on_output():
    image = random_image((30, 20))  # width 30, height 20
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    exif[0x010F] = "TestCam"
    decoded = decode_image(encoded(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.pixels.shape == (30, 20, 3)  # displayed: 20 wide, 30 high
    out = Image.open(io.BytesIO(encode_image(decoded.pixels, decoded, "JPEG")))
    assert out.size == (20, 30)
    assert out.getexif()[0x0112] == 1 and out.getexif()[0x010F] == "TestCam"


def test_gps_is_kept_unless_stripped():
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x8825] = {1: "N", 2: (1.0, 2.0, 3.0)}
    decoded = decode_image(encoded(random_image(), "JPEG", exif=exif.tobytes()))
    kept = Image.open(io.BytesIO(encode_image(decoded.pixels, decoded, "JPEG"))).getexif()
    stripped = Image.open(
        io.BytesIO(encode_image(decoded.pixels, decoded, "JPEG", strip_gps=True))
    ).getexif()
    assert 0x8825 in kept and 0x8825 not in stripped and stripped[0x010F] == "TestCam"


def test_icc_profile_and_alpha_round_trip_in_png():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = random_image(mode="RGBA")
    decoded = decode_image(encoded(image, "PNG", icc_profile=icc))
    assert decoded.pixels.shape[2] == 3 and decoded.alpha is not None
    new_pixels = 255 - decoded.pixels
    out = Image.open(io.BytesIO(encode_image(new_pixels, decoded, "PNG")))
    assert out.mode == "RGBA" and out.info["icc_profile"] == icc
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(image)[..., 3])  # alpha untouched
    assert np.array_equal(np.asarray(out)[..., :3], new_pixels)


@pytest.mark.parametrize(
    "mode, channels, alpha",
    [("L", 1, False), ("LA", 1, True), ("RGB", 3, False), ("P", 3, False), ("1", 1, False)],
)
def test_supported_modes(mode, channels, alpha):
    decoded = decode_image(encoded(random_image(mode=mode), "PNG"))
    assert decoded.pixels.shape[2] == channels and (decoded.alpha is not None) == alpha
    out = Image.open(io.BytesIO(encode_image(decoded.pixels, decoded, "PNG")))
    assert out.size == (24, 20)


def test_cmyk_and_16_bit_are_refused_clearly():
    with pytest.raises(ImageDecodeError, match="CMYK"):
        decode_image(encoded(random_image().convert("CMYK"), "JPEG"))
    sixteen = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    with pytest.raises(ImageDecodeError, match="16"):
        decode_image(encoded(sixteen, "PNG"))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
    ],
)
def test_bad_bytes(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_truncated_file_and_pixel_limit():
    data = encoded(random_image((64, 64)), "PNG")
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(data, max_pixels=64 * 64 - 1)


def test_jpeg_alpha_output_is_refused():
    decoded = decode_image(encoded(random_image(mode="RGBA"), "PNG"))
    with pytest.raises(ImageDecodeError, match="alpha"):
        encode_image(decoded.pixels, decoded, "JPEG")


def test_jpeg_keeps_its_quantisation_tables():
    image = random_image((64, 64))
    data = encoded(image, "JPEG", quality=60)
    decoded = decode_image(data)
    again = Image.open(io.BytesIO(encode_image(decoded.pixels, decoded, "JPEG")))
    assert again.quantization == Image.open(io.BytesIO(data)).quantization


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_every_format_round_trips_size_and_format(fmt):
    decoded = decode_image(encoded(random_image((17, 11)), fmt))
    out = Image.open(io.BytesIO(encode_image(decoded.pixels, decoded, fmt)))
    assert out.format == fmt and out.size == (17, 11)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_sha256_file_streams_the_same_digest_as_hashing_the_bytes(tmp_path):
    import hashlib

    from unlearnable.io.hashing import BLOCK_BYTES, sha256_file, sha256_strings

    data = np.random.default_rng(0).integers(0, 256, 2 * BLOCK_BYTES + 17, np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(data)
    assert sha256_file(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    assert sha256_strings(["ab", "c"]) != sha256_strings(["a", "bc"])
    with pytest.raises(OSError):
        sha256_file(tmp_path / "missing.bin")


def test_npz_cache_is_reused_only_when_version_and_identity_match(tmp_path):
    from unlearnable.io.npz_cache import load_npz_cache, save_npz_cache

    path = tmp_path / "sub" / "cache.npz"
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "note": np.array("hi")}
    save_npz_cache(path, 2, {"model": "m1", "k": 3}, arrays)
    assert [p.name for p in path.parent.iterdir()] == ["cache.npz"]  # atomic: no temp left
    loaded = load_npz_cache(path, 2, {"model": "m1", "k": 3})
    assert loaded is not None and set(loaded) == {"x", "note"}
    np.testing.assert_array_equal(loaded["x"], arrays["x"])
    assert str(loaded["note"]) == "hi"
    assert load_npz_cache(path, 1, {"model": "m1", "k": 3}) is None  # other version
    assert load_npz_cache(path, 2, {"model": "m2", "k": 3}) is None  # other identity
    assert load_npz_cache(path, 2, {"model": "m1", "k": 4}) is None
    assert load_npz_cache(path, 2, {"model": "m1", "k": 3, "extra": "x"}) is None
    assert load_npz_cache(tmp_path / "missing.npz", 2, {}) is None
    path.write_bytes(path.read_bytes()[:50])  # truncated
    assert load_npz_cache(path, 2, {"model": "m1", "k": 3}) is None
    with pytest.raises(ValueError, match="distinct"):
        save_npz_cache(path, 2, {"x": "clash"}, arrays)


def test_temporary_names_fit_the_name_limit_and_are_recognised(tmp_path):
    from unlearnable.io.atomic import is_temporary_name, remove_stale_temporaries, temporary_name

    for name in ("a.png", "n" * 251 + ".png", "é" * 125 + ".png"):
        temp = temporary_name(tmp_path / name)
        assert len(os.fsencode(temp)) <= 255 and is_temporary_name(temp)
        atomic_write_bytes(tmp_path / name, b"x")
        assert (tmp_path / name).read_bytes() == b"x"
    assert not is_temporary_name("photo.tmp") and not is_temporary_name(".x.png")
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / temporary_name(tmp_path / "sub" / "b.png")
    stale.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == [stale] and not stale.exists()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_fast_jpeg_redecode_gives_the_same_pixels(mode):
    from unlearnable.io.images import decode_pixels

    channels = 3 if mode == "RGB" else 1
    data = encoded(random_image((37, 29), mode), "JPEG", quality=80)
    fast = decode_pixels(data, channels, (37, 29))
    assert fast.shape == (29, 37, channels)
    assert np.array_equal(fast, decode_pixels(data, channels))
