"""What every part of the checkpoint package shares: the on-disk names and version, the error,
and the record a listing gives for each checkpoint.

Changing a name or ``VERSION`` here changes the on-disk format (docs/checkpoints.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "trainforge.checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "state.json"
MANIFEST_FILE = "MANIFEST.json"
PINS_FILE = "pins.json"
DATA_FILES = (MODEL_FILE, STATE_FILE, META_FILE)

# Checkpoint names become directory names: keep them plain so they can never escape the
# directory or collide with the hidden working names (.tmp-*, .old-*, .trash-*).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]{0,199}$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, found, verified or loaded.

    The message always names the checkpoint; ``detail`` is the same message without the path
    (what a table column shows) and ``path`` the checkpoint directory when one is known.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, detail: str | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.detail = detail or message


class CheckpointWriteError(CheckpointError):
    """A save that did not happen (disk full, permissions, an I/O error). ``last_valid`` is the
    newest checkpoint that is still whole (None: there is none), which the message names too."""

    def __init__(self, message: str, *, path: Path | str | None = None, detail: str | None = None,
                 last_valid: Path | str | None = None):
        super().__init__(message, path=path, detail=detail)
        self.last_valid = Path(last_valid) if last_valid is not None else None


def error(path: Path | str, detail: str) -> CheckpointError:
    """A CheckpointError whose message names the checkpoint ``path``."""
    return CheckpointError(f"checkpoint {path}: {detail}", path=path, detail=detail)


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    step: int
    epoch: int
    metrics: dict
    monitored: float | None
    size_bytes: int
    pinned: bool
    valid: bool
    reason: str | None
    created: float


def json_bytes(obj: Any) -> bytes:
    """The JSON encoding of every checkpoint file written as JSON (manifest, state.json, pins)."""
    return json.dumps(obj, indent=1).encode("utf-8")
