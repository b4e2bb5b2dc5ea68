"""Durable file writes: the one place that knows how to put bytes on disk so a crash cannot tear them.

``atomic_write_bytes`` / ``atomic_write_text`` replace a file whole or not at all: the data goes to a
hidden sibling (``.tmp-<name>-<pid>``, the leftover pattern the checkpoint store cleans up), is
flushed and fsynced, renamed over the target with ``os.replace`` (atomic on POSIX and Windows), and
the directory is fsynced so the rename itself survives a power cut. A reader sees the old file or
the new one, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir", "write_synced"]


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (a rename, a new file) durable."""
    if os.name == "nt":  # Windows cannot open a directory to fsync it; NTFS journals the rename
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` (created or truncated) and fsync it. Not atomic by itself: use it
    for files inside a directory that is renamed into place afterwards, else ``atomic_write_bytes``."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring).

    If anything fails before the rename, the previous file is left as it was and the temporary
    file is removed; the error propagates.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    """``atomic_write_bytes`` of ``text`` encoded as given; newlines are written as they are."""
    atomic_write_bytes(path, text.encode(encoding))


def human_size(n: int) -> str:
    """Bytes for people: ``512 B``, ``8.2 KiB``, ``3.1 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
