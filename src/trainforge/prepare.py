"""Everything a run needs in memory before its first step: loaders, schedule, the registry's
run-time parts, default callbacks, the checkpoint manager and the log sinks. Writes nothing: a
refused resume must leave the run directory as it was."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .callbacks import default_callbacks
from .callbacks.logging import RunLogger, build_sinks
from .callbacks.progress import ProgressBar
from .checkpoint import CheckpointError, CheckpointManager
from .config import ConfigError
from .data.loader import loader_for
from .optim import build_schedule
from .optim.schedules import schedule_horizon
from .state import seed_everything

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def prepare_run(trainer: Trainer, train_data: Any, val_data: Any) -> None:
    cfg, run_dir = trainer.cfg, Path(trainer.cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"field `run_dir`: {run_dir} exists and is not a directory; name a directory")
    seed_everything(cfg.seed + trainer.dist.rank)  # distributed: each rank its own random streams
    trainer.train_loader = loader_for(train_data, cfg, train=True)
    trainer.val_loader = loader_for(val_data, cfg, train=False) if val_data is not None else None
    try:
        trainer.batches_per_epoch = len(trainer.train_loader)
    except TypeError:  # an iterable dataset without a length
        trainer.batches_per_epoch = None
    trainer.schedule = build_schedule(cfg.schedule, schedule_horizon(cfg, trainer.batches_per_epoch))
    trainer.state.register_if_stateful("schedule", trainer.schedule)  # plateau
    trainer.state.register_if_stateful("data", getattr(trainer.train_loader, "dataset", None))  # a stream's position
    trainer.telemetry.reset()
    for cb in default_callbacks(cfg, list(trainer.callbacks))[::-1]:
        if cb not in trainer.callbacks:
            trainer.add_callback(cb, first=True)  # defaults go first
    trainer.checkpoints = None
    if cfg.checkpoint.enabled:
        ck = cfg.checkpoint
        if (run_dir / "checkpoints").exists() and not (run_dir / "checkpoints").is_dir():
            raise CheckpointError(f"{run_dir / 'checkpoints'} is a file, not a directory of checkpoints; move it away")
        trainer.checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=ck.keep_last, keep_best=ck.keep_best,
                                                monitor=ck.monitor, mode=ck.mode, async_save=ck.async_save)
    progress = [cb for cb in trainer.callbacks if isinstance(cb, ProgressBar)]
    trainer.logger = RunLogger(build_sinks(cfg, progress), cfg.log.level)
    trainer.apply_lr()
