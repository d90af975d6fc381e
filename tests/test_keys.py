import hashlib
import hmac
import os
import stat

import pytest

from unlearnable.keys import (
    KeyFileError,
    SecretKey,
    key_seed,
    key_stream,
    key_uniforms,
    load_key_file,
    numpy_generator,
    write_key_file,
)

from .conftest import FIXED_KEY


def test_keygen_writes_32_bytes_mode_0600_and_refuses_overwrite(tmp_path):
    path = tmp_path / "k.bin"
    key = write_key_file(path)
    assert path.read_bytes() == key.material and len(key.material) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key_file(path)
    assert path.read_bytes() == key.material
    assert load_key_file(path) == key


def test_two_new_keys_differ(tmp_path):
    assert write_key_file(tmp_path / "a").material != write_key_file(tmp_path / "b").material


@pytest.mark.parametrize(
    "content, message", [(b"", "exactly 32 bytes"), (b"x" * 31, "has 31"), (b"x" * 33, "has 33")]
)
def test_malformed_key_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=message):
        load_key_file(path)


def test_missing_key_and_directory_key(tmp_path):
    with pytest.raises(KeyFileError, match="not found"):
        load_key_file(tmp_path / "nope.bin")
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key_file(tmp_path)


def test_repr_and_str_show_only_the_fingerprint():
    text = repr(FIXED_KEY) + str(FIXED_KEY)
    assert FIXED_KEY.material.hex() not in text
    assert FIXED_KEY.fingerprint in text


def test_fingerprint_follows_documented_derivation():
    digest = hashlib.sha256(b"unlearnable/fingerprint/v1\x00" + FIXED_KEY.material).hexdigest()[:16]
    assert FIXED_KEY.fingerprint == "-".join(digest[i : i + 4] for i in range(0, 16, 4))
    assert FIXED_KEY.fingerprint == "e549-d139-f229-6a5e"  # golden


def test_key_stream_follows_documented_derivation():
    expected = b""
    for counter in range(3):
        message = b"unlearnable/v1\x00" + b"test/context" + b"\x00" + counter.to_bytes(4, "big")
        expected += hmac.new(FIXED_KEY.material, message, hashlib.sha256).digest()
    assert key_stream(FIXED_KEY, "test/context", 80) == expected[:80]
    assert key_stream(FIXED_KEY, "test/context", 8).hex() == "898150ca65b66f52"  # golden


def test_key_uniforms_golden_values_and_range():
    values = key_uniforms(FIXED_KEY, "test/context", 3)
    assert values.tolist() == [0.5371294492849416, 0.9920431657192347, 0.161538280709407]
    many = key_uniforms(FIXED_KEY, "other", 5000)
    assert many.min() >= 0.0 and many.max() < 1.0 and 0.45 < many.mean() < 0.55


def test_seeds_depend_on_context_and_key_and_not_on_global_rng():
    assert key_seed(FIXED_KEY, "test/context") == 684917448557096786
    assert key_seed(FIXED_KEY, "a") != key_seed(FIXED_KEY, "b")
    assert key_seed(FIXED_KEY, "a") != key_seed(SecretKey(bytes(32)), "a")
    first = numpy_generator(FIXED_KEY, "x").random(4)
    import numpy as np

    np.random.seed(123)
    assert (numpy_generator(FIXED_KEY, "x").random(4) == first).all()


def test_keygen_on_a_full_disk_leaves_no_file(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "k.bin"
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(KeyFileError, match="No space left on device"):
        write_key_file(path)
    monkeypatch.setattr(os, "write", real_write)
    assert list(tmp_path.iterdir()) == []  # no key, no temporary file
    key = write_key_file(path)  # and keygen works once there is space
    assert load_key_file(path) == key


def test_keygen_never_replaces_a_file_created_meanwhile(tmp_path, monkeypatch):
    import unlearnable.keys as keys

    path = tmp_path / "k.bin"
    real_link = keys._link_new

    def racing(temp, target):
        target.write_bytes(b"other")
        real_link(temp, target)

    monkeypatch.setattr(keys, "_link_new", racing)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key_file(path)
    assert path.read_bytes() == b"other"
    assert [p.name for p in tmp_path.iterdir()] == ["k.bin"]
