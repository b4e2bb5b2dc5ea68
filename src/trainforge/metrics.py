"""Running values between log points, epoch means, best values, and result.json.

Per-step values stay tensors on the device; ``flush`` turns a whole interval into floats with one
host sync (a per-step ``.item()`` is what made some framework loops several times slower).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .fileio import atomic_write_text  # re-exported: the trainer writes config.yaml with it


@dataclass
class IntervalMeter:
    """Accumulates one log interval: per-step losses (tensors), counts and timings."""

    losses: list[torch.Tensor] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    batches: int = 0
    samples: int = 0
    tokens: int = 0
    data_wait: float = 0.0
    excluded: float = 0.0  # validation and checkpoint time inside the interval: not training time
    started: float = field(default_factory=time.perf_counter)

    def add_step(self, step: int, loss: torch.Tensor) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def add_batch(self, samples: int, tokens: int) -> None:
        self.batches += 1
        self.samples += samples
        self.tokens += tokens

    def flush(self) -> tuple[list[int], list[float], dict[str, float]]:
        """(steps, per-step losses, rates) for the interval; resets the meter."""
        elapsed = max(time.perf_counter() - self.started - self.excluded, 1e-9)
        values = torch.stack(self.losses).float().tolist() if self.losses else []
        n_steps = max(len(self.steps), 1)
        rates = {
            "throughput/batches_per_s": self.batches / elapsed,
            "throughput/samples_per_s": self.samples / elapsed,
            "time/step": elapsed / n_steps,
            "time/data_wait": self.data_wait / n_steps,
        }
        if self.tokens:
            rates["throughput/tokens_per_s"] = self.tokens / elapsed
        steps = self.steps
        self.__init__()  # type: ignore[misc]
        return steps, values, rates


def epoch_summary(curve: dict[str, list], start_step: int, started: float) -> dict[str, float]:
    """Epoch time, and the mean of the epoch's step losses, read from the train/loss curve (the
    losses reach it at every log flush, so the loop does no per-step tensor work for this)."""
    out = {"time/epoch": time.perf_counter() - started}
    losses = [v for s, v in zip(curve["step"], curve["value"]) if s > start_step]
    if losses:
        out["train/epoch_loss"] = sum(losses) / len(losses)
    return out


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def update_best(best: dict[str, float], metrics: dict[str, float]) -> None:
    """Best-so-far of every loss (min) and accuracy-like metric (max), kept in TrainState.best."""
    for name, value in metrics.items():
        mode = "min" if ("loss" in name or name.startswith("time/")) else "max"
        if not name.startswith(("val/", "eval/", "train/")):
            continue
        if improved(value, best.get(name), mode):
            best[name] = value


def json_safe(value: Any) -> Any:
    """NaN/inf become None so result.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_result(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(json_safe(result), indent=1))


def run_summary(state: Any, data_stats: dict[str, float]) -> dict[str, Any]:
    """The ``summary`` block of result.json from a TrainState."""
    c = state.counters
    return {"steps": c.step, "epochs_completed": c.epoch, "samples_seen": c.samples_seen,
            "tokens_seen": c.tokens_seen, "weight_version": c.weight_version, "skipped_steps": c.skipped_steps,
            "skipped_batches": c.skipped_batches, "rollbacks": c.rollbacks, "best": dict(state.best),
            "data": data_stats, "final": {k: v for k, v in state.metrics.items() if "/" in k or k == "lr"}}
