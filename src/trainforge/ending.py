"""How a run ends: the preemption checkpoint, the pending save, the final phase, result.json, and
what the user is told. Through the Trainer's public interface only.

A run ends once (``trainer.ended``): normally, by an error, or preempted. Whatever the way, a run
never says it saved or finished when it did not: a failed final or preemption save is the run's
failure, and the exit message names the checkpoint that really is there.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from . import snapshot
from .checkpoint import CheckpointWriteError
from .events import Event
from .results import FitResult, Preempted, fit_result
from .state import Phase

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def save_on_preemption(trainer: Trainer) -> None:
    """The SIGTERM/SIGINT checkpoint, of the state at the last step boundary. A failure raises
    (the run is not reported as preempted with a checkpoint)."""
    trainer.state.stopped_reason = "preempted"
    if trainer.checkpoints is None:
        return
    try:
        trainer.save_checkpoint()
        snapshot.settle_saves(trainer, periodic=False)
    except CheckpointWriteError as e:
        raise CheckpointWriteError(f"preempted by {trainer.preemption_requested} at step "
                                   f"{trainer.state.counters.step}, but the checkpoint was NOT saved: {e}",
                                   path=e.path, detail=e.detail, last_valid=e.last_valid) from e


def preempted_exit(trainer: Trainer) -> Preempted:
    """The exit of a preempted run, its message already printed (from Python as from the CLI):
    75 and how to go on when its checkpoint was saved, 1 when none was."""
    c = trainer.state.counters
    saved = trainer.checkpoints is not None and trainer.last_checkpoint_step == c.step
    head = f"trainforge: preempted by {trainer.preemption_requested} at step {c.step} (epoch {c.epoch + 1}); "
    if saved:
        message = head + (f"checkpoint saved: {trainer.last_checkpoint}. "
                          f"Resume with: trainforge resume {trainer.cfg.run_dir}")
    elif trainer.checkpoints is None:
        message = head + ("no checkpoint: checkpointing is disabled (checkpoint.enabled: false), so the "
                          f"{c.step} step(s) trained are lost; a resume starts over")
    else:
        message = head + ("no checkpoint was written (the weights were not finite); the last valid one is "
                          f"{trainer.last_checkpoint or 'none'}")
    exit_ = Preempted(message, 75 if saved else 1)
    print(message, file=sys.stderr)
    exit_.printed = True
    return exit_


def already_finished(trainer: Trainer) -> FitResult:
    """A resume of a run that had already finished: nothing to train, the result as it was."""
    print(f"trainforge: run in {trainer.cfg.run_dir} already finished ({trainer.state.stopped_reason}); "
          "nothing to do", file=sys.stderr)
    trainer.lifecycle.to(Phase.RUNNING)
    trainer.lifecycle.to(Phase.COMPLETED)
    if not (Path(trainer.cfg.run_dir) / "result.json").exists():
        write_result(trainer)
    return result(trainer)


def finish(trainer: Trainer, phase: Phase, exc: BaseException | None = None) -> None:
    """End the run: events, the pending save (a failure of it is the run's failure: it is the final
    or the preemption checkpoint), phase, result.json. Nothing is written into a run directory that
    was never opened (a refused resume, a locked run dir)."""
    trainer.ended = True
    if exc is not None:
        fire_safely(trainer, Event.ERROR)
    fire_safely(trainer, Event.TRAIN_END)
    failed_save = None
    if trainer.checkpoints is not None:
        try:
            trainer.checkpoints.wait()
        except CheckpointWriteError as e:
            trainer.last_checkpoint, trainer.last_checkpoint_step = (str(e.last_valid) if e.last_valid else None), None
            if exc is None:
                failed_save = exc = e
                phase = Phase.ERROR
                trainer.state.stopped_reason = f"error: {type(e).__name__}: {e}"
            else:  # the run's own error comes first; this one is said too
                warnings.warn(f"the pending checkpoint failed as well: {e}", stacklevel=2)
    if trainer.phase != phase:
        trainer.lifecycle.to(phase)
    if trainer.rundir.opened:
        write_result(trainer, error=exc)
        trainer.logger.close(failed=exc is not None)
    if failed_save is not None:
        raise failed_save


def fire_safely(trainer: Trainer, event: Event) -> None:
    try:
        trainer.callbacks.fire(event, trainer)
    except Exception as e:  # teardown must finish even when a callback fails
        warnings.warn(f"callback failed during {event.value}: {e!r}", stacklevel=2)


def result(trainer: Trainer) -> FitResult:
    return fit_result(trainer.state, trainer.data_stats(), run_dir=Path(trainer.cfg.run_dir),
                      final_checkpoint=trainer.last_checkpoint, extra=trainer.result_extra)


def write_result(trainer: Trainer, error: BaseException | None = None) -> None:
    trainer.rundir.write_result(trainer.state, trainer.data_stats(), final_checkpoint=trainer.last_checkpoint,
                                phase=str(trainer.phase), extra=trainer.result_extra,
                                config=trainer.cfg.to_dict(), error=error)
