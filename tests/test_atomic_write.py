"""Atomic writes with plain os.write: short writes, write errors, the cached name limit."""

from __future__ import annotations

import errno
import os

import pytest

from unlearnable.io import atomic
from unlearnable.io.atomic import atomic_write_bytes, is_temporary_name


def test_short_writes_are_continued_until_every_byte_is_written(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def short(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(data[:3]))  # at most 3 bytes per call

    monkeypatch.setattr(os, "write", short)
    atomic_write_bytes(tmp_path / "a.bin", b"0123456789", durable=True)
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "a.bin").read_bytes() == b"0123456789" and len(calls) == 4
    assert os.listdir(tmp_path) == ["a.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert not [name for name in os.listdir(tmp_path) if is_temporary_name(name)]


def test_the_name_limit_is_asked_once_per_existing_folder(tmp_path, monkeypatch):
    asked = []
    real = os.pathconf

    def pathconf(path, name):
        asked.append(os.fspath(path))
        return real(path, name)

    monkeypatch.setattr(os, "pathconf", pathconf)
    atomic._NAME_MAX_BY_FOLDER.clear()
    missing = tmp_path / "later"
    for _ in range(3):
        atomic_write_bytes(tmp_path / "x.bin", b"x")
    atomic_write_bytes(missing / "y.bin", b"y")  # asked before the folder exists: not cached
    atomic_write_bytes(missing / "y.bin", b"y")
    assert asked.count(os.fspath(tmp_path)) == 1
    assert asked.count(os.fspath(missing)) == 2
    assert (missing / "y.bin").read_bytes() == b"y"
