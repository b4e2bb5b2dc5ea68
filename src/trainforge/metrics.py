"""Running values between log points, epoch means, best values, and result.json.

Per-step values stay tensors on the device; ``flush`` turns a whole interval into floats with one
host sync (a per-step ``.item()`` is what made some framework loops several times slower).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch



@dataclass
class Interval:
    """What one log interval comes to, in floats: per-step losses and gradient norms, the steps the
    non-finite policy must hear of (index into ``steps``), rates, and extra probes (e.g. the weights' norm)."""

    steps: list[int]
    losses: list[float]
    norms: list[float]
    bad: list[int]
    dropped_at: list[int]
    positions: list[tuple[int, int, int]]  # per step: (epoch, first batch, end batch) of its micro-batches
    rates: dict[str, float]
    probes: dict[str, float]

    @property
    def kept(self) -> list[int]:
        """Indices of the steps whose update was applied."""
        dropped = set(self.dropped_at)
        return [i for i in range(len(self.steps)) if i not in dropped]


@dataclass
class IntervalMeter:
    """Accumulates one log interval: per-step losses, norms and non-finite flags (device tensors),
    counts and timings. ``flush`` stacks them all and syncs once."""

    losses: list[torch.Tensor] = field(default_factory=list)
    norms: list[torch.Tensor] = field(default_factory=list)
    drops: list[torch.Tensor] = field(default_factory=list)
    bads: list[torch.Tensor] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    positions: list[tuple[int, int, int]] = field(default_factory=list)
    batches: int = 0
    samples: int = 0
    tokens: int = 0
    data_wait: float = 0.0
    excluded: float = 0.0  # validation and checkpoint time inside the interval: not training time
    started: float = field(default_factory=time.perf_counter)

    def add_step(self, step: int, loss: torch.Tensor, norm: torch.Tensor | None = None,
                 drop: torch.Tensor | None = None, bad: torch.Tensor | None = None,
                 position: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.steps.append(step)
        self.positions.append(position)
        self.losses.append(loss)
        if norm is None or drop is None or bad is None:  # a manual or foreign step: no flags measured
            zero = torch.zeros((), device=loss.device)
            norm, drop, bad = (zero if t is None else t for t in (norm, drop, bad))
        self.norms.append(norm)
        self.drops.append(drop)
        self.bads.append(bad)

    def add_batch(self, samples: int, tokens: int) -> None:
        self.batches += 1
        self.samples += samples
        self.tokens += tokens

    def flush(self, probes: dict[str, torch.Tensor] | None = None) -> Interval:
        """The interval in floats, with ``probes`` (device scalars) read in the same single sync; resets."""
        elapsed = max(time.perf_counter() - self.started - self.excluded, 1e-9)
        n, names = len(self.steps), list(probes or {})
        values: list[float] = []
        if n or names:
            device = self.losses[0].device if n else next(iter(probes.values())).device
            rows = [torch.stack(t).to(device).float() for t in (self.losses, self.norms, self.drops, self.bads) if t]
            rows += [torch.stack([probes[k].detach().to(device).float().reshape(()) for k in names])] if names else []
            values = torch.cat(rows).tolist()  # the one host sync of the interval
        losses, norms, drops, bads = (values[i * n:(i + 1) * n] for i in range(4))
        n_steps = max(n, 1)
        rates = {
            "throughput/batches_per_s": self.batches / elapsed,
            "throughput/samples_per_s": self.samples / elapsed,
            "time/step": elapsed / n_steps,
            "time/data_wait": self.data_wait / n_steps,
        }
        if self.tokens:
            rates["throughput/tokens_per_s"] = self.tokens / elapsed
        report = Interval(steps=self.steps, losses=losses, norms=norms, bad=[i for i, b in enumerate(bads) if b],
                          dropped_at=[i for i, d in enumerate(drops) if d], positions=self.positions, rates=rates,
                          probes=dict(zip(names, values[4 * n:])))
        self.__init__()  # type: ignore[misc]
        return report


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
