"""What a run writes into its directory, and when.

The lock first (one writer per run directory; a second process is turned away naming the
holder); then nothing at all until every check has passed (config, data, the checkpoint's fit, the
sanity pass), so a refused command leaves every byte as it was; then ``config.yaml``,
``model_summary.txt`` and the logs; ``result.json`` at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from .config import ConfigError
from .distributed.context import is_main
from .fileio import atomic_write_text
from .results import result_record, write_result
from .runlock import RunLock
from .summary import format_summary


class RunDirectory:
    """Under torchrun only rank 0 writes (DESIGN invariant 8): on other ranks every method is a
    no-op, the lock included (rank 0 holds it for the whole job; the others never open the directory)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.lock: RunLock | None = None
        self.opened = False
        self.writes = is_main()

    def take_lock(self) -> None:
        """Create the directory (a new run) and hold its lock for the whole run."""
        if not self.writes:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"field `run_dir`: {self.path} (or a parent) is a file; name a directory") from None
        self.lock = RunLock(self.path)
        self.lock.acquire()

    def open(self, config: Any, model: nn.Module, logger: Any) -> None:
        """The checks passed: from here on the directory is written."""
        if not self.writes:
            return
        self.opened = True
        if self.lock is not None:
            self.lock.record()
        atomic_write_text(self.path / "config.yaml", config.to_yaml())
        summary = format_summary(model)
        atomic_write_text(self.path / "model_summary.txt", summary + "\n")
        if "console" in config.log.sinks:
            print(summary, file=sys.stderr)
        logger.open(self.path, config.to_dict())

    def write_result(self, state: Any, data_stats: dict[str, float], **fields: Any) -> None:
        if not self.writes:
            return
        write_result(self.path / "result.json", result_record(state, data_stats, **fields))

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
