"""Requests to a running loop — stop, pause, preemption — acted on only at a step boundary.

Any thread, a callback or a signal handler may make a request: each only sets a field. The loop
calls ``at_boundary`` between optimizer steps; a preemption leaves it as ``PreemptRequested``.
"""

from __future__ import annotations

from .state import Lifecycle, Phase


class PreemptRequested(Exception):
    """A SIGTERM/SIGINT arrived: checkpoint the last step boundary, then exit 75."""


class Controls:
    def __init__(self, lifecycle: Lifecycle):
        self.lifecycle = lifecycle
        self.reset()

    def reset(self) -> None:
        """A new fit: no requests."""
        self.stop_reason: str | None = None
        self.pin_final = False
        self.pause_requested = False
        self.preempt_signal: str | None = None

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
        ends the wait)."""
        if self.preempt_signal:
            raise PreemptRequested()
        if self.pause_requested and self.stop_reason is None:
            self.lifecycle.to(Phase.PAUSED)
            while self.lifecycle.phase == Phase.PAUSED and self.stop_reason is None and not self.preempt_signal:
                self.lifecycle.wait_while(Phase.PAUSED, timeout=0.2)
            if self.lifecycle.phase == Phase.PAUSED:
                self.lifecycle.to(Phase.RUNNING)
            if self.preempt_signal:
                raise PreemptRequested()
