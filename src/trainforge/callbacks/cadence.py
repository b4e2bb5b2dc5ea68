"""When the run logs, validates by steps, and checkpoints: a callback the trainer is given by default.

The trainer owns how each is done (``log_interval``, ``record_validation``, ``save_checkpoint``);
this callback owns when. It runs first among the callbacks of an event, so a user's
``on_batch_end`` already sees the step's logged values, and the end-of-epoch checkpoint is written
before the next epoch's ``on_epoch_start``. Pass a subclass to change the cadence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import Callback

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer


def is_due(every: int | None, count: int) -> bool:
    return every is not None and count > 0 and count % every == 0


class Cadence(Callback):
    def __init__(self) -> None:
        self._stepped = False  # the batch ending now completed an optimizer step

    def on_after_optimizer_step(self, trainer: "Trainer") -> None:
        self._stepped = True

    def on_batch_end(self, trainer: "Trainer") -> None:
        if not self._stepped:  # a micro-batch inside an accumulation group
            return
        self._stepped = False
        c, cfg = trainer.state.counters, trainer.cfg
        if is_due(cfg.log.every_steps, c.step):
            trainer.log_interval()
        if is_due(cfg.validation.every_steps, c.step) and trainer.has_validation and c.last_val_step != c.step:
            trainer.record_validation(mid_epoch=True)
        if trainer.checkpoints is not None and is_due(cfg.checkpoint.every_steps, c.step):
            trainer.save_checkpoint(periodic=True)

    def on_epoch_start(self, trainer: "Trainer") -> None:
        # The boundary after epoch k is the start of epoch k+1 before any batch: the counters have
        # advanced and nothing has been consumed, so this is the end-of-epoch checkpoint. (The last
        # epoch's is the final checkpoint; a resume or a rollback to this very step does not redo it.)
        c = trainer.state.counters
        if (trainer.checkpoints is not None and c.batch_in_epoch == 0 and trainer.last_checkpoint_step != c.step
                and is_due(trainer.cfg.checkpoint.every_epochs, c.epoch)):
            trainer.save_checkpoint(periodic=True)
