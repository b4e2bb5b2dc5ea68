"""The sanity pass: before the first step, one training batch through the model, the task's loss
and backward, and one validation batch through the evaluation — so a shape or dtype mistake in the
user's model, data or task fails at once, in one short block, instead of after setup, or in the
middle of the first epoch.

It leaves no trace: eval mode (dropout off, no batch-norm statistics updated), no optimizer step,
gradients cleared and every RNG stream restored afterwards. A run with it is bit-identical to a run
without it (``tests/test_sanity.py``). Streamed data is not sampled (reading it would move its position).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset

from .devices import to_device
from .state import capture_rng, restore_rng
from .tasks import batch_size_of
from .user_errors import describe, user_code_error

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def sanity_pass(trainer: "Trainer") -> None:
    model, rng, was_training = trainer.model, capture_rng(), trainer.model.training
    meter = getattr(trainer.task, "loss_parts", None)  # a task's running loss parts (loss/ce, loss/quant)
    parts_before = meter.state_dict() if meter is not None else None
    model.eval()
    try:
        train = _first_batch(trainer.train_loader, "training")
        if train is not None:
            _check(trainer, train, "the first training batch through the model, the task's loss and backward",
                   backward=True)
        val = _first_batch(trainer.val_loader, "validation")
        if val is not None:
            with torch.no_grad():
                _check(trainer, val, "the first validation batch through the model and the task's evaluation",
                       backward=False)
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)
        restore_rng(rng)
        model.train(was_training)
        if meter is not None:
            meter.load_state_dict(parts_before)


def _first_batch(loader: Any, what: str) -> Any:
    if loader is None or isinstance(getattr(loader, "dataset", None), IterableDataset):
        return None
    try:
        for batch in loader:
            if batch_size_of(batch):
                return batch
        return None
    except Exception as e:  # the user's dataset or collate
        raise user_code_error(f"the sanity pass: reading the first {what} batch", e) from e


def _check(trainer: "Trainer", batch: Any, doing: str, *, backward: bool) -> None:
    batch = to_device(batch, trainer.device)
    try:
        with trainer.autocast():
            if backward:
                loss = trainer.task.train_step(trainer.forward_model, batch).loss
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise TypeError(f"the task's loss must be a scalar tensor, got {describe(loss)}")
                loss.backward()
            else:
                trainer.task.summarize(trainer.task.eval_step(trainer.forward_model, batch))
    except Exception as e:
        raise user_code_error(f"the sanity pass: {doing}", e, batch) from e
