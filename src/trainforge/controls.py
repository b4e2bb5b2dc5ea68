"""Requests to a running loop — stop, pause, preemption — acted on only at a step boundary.

Any thread, a callback or a signal handler may make a request: each only sets a field. The loop
calls ``at_boundary`` between optimizer steps; a preemption leaves it as ``PreemptRequested``.
"""

from __future__ import annotations

from typing import Callable

from .state import Lifecycle, Phase


class PreemptRequested(Exception):
    """A SIGTERM/SIGINT arrived: checkpoint the last step boundary, then exit 75."""


class Controls:
    def __init__(self, lifecycle: Lifecycle):
        self.lifecycle = lifecycle
        # distributed: elementwise max over ranks of host flags (set by distributed.attach). A request
        # made on one rank is then acted on by every rank at the same boundary.
        self.agree: Callable[[list[float]], list[float]] | None = None
        self.reset()

    def reset(self) -> None:
        """A new fit: no requests."""
        self.stop_reason: str | None = None
        self.pin_final = False
        self.pause_requested = False
        self._signal: str | None = None  # a signal received here, not yet agreed on
        self._agreed_signal: str | None = None

    @property
    def preempt_signal(self) -> str | None:
        """The preemption being acted on. Distributed, a signal counts only once the ranks agreed on it
        at a boundary, so no rank leaves a validation loop or a step the others are still in."""
        return self._signal if self.agree is None else self._agreed_signal

    @preempt_signal.setter
    def preempt_signal(self, value: str | None) -> None:
        self._signal = value
        if value is None:
            self._agreed_signal = None

    def _agree(self) -> None:
        """One small all-reduce per step boundary: a preemption or a stop on any rank holds for all."""
        preempt, stop = self.agree([float(self._signal is not None), float(self.stop_reason is not None)])
        if preempt and self._agreed_signal is None:
            self._agreed_signal = self._signal or "a signal on another rank"
        if stop and self.stop_reason is None:
            self.stop_reason = "stopped on another rank"

    def stop(self, reason: str, pin: bool) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.pin_final = self.pin_final or pin
        self.pause_requested = False
        if self.lifecycle.phase == Phase.PAUSED:
            self.lifecycle.notify()

    def pause(self) -> None:
        self.pause_requested = True

    def unpause(self) -> None:
        self.pause_requested = False
        if self.lifecycle.phase == Phase.PAUSED:
            self.lifecycle.to(Phase.RUNNING)

    def at_boundary(self) -> None:
        """Raise ``PreemptRequested`` for a preemption; wait here while paused (a stop or a preemption
        ends the wait). Pausing is per process (not agreed across ranks)."""
        if self.agree is not None:
            self._agree()
        if self.preempt_signal:
            raise PreemptRequested()
        if self.pause_requested and self.stop_reason is None:
            self.lifecycle.to(Phase.PAUSED)
            while self.lifecycle.phase == Phase.PAUSED and self.stop_reason is None and not self._signal:
                self.lifecycle.wait_while(Phase.PAUSED, timeout=0.2)
            if self.lifecycle.phase == Phase.PAUSED:
                self.lifecycle.to(Phase.RUNNING)
            if self.preempt_signal:
                raise PreemptRequested()
