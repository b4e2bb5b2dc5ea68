"""Milestones: the first step, epoch and wall time at which each metric reached its threshold.

``milestones: {"val/accuracy": 0.95, "val/loss": "<= 0.1"}`` records in result.json::

    "milestones": {"val/accuracy": {"threshold": 0.95, "op": ">=", "step": 812, "epoch": 18, "wall_time": 21.4},
                   "val/loss": null}

``null``: not reached (yet). The step is exact: the callback reads the run's recorded curves
(``trainer.state.history``, each value with its step), after every validation, epoch end and log
interval, so a per-step curve (``train/loss``) gives the very step. ``epoch`` (0-based, like
the counters) and ``wall_time`` are taken when the value was recorded or, for per-step values
read at the next log interval, then. ``wall_time`` is seconds of training since the run started,
resumes included (the time between a run's last checkpoint and its kill is not counted).
The milestones reached, the clock and the read positions are checkpointed; a milestone
can end the run (``stop_on_milestone``).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..config import parse_condition
from ..events import Callback
from .control import OPS, missing_metric

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer


def parse_milestone(spec: float | str) -> tuple[str, float]:
    """0.95 -> ('>=', 0.95); '<= 0.1' -> ('<=', 0.1)."""
    if isinstance(spec, str):
        return parse_condition(spec)
    return ">=", float(spec)


class Milestones(Callback):
    """Records when each ``{metric: threshold}`` is first reached; ``stop_on`` ends the run once
    every milestone it names is reached."""

    def __init__(self, thresholds: dict[str, float | str], stop_on: str | list[str] | None = None):
        self.conditions = {name: parse_milestone(spec) for name, spec in thresholds.items()}
        self.stop_on = [stop_on] if isinstance(stop_on, str) else list(stop_on or [])
        unknown = [n for n in self.stop_on if n not in self.conditions]
        if unknown:
            raise ValueError(f"stop_on names {unknown}, which are not milestones ({', '.join(self.conditions)})")
        self.reached: dict[str, dict[str, Any] | None] = {name: None for name in self.conditions}
        self.read: dict[str, int] = {}     # per metric: how many recorded values were already read
        self.elapsed_before = 0.0          # wall time of earlier sessions of this run
        self._started: float | None = None
        self._stopped = False

    @property
    def state_key(self) -> str:
        return "milestones"

    # -- the clock: seconds of this run, resumes included
    def wall_time(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def on_train_start(self, trainer: "Trainer") -> None:
        self._started = time.perf_counter()
        self._publish(trainer)

    def on_validation_end(self, trainer: "Trainer") -> None:
        self._check(trainer)

    def on_epoch_end(self, trainer: "Trainer") -> None:
        self._check(trainer)

    def log_values(self, trainer: "Trainer") -> dict[str, float]:
        self._check(trainer)  # the log interval: per-step values were just recorded
        return {}

    def on_train_end(self, trainer: "Trainer") -> None:
        self._check(trainer)
        produced = set(trainer.state.history) | set(trainer.state.metrics)
        for name in self.conditions:
            if self.reached[name] is None and name not in produced:
                warnings.warn(f"milestone: {missing_metric(name, trainer)}", stacklevel=2)
        self._publish(trainer)

    def _check(self, trainer: "Trainer") -> None:
        c = trainer.state.counters
        newly = False
        for name, (op, threshold) in self.conditions.items():
            curve = trainer.state.history.get(name)
            if curve is None:
                continue
            start = self.read.get(name, 0)
            self.read[name] = len(curve["value"])
            if self.reached[name] is not None:
                continue
            for step, value in zip(curve["step"][start:], curve["value"][start:]):
                if isinstance(value, (int, float)) and not math.isnan(value) and OPS[op](value, threshold):
                    self.reached[name] = {"threshold": threshold, "op": op, "step": int(step), "epoch": c.epoch,
                                          "wall_time": round(self.wall_time(), 3)}
                    newly = True
                    break
        if newly:
            self._publish(trainer)
            done = self.stop_on and all(self.reached[n] is not None for n in self.stop_on)
            if done and not self._stopped:
                self._stopped = True
                desc = ", ".join(f"{n} {self.conditions[n][0]} {self.conditions[n][1]:g} at step "
                                 f"{self.reached[n]['step']}" for n in self.stop_on)
                trainer.stop(f"milestone reached: {desc}")

    def _publish(self, trainer: "Trainer") -> None:
        trainer.result_extra["milestones"] = {n: (dict(r) if r else None) for n, r in self.reached.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"reached": {n: (dict(r) if r else None) for n, r in self.reached.items()},
                "read": dict(self.read), "wall_time": self.wall_time(), "stopped": self._stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("reached", {})
        self.reached = {n: (dict(saved[n]) if saved.get(n) else None) for n in self.conditions}
        self.read = {k: int(v) for k, v in state.get("read", {}).items()}
        self._stopped = bool(state.get("stopped", False))
        if self._started is None:  # a resume: continue the clock from the checkpoint
            self.elapsed_before = float(state.get("wall_time", 0.0))
        # A rollback in a live run keeps its clock running: the time spent is real.
