"""Events and the Callback base class.

The loop, in pseudocode, with the event fired at each point::

    on_train_start
    for epoch:
        on_epoch_start
        for batch:
            on_batch_start
            forward, loss, scaled backward      (per micro-batch)
            on_after_backward                   (gradients complete and synced, still scaled by 1/N)
            unscale, gradient filters, clip, finite check
            on_before_optimizer_step
            optimizer.step, scaler update, zero_grad, schedule
            on_after_optimizer_step             (weight version just rose)
            on_batch_end
        [validation]  on_validation_start ... on_validation_end
        on_epoch_end
        [checkpoint]  on_checkpoint
    on_train_end                                (always, also after an error)
    on_error                                    (before on_train_end, when the run failed)

A callback method's name equals its event's value, and takes ``(trainer)``; the
trainer's ``state`` holds every counter and the latest metrics.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class Event(str, Enum):
    TRAIN_START = "on_train_start"
    EPOCH_START = "on_epoch_start"
    BATCH_START = "on_batch_start"
    AFTER_BACKWARD = "on_after_backward"
    BEFORE_OPTIMIZER_STEP = "on_before_optimizer_step"
    AFTER_OPTIMIZER_STEP = "on_after_optimizer_step"
    BATCH_END = "on_batch_end"
    VALIDATION_START = "on_validation_start"
    VALIDATION_END = "on_validation_end"
    EPOCH_END = "on_epoch_end"
    CHECKPOINT = "on_checkpoint"
    ERROR = "on_error"
    TRAIN_END = "on_train_end"

    def __str__(self) -> str:
        return self.value


class Callback:
    """Base class: one no-op method per event. Override what you need.

    A callback with state worth resuming overrides ``state_dict`` / ``load_state_dict``;
    the trainer saves it in every checkpoint under the callback's ``state_key``.
    To stop the run, call ``trainer.stop(reason)`` (or raise ``StopTraining``).
    """

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def log_values(self, trainer: "Trainer") -> dict[str, float]:
        """Values to add to each train log record (called at the log interval only, never per step)."""
        return {}

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer") -> None: ...
    def on_batch_start(self, trainer: "Trainer") -> None: ...
    def on_after_backward(self, trainer: "Trainer") -> None: ...
    def on_before_optimizer_step(self, trainer: "Trainer") -> None: ...
    def on_after_optimizer_step(self, trainer: "Trainer") -> None: ...
    def on_batch_end(self, trainer: "Trainer") -> None: ...
    def on_validation_start(self, trainer: "Trainer") -> None: ...
    def on_validation_end(self, trainer: "Trainer") -> None: ...
    def on_epoch_end(self, trainer: "Trainer") -> None: ...
    def on_checkpoint(self, trainer: "Trainer") -> None: ...
    def on_error(self, trainer: "Trainer") -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...


class StopTraining(Exception):
    """Raised by a callback (or the trainer) to end the run normally after the current step."""

    def __init__(self, reason: str = "stopped by callback") -> None:
        super().__init__(reason)
        self.reason = reason


class SkipBatch(Exception):
    """Raised in ``on_batch_start`` to skip the current batch without training on it."""


def overrides(callback: Callback, event: Event | str) -> bool:
    """True when ``callback`` defines its own method for ``event`` (so the base no-op can be skipped)."""
    name = event.value if isinstance(event, Event) else event
    method = getattr(type(callback), name, None)
    return method is not None and method is not getattr(Callback, name)


class CallbackList:
    """A run's callbacks in order, with a table per event of those that override it, so a callback's
    no-op methods cost nothing per step. Adding or removing swaps in new lists: safe mid-dispatch."""

    def __init__(self) -> None:
        self._items: list[Callback] = []
        self._table: dict[str, list[Callback]] = {}

    def __iter__(self) -> Iterator[Callback]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, callback: object) -> bool:
        return any(cb is callback for cb in self._items)

    def add(self, callback: Callback, *, first: bool = False) -> None:
        self._items = [callback, *self._items] if first else [*self._items, callback]
        self._table = {}

    def remove(self, callback: Callback) -> None:
        self._items = [cb for cb in self._items if cb is not callback]
        self._table = {}

    def overriding(self, method: Event | str) -> list[Callback]:
        name = method.value if isinstance(method, Event) else method
        found = self._table.get(name)
        if found is None:
            found = self._table[name] = [cb for cb in self._items if overrides(cb, name)]
        return found

    def fire(self, event: Event, trainer: "Trainer") -> None:
        name = event._value_  # not .value: an Enum property lookup costs as much as the dispatch
        found = self._table.get(name)
        if found is None:
            found = self.overriding(name)
        for cb in found:
            try:
                getattr(cb, name)(trainer)
            except StopTraining as s:
                trainer.stop(s.reason)
