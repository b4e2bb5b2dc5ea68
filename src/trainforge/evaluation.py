"""Evaluation: a task's summed statistics over a loader, without touching the training RNG; and
recording a run's validation (history, best values, the plateau schedule, events, the log)."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from .data.loader import prepare_epoch
from .distributed.reduce import sum_over_ranks
from .devices import to_device
from .events import Event
from .metrics import update_best
from .state import capture_rng, restore_rng
from .tasks import Task, batch_size_of

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def evaluate(model: nn.Module, task: Task, loader: Any, *, forward_model: nn.Module | None = None,
             evaluators: list[Callable[[nn.Module], dict]] = (), autocast: Callable = contextlib.nullcontext,
             device: torch.device = torch.device("cpu"), max_batches: int | None = None, seed: int = 0,
             interrupted: Callable[[], bool] = lambda: False) -> dict[str, float]:
    """Task metrics over ``loader`` (if any) plus each evaluator's, in eval mode and no_grad.

    The RNG streams are restored afterwards: a run with and without validation (or resumed
    mid-validation) trains on identical random streams. ``interrupted()`` is asked before each
    batch; when it says so, ``Interrupted`` is raised (a preemption does not wait for validation).
    """
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    rng = capture_rng()
    try:
        with torch.no_grad():
            if loader is not None:
                metrics.update(_summed(forward_model or model, task, loader, autocast, device, max_batches, seed,
                                       interrupted))
            for evaluator in evaluators:
                metrics.update(evaluator(model))
    finally:
        restore_rng(rng)
        model.train(was_training)
    return metrics


class Interrupted(Exception):
    """Evaluation stopped because ``interrupted()`` said so."""


def _summed(model, task, loader, autocast, device, max_batches, seed, interrupted) -> dict[str, float]:
    sums: dict[str, torch.Tensor] = {}
    prepare_epoch(loader, seed, 0)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        if interrupted():
            raise Interrupted()
        if batch_size_of(batch) == 0:
            continue
        with autocast():
            out = task.eval_step(model, to_device(batch, device))
        for k, v in out.items():
            sums[k] = sums[k] + v if k in sums else v
    sums = sum_over_ranks(sums)  # distributed: each rank evaluated its slice; the metrics are the whole set's
    return task.summarize(sums) if sums else {}


def record_validation(trainer: Trainer, mid_epoch: bool) -> None:
    """Validate now and record the values (history, best, metrics, sinks, plateau schedule)."""
    state, started = trainer.state, time.perf_counter()
    trainer.callbacks.fire(Event.VALIDATION_START, trainer)
    state.pending_validation = True  # a preemption inside it redoes it on resume
    metrics = trainer.validate()
    state.pending_validation = False
    trainer.telemetry.meter.excluded += time.perf_counter() - started  # not training time
    state.counters.last_val_step = state.counters.step
    state.record_now(metrics)
    update_best(state.best, metrics)
    observe = getattr(trainer.schedule, "observe", None)  # plateau
    if observe is not None and trainer.cfg.schedule.monitor in metrics:
        observe(metrics[trainer.cfg.schedule.monitor])
    trainer.callbacks.fire(Event.VALIDATION_END, trainer)
    trainer.log_record("val", {**metrics, "mid_epoch": mid_epoch})
