"""The manifest: sha256 and size of every file of a checkpoint, written last, checked on load.

A directory holding a readable ``MANIFEST.json`` was finished; one whose files all match it
(size, and with ``deep`` the sha256) was not truncated or corrupted since.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from .layout import DATA_FILES, FORMAT, MANIFEST_FILE, VERSION, error

_CHUNK = 8 << 20


def _digest(f) -> tuple[str, int]:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    size = 0
    while n := f.readinto(buf):
        h.update(view[:n])
        size += n
    return h.hexdigest(), size


def seal(path: Path) -> dict:
    """fsync a written file and return its manifest entry (sha256 of what is on disk, size)."""
    with open(path, "r+b") as f:  # r+ so fsync is allowed everywhere (Windows needs write access)
        digest, size = _digest(f)
        os.fsync(f.fileno())
    return {"sha256": digest, "size": size}


def sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    with open(path, "rb") as f:
        return _digest(f)[0]


def read_json(path: Path, ckpt: Path, what: str) -> Any:
    """A JSON file of checkpoint ``ckpt``; a missing or unreadable one is a CheckpointError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(ckpt, f"{what} is missing (the save never finished, or the file was deleted)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise error(ckpt, f"{what} is not valid JSON ({e})") from None


def read_manifest(path: Path) -> dict:
    """The manifest of checkpoint directory ``path``, checked for format, version and data files."""
    if not path.is_dir():
        raise error(path, "does not exist (or is not a directory)")
    m = read_json(path / MANIFEST_FILE, path, MANIFEST_FILE)
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise error(path, f"{MANIFEST_FILE} is not a trainforge checkpoint manifest")
    if not isinstance(m.get("version"), int) or m["version"] > VERSION:
        raise error(path, f"format version {m.get('version')!r} is newer than this trainforge reads "
                     f"({VERSION}); upgrade trainforge")
    for f in DATA_FILES:
        if f not in m["files"]:
            raise error(path, f"{MANIFEST_FILE} does not list {f}")
    return m


def verify(path: Path, deep: bool = True) -> dict:
    """Return the manifest once every listed file has its recorded size (and, if deep, sha256)."""
    path = Path(path)
    m = read_manifest(path)
    for fname, entry in m["files"].items():
        parts = PurePosixPath(fname).parts  # a file, or one in a sub-directory (a sharded checkpoint's shards/)
        if not parts or len(parts) > 2 or fname.startswith("/") or any(p in (".", "..") for p in parts) \
                or "\\" in fname:
            raise error(path, f"{MANIFEST_FILE} lists {fname!r}, which is outside the checkpoint")
        try:
            size, digest = int(entry["size"]), str(entry["sha256"])
        except (TypeError, KeyError, ValueError):
            raise error(path, f"{MANIFEST_FILE} entry for {fname} lacks size/sha256") from None
        f = path / fname
        try:
            actual = f.stat().st_size
        except FileNotFoundError:
            raise error(path, f"{fname} is missing") from None
        if actual != size:
            raise error(path, f"{fname} is {actual} bytes, the manifest says {size} (truncated or overwritten)")
        if deep and (got := sha256(f)) != digest:
            raise error(path, f"{fname} is corrupted: sha256 {got[:16]}... does not match the manifest's "
                         f"{digest[:16]}...")
    return m
