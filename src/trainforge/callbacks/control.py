"""Early stopping and gates: callbacks that end a run on a monitored metric."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from ..config import parse_condition
from ..events import Callback
from ..metrics import improved

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer

OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


def missing_metric(name: str, trainer: "Trainer") -> str:
    known = ", ".join(sorted(k for k in trainer.state.metrics if "/" in k)) or "none yet"
    return f"monitored metric {name!r} is not produced by this run (metrics: {known})"


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` evaluations.

    ``patience`` means what it means in Keras and Lightning (``wait >= patience``): the run stops
    *at* the ``patience``-th evaluation in a row without improvement (with ``patience=2``: the
    first evaluation sets the best, two that do not beat it stop the run). ``ReduceOnPlateau``
    counts the same way but, like PyTorch's, tolerates ``patience`` and acts at the next one.
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min", patience: int = 5, min_delta: float = 0.0):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.bad_evals = 0
        self._warned = False

    def on_validation_end(self, trainer: "Trainer") -> None:
        value = trainer.state.metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                warnings.warn(f"early stopping: {missing_metric(self.monitor, trainer)}", stacklevel=2)
                self._warned = True
            return
        if improved(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            trainer.stop(f"early stopping: {self.monitor} did not improve by {self.min_delta} for "
                         f"{self.patience} evaluations (best {self.best:.6g})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = state["best"], int(state["bad_evals"])


class Gate(Callback):
    """Passes when every condition holds at one evaluation: pins the final checkpoint and stops.
    A run whose budget ends first records ``gate_passed: false``, the reason and the final values."""

    def __init__(self, conditions: dict[str, str]):
        self.conditions = {name: parse_condition(text) for name, text in conditions.items()}
        self.text = dict(conditions)
        self.passed = False
        self.passed_at: int | None = None
        self.last_values: dict[str, float] = {}

    def check(self, metrics: dict[str, float]) -> list[str]:
        """The conditions that fail (empty when the gate passes)."""
        failing = []
        for name, (op, threshold) in self.conditions.items():
            value = metrics.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)) or not OPS[op](value, threshold):
                failing.append(f"{name} = {value if value is None else round(value, 4)} (needs {op} {threshold})")
        return failing

    def on_validation_end(self, trainer: "Trainer") -> None:
        self.last_values = {n: trainer.state.metrics[n] for n in self.conditions if n in trainer.state.metrics}
        if self.passed or self.check(trainer.state.metrics):
            return
        self.passed, self.passed_at = True, trainer.state.counters.step
        desc = ", ".join(f"{n} {fmt_cond(self.last_values[n], c)}" for n, c in self.conditions.items())
        trainer.stop(f"gate passed at step {self.passed_at}: {desc}", pin=True)

    def on_train_end(self, trainer: "Trainer") -> None:
        trainer.result_extra.update(self.result(trainer))

    def result(self, trainer: "Trainer") -> dict[str, Any]:
        out: dict[str, Any] = {"gate_passed": self.passed, "gate": self.text, "gate_values": self.last_values}
        if not self.passed:
            failing = self.check(trainer.state.metrics) if self.last_values else ["no evaluation ran"]
            out["gate_failure_reason"] = "budget ended before the gate passed: " + "; ".join(failing)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "passed_at": self.passed_at, "last_values": dict(self.last_values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passed, self.passed_at = bool(state["passed"]), state["passed_at"]
        self.last_values = dict(state["last_values"])


def fmt_cond(value: float, cond: tuple[str, float]) -> str:
    return f"{value:.4f} {cond[0]} {cond[1]}"
