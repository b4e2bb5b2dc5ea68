"""Checkpoints: atomic, verified, retained and optionally asynchronous.

One directory per checkpoint (docs/checkpoints.md has the full story)::

    <directory>/<name>/model.safetensors  unique model tensors; tied names kept as aliases in its metadata
                      /state.pt           torch.save(payload["tensors"]), read back with weights_only=True
                      /state.json         payload["meta"] plus step, epoch, metrics, pinned
                      /MANIFEST.json      sha256 and size of each file, step, epoch, metrics, pinned, created
    <directory>/pins.json                 names pinned after their save (replaced atomically)

A checkpoint exists whole or not at all: it is written into a hidden sibling
(``.tmp-<name>-<pid>``), every file and the directory are fsynced, and only then is it renamed
into place. Anything whose name starts with a dot is never listed and is cleaned up (or, for an
interrupted replace, put back) by the next save.

The parts, each owning one thing:

- ``layout``: file names, format version, ``CheckpointError``, ``CheckpointInfo``;
- ``store``: the directory store (temp directory, atomic install and replace, delete, leftovers);
- ``manifest``: sha256 hashing, sealing and verifying files against ``MANIFEST.json``;
- ``codec``: the payload <-> files codec (safetensors with tied-weight aliases, weights-only
  ``state.pt``, JSON meta) and its save-time checks; ``load_checkpoint``;
- ``staging``: host copies of device tensors for async saves;
- ``retention``: ``select_retained`` and the pins file;
- ``table``: ``format_checkpoint_table`` for the CLI;
- ``manager``: ``CheckpointManager``, which puts them together.
"""

from .codec import load_checkpoint
from .layout import CheckpointError, CheckpointInfo, CheckpointWriteError
from .manager import CheckpointManager
from .retention import select_retained
from .table import format_checkpoint_table

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointWriteError",
    "CheckpointManager",
    "format_checkpoint_table",
    "load_checkpoint",
    "select_retained",
]
