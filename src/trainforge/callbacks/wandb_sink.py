"""Weights & Biases: the run's records as wandb metrics, the resolved config as wandb config.

``log: {sinks: [..., wandb], wandb_mode: offline | online, wandb_project: NAME}``. The default mode
is ``offline``: the run is written under ``run_dir/wandb/`` with no network (``wandb sync
run_dir/wandb/offline-run-*`` uploads it later); ``online`` logs live (needs ``wandb login``). A
resumed run directory continues the same wandb run (its id is derived from the directory).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .trackers import _metrics, _require


class WandbSink:
    def __init__(self, project: str = "trainforge", mode: str = "offline") -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb mode must be offline, online or disabled, got {mode!r}")
        self.project, self.mode = project, mode
        self.run: Any = None

    def open(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        _require("wandb", "wandb")
        os.environ.setdefault("WANDB_SILENT", "true")  # our console already says what happens
        import wandb  # a few seconds to import: only when used

        run_dir = Path(run_dir).resolve()
        run_id = hashlib.sha1(str(run_dir).encode()).hexdigest()[:16]  # one wandb run per run directory
        self.run = wandb.init(project=self.project, mode=self.mode, dir=str(run_dir), name=run_dir.name,
                              id=run_id, resume="allow", config=config or {}, reinit="create_new")

    def write(self, record: dict[str, Any]) -> None:
        values = dict(_metrics(record))
        if values and self.run is not None:
            self.run.log(values, step=int(record.get("step", 0)))

    def close(self, status: str = "FINISHED") -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
            self.run = None

