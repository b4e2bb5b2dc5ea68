"""One writer per run directory: an OS lock (``fcntl.flock``) on ``RUN_DIR/.lock``, held for a whole fit.

The kernel drops an flock when its holder exits, however it exits (``kill -9`` included), so a
stale lock never blocks the next run: there is nothing to clean up and no pid to trust. The lock
file is never deleted (deleting it would let two processes lock two different files of one
name); it holds the holder's pid, host and start time as JSON, written only once the run has
passed its checks (a refused command changes no byte of the run directory), and read to name the
holder when a second process is turned away.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; runs go unguarded
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunDirLocked(RuntimeError):
    """Another process holds the run directory; the message names it (pid, host, since)."""


class RunLock:
    """``acquire()`` before the first read that decides anything; ``record()`` once writing starts;
    ``release()`` at the end (or let the process end)."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None
        self._recorded = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if fcntl is None or self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise RunDirLocked(f"run dir {self.path.parent} is in use by {holder}: one process writes a run "
                               "directory at a time; wait for it to end (or stop it), or pass --run-dir for "
                               "another run") from None
        except OSError as e:  # a filesystem without locks (some network mounts): say so, go on unguarded
            os.close(fd)
            warnings.warn(f"run dir {self.path.parent}: cannot lock it ({e.strerror}); nothing stops a second "
                          "process from writing into it meanwhile", stacklevel=3)
            return
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._recorded = False

    def record(self) -> None:
        """Write this process's pid, host and start time into the lock file (fsynced)."""
        if self._fd is None:
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": " ".join(sys.argv[:3])}
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)
        self._recorded = True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._recorded:  # the next holder's contenders must not read our pid
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode()) if raw else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if "pid" not in info:
        return "another process (starting up: its pid is not recorded yet)"
    if info.get("host") == socket.gethostname() and not _alive(info["pid"]):
        return f"another process (starting up: the pid recorded, {info['pid']}, is an earlier run's, now gone)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"])) if "since" in info else "?"
    return f"pid {info['pid']} on host {info.get('host', '?')} (since {since})"


def _alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)  # type: ignore[call-overload]
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, TypeError, ValueError):
        return True
    return True
