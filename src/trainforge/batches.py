"""Which batches an epoch trains on: by index from the resume position, less those a rollback
excluded and empty ones; every skip counted with its reason, so that an epoch whose every batch
was skipped can say why nothing was trained."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any, Iterator

from .data.errors import DataError
from .data.loader import epoch_iterator
from .devices import to_device
from .tasks import batch_size_of

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class EpochBatches:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.reasons: dict[str, int] = {}  # why batches were skipped -> how many

    def skipped(self, reason: str) -> None:
        self.trainer.state.counters.skipped_batches += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def __iter__(self) -> Iterator[Any]:
        t = self.trainer
        c, device = t.state.counters, t.device
        waited = time.perf_counter()
        for batch in epoch_iterator(t.train_loader, t.cfg.seed, c.epoch, c.batch_in_epoch):
            t.telemetry.meter.data_wait += time.perf_counter() - waited
            index = c.batch_in_epoch
            c.batch_in_epoch += 1
            if (c.epoch, index) in t.state.skip_batches:
                self.skipped("excluded by a rollback")
            elif batch_size_of(batch) == 0:
                self.skipped("empty (the batch has no tensor field)")
                warnings.warn(f"empty batch {index} in epoch {c.epoch + 1} skipped: it has no tensor field",
                              stacklevel=2)
            else:
                yield batch if device.type == "cpu" else to_device(batch, device)
            waited = time.perf_counter()

    def nothing_trained(self, epoch: int, consumed: int) -> DataError:
        """An epoch whose every batch was skipped is an error, not a finish (nothing was trained)."""
        why = "; ".join(f"{n} {reason}" for reason, n in self.reasons.items()) or "no optimizer step was made"
        return DataError(f"epoch {epoch + 1}: all {consumed} batch(es) were skipped, so nothing was trained ({why})")
