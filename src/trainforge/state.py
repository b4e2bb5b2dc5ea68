"""Lifecycle phases and TrainState, the one registry of everything a resume needs."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

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
    """Where the run is. ``step`` counts optimizer steps taken (the schedule's clock, ``max_steps``);
    ``weight_version`` counts the updates applied, so it lags ``step`` by the non-finite steps
    dropped (``skipped_steps``). ``batch_in_epoch`` counts batches consumed (also skipped ones) in
    the current epoch, so a resume can skip exactly that many by index."""

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

    def budget_reason(self, max_steps: int | None, max_epochs: int | None) -> str | None:
        """Why the budget is used up, or None while it is not."""
        if max_steps is not None and self.step >= max_steps:
            return f"max_steps reached ({max_steps})"
        if max_epochs is not None and self.epoch >= max_epochs:
            return f"max_epochs reached ({max_epochs})"
        return None


class Stateful(Protocol):
    """Anything resumable: a model, an optimizer, a scaler, a callback, a data stream, a filter."""

    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> None: ...


class RngState:
    """The RNG streams as a registered part: captured at the moment of the save (Accelerate #4233)."""

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(state)


@dataclass
class TrainState:
    """The one registry of everything a resume needs.

    Its own fields (JSON): ``counters``; ``history`` maps a metric name to ``{"step": [...],
    "value": [...]}`` (the curves of result.json); ``best`` holds the best value seen of each
    metric; ``lr_scale`` multiplies the schedule (``set_lr`` and rollback change it, the schedule
    continues from there); ``pending_validation`` (a validation was interrupted: redo it);
    ``skip_batches`` (``[epoch, batch]`` pairs a rollback excluded).

    Every other part registers itself under a fixed key with ``register(key, part)``: the model,
    optimizer, scaler, schedule, RNG, data stream, callbacks, gradient filters. A checkpoint is
    ``state_dict()``, a resume ``load_state_dict()``; one line makes a new plug-in resumable.
    """

    counters: Counters = field(default_factory=Counters)
    history: dict[str, dict[str, list]] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    lr_scale: float = 1.0
    pending_validation: bool = False
    skip_batches: set[tuple[int, int]] = field(default_factory=set)
    stopped_reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # latest values, not checkpointed
    parts: dict[str, Stateful] = field(default_factory=dict, repr=False)
    optional: set[str] = field(default_factory=set, repr=False)  # parts a checkpoint may lack (callbacks)

    def register(self, key: str, part: Stateful, *, required: bool = True) -> None:
        """Checkpoint ``part`` under ``key`` from now on. ``required=False``: a checkpoint without
        that key (an older run, a callback added on resume) leaves the part as it is."""
        if not (callable(getattr(part, "state_dict", None)) and callable(getattr(part, "load_state_dict", None))):
            raise TypeError(f"state part {key!r} needs state_dict() and load_state_dict(), "
                            f"got {type(part).__name__}")
        other = self.parts.get(key)
        if other is not None and other is not part:
            raise ValueError(f"state key {key!r} is already registered to a {type(other).__name__}")
        self.parts[key] = part
        if required:
            self.optional.discard(key)
        else:
            self.optional.add(key)

    def register_if_stateful(self, key: str, part: Any) -> None:
        """``key`` holds ``part`` from now on if it has ``state_dict`` and ``load_state_dict``, and nothing
        otherwise (for parts each ``fit`` builds anew: the schedule, the data)."""
        self.unregister(key)
        if callable(getattr(part, "state_dict", None)) and callable(getattr(part, "load_state_dict", None)):
            self.register(key, part)

    def unregister(self, key: str) -> None:
        self.parts.pop(key, None)
        self.optional.discard(key)

    def record(self, name: str, step: int, value: float) -> None:
        curve = self.history.setdefault(name, {"step": [], "value": []})
        curve["step"].append(step)
        curve["value"].append(value)

    def record_now(self, values: dict[str, float]) -> None:
        """The latest values (``metrics``), each also added to its curve at the current step."""
        self.metrics.update(values)
        for name, value in values.items():
            self.record(name, self.counters.step, value)

    def record_many(self, name: str, steps: list[int], values: list[float]) -> None:
        curve = self.history.setdefault(name, {"step": [], "value": []})
        curve["step"].extend(steps)
        curve["value"].extend(values)

    # -- save and restore ------------------------------------------------------------------
    def own_state(self) -> dict[str, Any]:
        """The JSON-able fields (counters, history, best, loop flags)."""
        return {
            "counters": dict(vars(self.counters)),
            "history": self.history,
            "best": dict(self.best),
            "lr_scale": self.lr_scale,
            "pending_validation": self.pending_validation,
            "skip_batches": sorted([list(x) for x in self.skip_batches]),
            "stopped_reason": self.stopped_reason,
        }

    def load_own_state(self, state: dict[str, Any]) -> None:
        self.counters = Counters(**state["counters"])
        self.history = {k: {"step": list(v["step"]), "value": list(v["value"])} for k, v in state["history"].items()}
        self.best = dict(state.get("best", {}))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.pending_validation = bool(state.get("pending_validation", False))
        self.skip_batches = {(int(e), int(b)) for e, b in state.get("skip_batches", [])}
        self.stopped_reason = state.get("stopped_reason")

    def state_dict(self) -> dict[str, Any]:
        """``{"state": own fields, "parts": {key: part.state_dict()}}``; empty part states are left out."""
        parts = {key: part.state_dict() for key, part in self.parts.items()}
        return {"state": self.own_state(), "parts": {k: v for k, v in parts.items() if v not in ({}, None)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every registered part; a required part missing from ``state`` is an error naming it.
        Keys of parts this run does not have (a callback no longer used) are ignored."""
        saved = state["parts"]
        missing = sorted(k for k in self.parts if k not in saved and k not in self.optional)
        if missing:
            raise KeyError(f"the checkpoint has no state for {', '.join(missing)} "
                           f"(it holds: {', '.join(sorted(saved)) or 'nothing'})")
        self.load_own_state(state["state"])
        for key, part in self.parts.items():
            if key in saved:
                part.load_state_dict(saved[key])


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
