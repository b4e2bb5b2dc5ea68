"""How a failed command is told: one message and an exit code for every expected failure, and a bug
report (the traceback saved to ``error.log``) for anything else.

The CLI's one outer handler calls ``report``. Expected failures are the errors whose message was
written for the user (a bad config, data file, checkpoint, resume, a locked run directory) — exit
2, or 1 when the run itself failed (a checkpoint that could not be written, a non-finite halt, a
full disk). Anything else is unexpected: the user sees its type, message and innermost location,
and the full traceback goes to ``RUN_DIR/error.log`` (or a file in the temp directory when no run
directory is known). ``--traceback`` prints the traceback in every case.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Sequence

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
ERROR_LOG = "error.log"


def expected(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for a failure whose message was written for the user; None otherwise."""
    from .checkpoint import CheckpointError, CheckpointWriteError
    from .config import ConfigError
    from .data.errors import DataError
    from .gradients import NonFiniteError
    from .runlock import RunDirLocked
    from .snapshot import ResumeError
    from .user_errors import UserCodeError
    if isinstance(exc, UserCodeError):  # already one block: what trainforge was doing, the batch, your frames
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, CheckpointWriteError):
        return EXIT_FAILED, f"trainforge: run failed: {exc}"
    if isinstance(exc, NonFiniteError):
        return EXIT_FAILED, f"trainforge: run failed: {exc}"
    if isinstance(exc, (ConfigError, CheckpointError, ResumeError, DataError, RunDirLocked)):
        return EXIT_BAD_INPUT, f"trainforge: {exc}"
    lost = _process_group_failure(exc)
    if lost is not None:
        return EXIT_FAILED, lost
    if isinstance(exc, UnicodeDecodeError):
        return EXIT_BAD_INPUT, f"trainforge: a file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        what = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EIO):
            return EXIT_FAILED, f"trainforge: run failed: {what.lower()}{where}"
        return EXIT_BAD_INPUT, f"trainforge: {what.lower()}{where}"
    return None


def _process_group_failure(exc: BaseException) -> str | None:
    """A collective that failed under torchrun: another rank died (its connection closed) or stalled
    past ``distributed.timeout_s``. This rank cannot know which one; the launcher (or torchrun's
    summary) names it."""
    try:
        import torch.distributed as dist
        from .distributed.context import rank
    except ImportError:  # pragma: no cover
        return None
    dist_error = getattr(dist, "DistError", ())
    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc)
    if not (isinstance(exc, dist_error) or (isinstance(exc, RuntimeError) and any(
            s in text for s in ("Connection closed by peer", "Connection reset", "Timed out", "timed out", "gloo",
                                "NCCL")))):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return (f"trainforge: rank {rank()}: the process group failed: another rank died or stalled longer than "
            f"distributed.timeout_s ({first[:300]}); the run directory keeps its last complete checkpoint")


def innermost(exc: BaseException) -> str:
    """``file:line in function`` of the frame that raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"


def write_error_log(exc: BaseException, run_dir: Path | None, argv: Sequence[str]) -> Path | None:
    """The full traceback, the command and the versions, where the user will look for them."""
    text = (f"trainforge error at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            f"command: trainforge {' '.join(argv)}\n"
            f"python {sys.version.split()[0]} · {_versions()}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    targets = []
    from .distributed.context import is_main
    if run_dir is not None and Path(run_dir).is_dir() and is_main():  # under torchrun rank 0 writes the run dir
        targets.append(Path(run_dir) / ERROR_LOG)
    targets.append(Path(tempfile.gettempdir()) / f"trainforge-error-{os.getpid()}.log")
    for path in targets:
        try:
            from .fileio import atomic_write_text
            atomic_write_text(path, text)
            return path
        except OSError:
            continue
    return None


def report(exc: BaseException, *, run_dir: Path | None, argv: Sequence[str], show_traceback: bool) -> int:
    """Tell the user (stderr) and return the exit code."""
    known = expected(exc)
    if show_traceback:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if known is not None:
        code, message = known
        from .user_errors import UserCodeError
        if isinstance(exc, UserCodeError) and not show_traceback:  # the user's bug: its whole traceback kept
            log = write_error_log(exc, run_dir, argv)
            message += f"\n  (full traceback: --traceback, or {log})" if log else ""
        print(message, file=sys.stderr)
        return code
    log = write_error_log(exc, run_dir, argv)
    print(f"trainforge: unexpected error: {type(exc).__name__}: {exc}\n"
          f"  raised at {innermost(exc)}\n"
          f"  the full traceback is in {log or '(could not be written)'}"
          + ("" if show_traceback else "; rerun with --traceback to print it") + "\n"
          "  if that place is inside trainforge, this is a trainforge bug: please report it with error.log",
          file=sys.stderr)
    return EXIT_FAILED


def _versions() -> str:
    try:
        import torch
        from . import __version__
        return f"trainforge {__version__} · torch {torch.__version__}"
    except Exception:  # noqa: BLE001 - best effort in an error report
        return "versions unknown"
