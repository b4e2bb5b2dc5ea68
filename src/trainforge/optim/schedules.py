"""Learning-rate schedules as pure functions of the optimizer step (nanoGPT's ``get_lr``).

A schedule returns a factor; the trainer sets ``lr = base_lr * lr_scale * factor(step)`` before each
optimizer step. The step is the only state, so a resume needs nothing else (ReduceOnPlateau,
which depends on validation values, keeps a small state of its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

Schedule = Callable[[int], float]


def constant() -> Schedule:
    return lambda step: 1.0


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1) -> Schedule:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``total_steps``, flat after."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)  # never 0: the first step already learns
        if step >= total_steps:
            return min_lr_ratio
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))
    return factor


def linear(total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> Schedule:
    """Linear warmup, then linear decay to ``min_lr_ratio`` at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - (1.0 - min_lr_ratio) * progress
    return factor


def one_cycle(total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.04) -> Schedule:
    """Cosine rise from ``min_lr_ratio`` to 1 over the warmup, cosine fall to ``min_lr_ratio / 100``."""
    final = min_lr_ratio / 100

    def factor(step: int) -> float:
        if step < warmup_steps:
            p = step / max(1, warmup_steps)
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 - math.cos(math.pi * p))
        p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))
    return factor


def cyclic(cycle_steps: int, min_lr_ratio: float = 0.1) -> Schedule:
    """Triangular cycles between ``min_lr_ratio`` and 1; ``cycle_steps`` per half cycle."""
    def factor(step: int) -> float:
        pos = step % (2 * cycle_steps)
        frac = pos / cycle_steps if pos < cycle_steps else 2 - pos / cycle_steps
        return min_lr_ratio + (1 - min_lr_ratio) * frac
    return factor


def sequence(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``boundaries[i-1]``; each sees steps counted from its own start."""
    if len(boundaries) != len(schedules) - 1:
        raise ValueError("sequence needs one boundary fewer than schedules")
    starts = [0, *boundaries]

    def factor(step: int) -> float:
        i = max(j for j, s in enumerate(starts) if step >= s)
        return schedules[i](step - starts[i])
    return factor


@dataclass
class ReduceOnPlateau:
    """Multiplies the lr by ``factor`` when the monitored value (mode min) stops improving.

    ``patience`` means what it means in PyTorch's ``ReduceLROnPlateau`` (``num_bad_epochs >
    patience``): the number of evaluations in a row without improvement that are *tolerated*; the
    lr drops at the next one, bad evaluation number ``patience + 1`` (with ``patience=0``, at every
    evaluation that does not improve). An improvement is a value below ``best - threshold``
    (absolute). The count restarts at every improvement and after every reduction (no cooldown),
    and the scale never goes below ``min_lr_ratio``. ``EarlyStopping`` counts the same evaluations
    but, like Keras and Lightning, acts *at* bad evaluation number ``patience``.
    """

    patience: int = 5
    factor: float = 0.5
    min_lr_ratio: float = 0.0
    threshold: float = 1e-4
    scale: float = 1.0
    best: float = math.inf
    bad_evals: int = 0

    def __call__(self, step: int) -> float:
        return self.scale

    def observe(self, value: float) -> None:
        if value < self.best - self.threshold:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.scale = max(self.scale * self.factor, self.min_lr_ratio)
            self.bad_evals = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.best, self.bad_evals = state["scale"], state["best"], int(state["bad_evals"])


def build_schedule(cfg, total_steps: int) -> Schedule:
    """From a ScheduleConfig. ``total_steps`` is the run's horizon when the config sets none."""
    total = cfg.total_steps or max(1, total_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup * total)
    if cfg.name == "constant":
        return constant()
    if cfg.name == "warmup_cosine":
        return warmup_cosine(total, warmup, cfg.min_lr_ratio)
    if cfg.name == "linear":
        return linear(total, warmup, cfg.min_lr_ratio)
    if cfg.name == "one_cycle":
        return one_cycle(total, warmup, cfg.min_lr_ratio)
    if cfg.name == "cyclic":
        return cyclic(cfg.cycle_steps, cfg.min_lr_ratio)
    if cfg.name == "plateau":
        return ReduceOnPlateau(patience=cfg.patience, factor=cfg.factor, min_lr_ratio=cfg.min_lr_ratio)
    if cfg.name == "sequence":  # each part runs for its total_steps; the last one to the horizon
        parts, starts, start = [], [], 0
        for part in cfg.schedules:
            span = part.total_steps or max(1, total - start)
            parts.append(build_schedule(part, span))
            starts.append(start)
            start += span
        return sequence(parts, starts[1:])
    raise ValueError(f"unknown schedule {cfg.name!r}")


def schedule_horizon(cfg, batches_per_epoch: int | None) -> int:
    """Total optimizer steps of a run (the decay horizon): the smaller of max_steps and
    max_epochs x steps per epoch. Data without a length needs max_steps or schedule.total_steps."""
    from ..config import ConfigError
    if batches_per_epoch == 0:
        return 1  # nothing to train on; the loop says so
    per_epoch = math.ceil(batches_per_epoch / cfg.grad.accumulate) if batches_per_epoch else 0
    by_epochs = per_epoch * cfg.max_epochs if cfg.max_epochs and per_epoch else None
    candidates = [s for s in (cfg.max_steps, by_epochs) if s]
    if candidates:
        return min(candidates)
    if cfg.schedule.name not in ("constant", "cyclic", "plateau") and cfg.schedule.total_steps is None:
        raise ConfigError("field `schedule.total_steps` — the data has no length, so set schedule.total_steps "
                          "or max_steps for the schedule's horizon")
    return 1
