"""One log interval at a time: per-step device values in, one host sync out.

The step hands each optimizer step's loss, gradient norm and non-finite flags to ``Telemetry``
as device tensors; ``close`` reads the whole interval in one sync, acts on the non-finite
policy (skip: count and warn; halt: ``NonFiniteError``; rollback: ``RollBackRequest``), records
the losses and, when logging, writes one train record to the run's sinks.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch

from .callbacks.monitors import memory_stats
from .gradients import NonFiniteError, StepGuard, judge, total_norm
from .metrics import Interval, IntervalMeter

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class RollBackRequest(Exception):
    """A non-finite step under ``non_finite: rollback``; ``batches`` are its (epoch, batch) positions."""

    def __init__(self, message: str, batches: set[tuple[int, int]]):
        super().__init__(message)
        self.message, self.batches = message, batches


class Telemetry:
    def __init__(self, policy: str, scaler_enabled: bool):
        self.policy = policy
        self.meter = IntervalMeter()
        self.guard = StepGuard(policy, scaler_enabled)
        self.extremes: tuple[torch.Tensor, torch.Tensor] | None = None  # verbose: set on logged steps
        self._last_health_check = -float("inf")
        self._memory: dict[str, float] = {}
        # distributed: sums over ranks of a few host integers (set by distributed.attach), called once
        # per interval, so the counts and throughput reported are the global batch's
        self.reduce_counts: Callable[[list[int]], list[int]] | None = None

    def reset(self) -> None:
        """Forget the open interval (its steps were undone by a rollback)."""
        self.meter = IntervalMeter()
        self.guard.reset()

    def close(self, trainer: "Trainer", *, log: bool = True) -> None:
        """Close the interval: one host sync, the non-finite policy acted on, losses into the
        history, and (``log``) one train record to the sinks."""
        if not self.meter.steps:
            return
        if self.reduce_counts is not None:
            self._global_counts(trainer)
        interval = self.meter.flush(self._probes(trainer) if log else {})
        self.act_on_non_finite(trainer, interval)
        state, kept = trainer.state, interval.kept
        state.record_many("train/loss", [interval.steps[i] for i in kept], [interval.losses[i] for i in kept])
        if not log:
            return
        record: dict[str, Any] = {"lr": trainer.lr, **interval.rates, "weight_version": state.counters.weight_version}
        if kept:
            record["train/loss"], record["grad/norm"] = interval.losses[kept[-1]], interval.norms[kept[-1]]
        record.update({k: v for k, v in interval.probes.items() if k.startswith("grad/")})
        record.update(trainer.data_stats())
        record.update(self._memory)
        plugin_values: dict[str, Any] = {}
        for cb in trainer.callbacks.overriding("log_values"):
            plugin_values.update(cb.log_values(trainer))
        state.metrics.update(record)
        state.metrics.update(plugin_values)
        for name, value in {"lr": trainer.lr, **plugin_values}.items():
            state.record(name, interval.steps[-1], value)
        trainer.log_record("train", record, plugin_values)

    def _global_counts(self, trainer: "Trainer") -> None:
        """The interval's samples and tokens summed over ranks (one small all-reduce per interval, as
        every rank closes the same intervals); the counters follow. Batches stay global batches (each
        rank read one slice of each)."""
        m, c = self.meter, trainer.state.counters
        local = [m.samples, m.tokens]
        m.samples, m.tokens = self.reduce_counts(local)
        c.samples_seen += m.samples - local[0]
        c.tokens_seen += m.tokens - local[1]

    def _probes(self, trainer: "Trainer") -> dict[str, torch.Tensor]:
        """Device values read in the interval's one sync: gradient extremes (verbose) and, at most once
        a second, the weights' norm (finite only if every weight is), with memory read beside it."""
        probes: dict[str, torch.Tensor] = {}
        if self.extremes is not None:
            probes["grad/max"], probes["grad/min"] = self.extremes
            self.extremes = None
        now = time.monotonic()
        # distributed: every interval, not by the clock, so every rank takes the weights' norm (a
        # collective under FSDP) at the same steps and reaches the same verdict on it
        if now - self._last_health_check >= 1.0 or self.reduce_counts is not None:
            self._last_health_check = now
            probes["weights/norm"] = total_norm([p.detach() for p in trainer.model.parameters()])
            log = trainer.cfg.log
            if log.memory and log.level != "minimal":
                self._memory = memory_stats()
        return probes

    def act_on_non_finite(self, trainer: "Trainer", interval: Interval) -> None:
        """Reconcile the counters with the steps dropped on the device and apply the policy."""
        c = trainer.state.counters
        c.weight_version -= len(interval.dropped_at)
        verdict = judge(interval, self.policy, c.step)
        if verdict is None:
            self.guard.reset()
        elif verdict.action == "skip":
            for text in verdict.skipped:
                c.skipped_steps += 1
                warnings.warn(f"{text} ({c.skipped_steps} so far)", stacklevel=4)
        elif verdict.action == "rollback":
            epoch, first, end = verdict.position
            raise RollBackRequest(verdict.message, {(epoch, b) for b in range(first, end)})
        else:  # halt: every update from the bad step on was dropped, and the counters say so
            c.step = c.step if verdict.first_bad is None else verdict.first_bad
            raise NonFiniteError(f"{verdict.message}: halting. The run directory {trainer.cfg.run_dir} is intact; "
                                 "use non_finite: skip or rollback to continue past bad steps")
