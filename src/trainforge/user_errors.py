"""When the user's code fails (model factory, data function, task, forward, loss): one short block
that says what trainforge was doing, the batch's shapes and dtypes, the user's own frames
(file:line, not trainforge's or torch's internals) and the original message."""

from __future__ import annotations

import os
import sysconfig
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

_LIBRARY_DIRS = tuple(str(Path(p).resolve()) + os.sep for p in {
    Path(__file__).parent,                      # trainforge
    Path(torch.__file__).parent,                # torch
    sysconfig.get_paths()["stdlib"],            # the standard library
    sysconfig.get_paths()["platstdlib"],
})


class UserCodeError(ValueError):
    """The user's code failed while trainforge was doing something; the message is the whole story."""

    def __init__(self, message: str, original: BaseException | None = None):
        super().__init__(message)
        self.original = original


def describe(batch: Any, depth: int = 0) -> str:
    """``(Tensor[64, 19] float32, Tensor[64] int64)``, ``{'x': Tensor[...], 'y': [str x 64]}``."""
    if isinstance(batch, torch.Tensor):
        return f"Tensor{list(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if depth > 2:
        return type(batch).__name__
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in list(batch.items())[:8]) + "}"
    if isinstance(batch, (list, tuple)):
        if batch and all(isinstance(v, str) for v in batch):
            return f"[str x {len(batch)}]"
        inner = ", ".join(describe(v, depth + 1) for v in batch[:8])
        return f"({inner})" if isinstance(batch, tuple) else f"[{inner}]"
    return type(batch).__name__


def user_frames(tb: TracebackType | None, limit: int = 4) -> list[str]:
    """The traceback's frames in the user's own files (innermost last), as ``file:line in fn: code``."""
    frames = []
    for frame in traceback.extract_tb(tb):
        path = str(Path(frame.filename).resolve()) if not frame.filename.startswith("<") else frame.filename
        if frame.filename.startswith("<frozen") or path.startswith(_LIBRARY_DIRS):
            continue
        frames.append(f"{frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}")
    return frames[-limit:]


def user_code_error(doing: str, exc: BaseException, batch: Any = None) -> UserCodeError:
    """The block for ``exc`` raised by user code while trainforge was ``doing`` something."""
    lines = [f"trainforge: {doing} failed", f"  error: {type(exc).__name__}: {exc}"]
    if batch is not None:
        lines.append(f"  batch: {describe(batch)}")
    frames = user_frames(exc.__traceback__)
    if frames:
        lines.append("  in your code:")
        lines += [f"    {f}" for f in frames]
    else:
        lines.append("  (no frame of your own code in the traceback: the failure is inside torch or trainforge, "
                     "called with the model and batch above)")
    return UserCodeError("\n".join(lines), exc)
