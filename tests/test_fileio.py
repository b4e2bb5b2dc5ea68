"""The one atomic writer: a file is replaced whole or not at all, and durably."""

from __future__ import annotations

import os

import pytest

from trainforge import fileio
from trainforge.fileio import atomic_write_bytes, atomic_write_text


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_text(path, "first\r\n")
    assert path.read_bytes() == b"first\r\n"  # newlines are written as they are
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_crash_before_the_replace_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new: 2\n")
    assert path.read_text() == "old: 1\n"
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_a_crash_while_writing_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "pins.json"
    path.write_bytes(b"old")

    def crash(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fileio.os, "fsync", crash)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["pins.json"]


def test_the_file_is_fsynced_before_the_replace_and_the_directory_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    atomic_write_bytes(tmp_path / "a.txt", b"x")
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert calls[1][1:] == (f".tmp-a.txt-{os.getpid()}", "a.txt")
    if calls[0][1] is not None:  # Linux: say which is which
        assert (calls[0][1], calls[2][1]) == (False, True)


def test_the_temp_name_is_one_the_checkpoint_store_cleans_up(tmp_path):
    """A killed writer leaves .tmp-<name>-<pid>: the leftover pattern of the checkpoint directory."""
    from trainforge.checkpoint.store import _LEFTOVER
    assert _LEFTOVER.match(f".tmp-pins.json-{os.getpid()}")
