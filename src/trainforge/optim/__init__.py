"""Optimizers (with per-group weight decay) and learning-rate schedules."""

from .optimizers import build_optimizer, param_groups
from .schedules import ReduceOnPlateau, build_schedule, constant, cyclic, linear, one_cycle, sequence, warmup_cosine

__all__ = ["build_optimizer", "param_groups", "ReduceOnPlateau", "build_schedule", "constant", "cyclic", "linear",
           "one_cycle", "sequence", "warmup_cosine"]
