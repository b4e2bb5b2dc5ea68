"""The directory store: each checkpoint is a directory that appears whole or not at all.

A save writes into a hidden sibling (``.tmp-<name>-<pid>``) and renames it into place once every
file and the directory are fsynced. Replacing a name moves the old one aside first
(``.old-<name>-<pid>``); deleting renames to ``.trash-<name>-<pid>`` before removing. Anything
whose name starts with a dot is never listed, and what a killed process left is cleaned up (an
interrupted replace put back) by ``clean_leftovers`` at the next save.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

from ..fileio import fsync_dir

_LEFTOVER = re.compile(r"^\.(tmp|old|trash)-(.+)-(\d+)$")


class DirectoryStore:
    """Atomic install, replace, delete and listing of checkpoint directories under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def entries(self) -> list[Path]:
        """The visible checkpoint directories (hidden working names excluded), in no order."""
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def ensure(self) -> None:
        """Create the directory (durably) if it is missing."""
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory.parent)

    def tmp_dir(self, name: str) -> Path:
        """Where a save of ``name`` by this process is written before it is installed."""
        return self.directory / f".tmp-{name}-{os.getpid()}"

    def install(self, tmp: Path, final: Path) -> None:
        """Rename the finished directory into place, replacing an existing one of the same name."""
        if not final.exists():
            os.replace(tmp, final)
            fsync_dir(self.directory)
            return
        # rename(2) cannot replace a non-empty directory, so: old aside, new in, old deleted.
        # A crash between the two renames leaves .old-<name>-<pid>, which the next save puts back.
        old = self.directory / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        fsync_dir(self.directory)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)  # keep the previous version visible rather than none
            raise
        fsync_dir(self.directory)
        shutil.rmtree(old, ignore_errors=True)

    def clean_leftovers(self) -> None:
        """Remove what killed saves left behind; restore a checkpoint whose replacement never landed."""
        for entry in self.directory.iterdir():
            m = _LEFTOVER.match(entry.name)
            if not m:
                continue
            kind, name, pid = m.group(1), m.group(2), int(m.group(3))
            if pid != os.getpid() and _pid_alive(pid):
                continue  # another live process may be writing it
            try:
                if kind == "old" and not (self.directory / name).exists():
                    os.replace(entry, self.directory / name)
                    fsync_dir(self.directory)
                else:
                    _remove(entry)
            except FileNotFoundError:
                pass

    def delete(self, path: Path) -> None:
        """Delete one checkpoint; warns (does not raise) when it cannot."""
        # Rename first so a crash mid-delete leaves a hidden leftover, not a half checkpoint in list().
        trash = self.directory / f".trash-{path.name}-{os.getpid()}"
        try:
            os.replace(path, trash)
            shutil.rmtree(trash)
        except OSError as e:
            warnings.warn(f"checkpoint {path}: retention could not delete it ({e})", stacklevel=3)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours to signal, or cannot tell: leave its files alone
    return True
