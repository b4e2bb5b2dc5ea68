"""BitNetCallback: the run-time side of BitNet training, through the public Callback events only.

It sets the phase-in ``lam`` from the optimizer step before every batch (and at the start, so a
resumed run and its validation see the same ``lam`` as the uninterrupted run: the step is in the
checkpoint, so ``lam`` needs no state of its own), and adds ``bitnet/sparsity`` (the fraction of
zero ternary weights) and ``bitnet/lambda`` to each train log record — read at the log interval only.
"""

from __future__ import annotations

from typing import Any

from ..events import Callback
from .bitnet import bit_layers, phase_in_lambda, set_phase_in, ternary_sparsity


class BitNetCallback(Callback):
    def __init__(self, phase_in_steps: int = 0):
        self.phase_in_steps = int(phase_in_steps)
        self._lam: float | None = None

    def _update(self, trainer: Any) -> None:
        lam = phase_in_lambda(trainer.state.counters.step, self.phase_in_steps)
        if lam != self._lam:  # after phase-in nothing is written per step
            set_phase_in(trainer.model, lam)
            self._lam = lam

    def on_train_start(self, trainer: Any) -> None:
        self._lam = None
        self._update(trainer)

    def on_batch_start(self, trainer: Any) -> None:
        if self.phase_in_steps:
            self._update(trainer)

    def log_values(self, trainer: Any) -> dict[str, float]:
        out = {"bitnet/lambda": phase_in_lambda(trainer.state.counters.step, self.phase_in_steps)}
        if any(layer.weight_bits != 1 for _, layer in bit_layers(trainer.model)):
            out["bitnet/sparsity"] = float(ternary_sparsity(trainer.model))  # log interval only
        return out
