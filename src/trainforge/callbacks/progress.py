"""A tqdm bar per epoch with ETA and live loss. It is a callback (advances per batch) and a sink
(takes the latest loss and lr from each train record, so it never syncs the device itself)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ..events import Callback

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer


class ProgressBar(Callback):
    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_epoch_start(self, trainer: "Trainer") -> None:
        self._close()  # a rollback restarts an epoch without ending the last one
        c = trainer.state.counters
        total = trainer.batches_per_epoch
        epochs = f"/{trainer.cfg.max_epochs}" if trainer.cfg.max_epochs else ""
        self.bar = tqdm(total=total, initial=c.batch_in_epoch,
                        desc=f"epoch {c.epoch + 1}{epochs}", unit="batch", leave=False,
                        dynamic_ncols=True, mininterval=0.25, file=sys.stderr, disable=self._quiet())

    @staticmethod
    def _quiet() -> bool:
        """Off on ranks other than 0 under torchrun."""
        from ..distributed.context import is_main
        return not is_main()

    def on_batch_end(self, trainer: "Trainer") -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, trainer: "Trainer") -> None:
        self._close()

    def on_train_end(self, trainer: "Trainer") -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- sink side
    def open(self, run_dir: Path, config: dict) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        if self.bar is not None and record.get("kind") == "train" and "train/loss" in record:
            # The string tqdm's set_postfix would build, without its formatting machinery per log.
            self.bar.postfix = f"loss={record['train/loss']:.4f}, lr={record.get('lr', 0):.2e}"

    def close(self) -> None:
        self._close()
