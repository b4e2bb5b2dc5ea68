"""Evaluation: a task's summed statistics over a loader, without touching the training RNG."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from .data.loader import prepare_epoch
from .distributed.reduce import sum_over_ranks
from .devices import to_device
from .state import capture_rng, restore_rng
from .tasks import Task, batch_size_of


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
