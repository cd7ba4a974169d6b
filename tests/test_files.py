"""rnnkit.files, the one implementation of atomic writes: a failed write leaves the old version whole
and no temporary behind; a successful one replaces it entirely."""

from __future__ import annotations

import os
import stat

import pytest

from rnnkit import files
from rnnkit.files import atomic_directory, atomic_write_bytes, atomic_write_files


def _fail_on_fsync(monkeypatch, after: int = 0) -> None:
    """Make the ``after+1``-th fsync fail, as a full disk would."""
    calls = [0]
    real = os.fsync

    def fsync(fd):
        calls[0] += 1
        if calls[0] > after:
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_a_file_is_replaced_whole_and_readable_as_open_would_make_it(tmp_path):
    path = atomic_write_bytes(tmp_path / "sub" / "a.txt", b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = atomic_write_bytes(tmp_path / "a.txt", b"old")
    _fail_on_fsync(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.txt"]


def test_several_files_are_all_replaced_or_none_when_a_write_fails(tmp_path, monkeypatch):
    atomic_write_files(tmp_path, {"a": b"a1", "b": b"b1"})
    _fail_on_fsync(monkeypatch, after=1)  # the second file's write fails
    with pytest.raises(OSError, match="No space"):
        atomic_write_files(tmp_path, {"a": b"a2", "b": b"b2"}, tmp_prefix=".tmp-x-")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {"a": b"a1", "b": b"b1"}
    monkeypatch.undo()
    atomic_write_files(tmp_path, {"a": b"a2", "b": b"b2"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {"a": b"a2", "b": b"b2"}


def test_a_directory_is_swapped_in_whole_or_left_as_it_was(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "old.json").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "new.json").write_text("2")
            raise RuntimeError("killed halfway")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["old.json"]
    with atomic_directory(target) as tmp:
        (tmp / "new.json").write_text("2")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["new.json"]  # the old one gone entirely
