"""Lifecycle phases and the one TrainState that holds everything a resume needs."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch


class Phase(str, Enum):
    IDLE = "IDLE"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    CHECKPOINTING = "CHECKPOINTING"
    RESTORING = "RESTORING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


# Legal moves. COMPLETED and ERROR lead back to INITIALIZING so one Trainer can fit again.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.INITIALIZING, Phase.ERROR}),
    Phase.INITIALIZING: frozenset({Phase.RUNNING, Phase.RESTORING, Phase.ERROR}),
    Phase.RESTORING: frozenset({Phase.RUNNING, Phase.ERROR}),
    Phase.RUNNING: frozenset({Phase.PAUSED, Phase.CHECKPOINTING, Phase.RESTORING, Phase.COMPLETED, Phase.ERROR}),
    Phase.PAUSED: frozenset({Phase.RUNNING, Phase.CHECKPOINTING, Phase.COMPLETED, Phase.ERROR}),
    Phase.CHECKPOINTING: frozenset({Phase.RUNNING, Phase.PAUSED, Phase.COMPLETED, Phase.ERROR}),
    Phase.COMPLETED: frozenset({Phase.INITIALIZING}),
    Phase.ERROR: frozenset({Phase.INITIALIZING}),
}


class IllegalTransition(RuntimeError):
    pass


class Lifecycle:
    """The current phase, changed only along TRANSITIONS; safe to read and wait on from other threads."""

    def __init__(self) -> None:
        self._phase = Phase.IDLE
        self._cond = threading.Condition()

    @property
    def phase(self) -> Phase:
        return self._phase

    def to(self, new: Phase) -> Phase:
        with self._cond:
            old = self._phase
            if new not in TRANSITIONS[old]:
                allowed = ", ".join(sorted(p.value for p in TRANSITIONS[old])) or "none"
                raise IllegalTransition(f"illegal phase transition {old} -> {new} (from {old}: {allowed})")
            self._phase = new
            self._cond.notify_all()
            return old

    def wait_while(self, phase: Phase, timeout: float | None = None) -> Phase:
        """Block while the phase equals ``phase`` (used by the loop while PAUSED)."""
        with self._cond:
            self._cond.wait_for(lambda: self._phase != phase, timeout=timeout)
            return self._phase

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass
class Counters:
    """Where the run is. ``step`` counts optimizer steps; ``batch_in_epoch`` counts batches consumed
    (also skipped ones) in the current epoch, so a resume can skip exactly that many by index."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    weight_version: int = 0
    skipped_steps: int = 0
    skipped_batches: int = 0
    rollbacks: int = 0
    last_val_step: int = -1
    epoch_start_step: int = 0  # optimizer step at which the current epoch began (for its mean loss)


@dataclass
class TrainState:
    """Everything that is checkpointed, listed explicitly.

    ``history`` maps a metric name to ``{"step": [...], "value": [...]}`` (the curves of result.json).
    ``best`` holds the best value seen of the monitored metric. ``lr_scale`` multiplies the schedule:
    ``set_lr`` and rollback change it, and the schedule continues from there.
    ``extra`` carries state registered by plug-ins (callbacks, filters, sampler) under fixed keys.
    """

    counters: Counters = field(default_factory=Counters)
    history: dict[str, dict[str, list]] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    lr_scale: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)  # latest values, not checkpointed
    stopped_reason: str | None = None

    def record(self, name: str, step: int, value: float) -> None:
        curve = self.history.setdefault(name, {"step": [], "value": []})
        curve["step"].append(step)
        curve["value"].append(value)

    def record_many(self, name: str, steps: list[int], values: list[float]) -> None:
        curve = self.history.setdefault(name, {"step": [], "value": []})
        curve["step"].extend(steps)
        curve["value"].extend(values)

    # -- the JSON-able part; tensors (weights, optimizer, RNG) are gathered by the trainer
    def state_dict(self) -> dict[str, Any]:
        return {
            "counters": dict(vars(self.counters)),
            "history": self.history,
            "best": dict(self.best),
            "lr_scale": self.lr_scale,
            "stopped_reason": self.stopped_reason,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters = Counters(**state["counters"])
        self.history = {k: {"step": list(v["step"]), "value": list(v["value"])} for k, v in state["history"].items()}
        self.best = dict(state.get("best", {}))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.stopped_reason = state.get("stopped_reason")


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch (and cuda), in types that load with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached), "kind": str(kind)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
