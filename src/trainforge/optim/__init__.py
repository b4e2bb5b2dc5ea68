"""Optimizers (with per-group weight decay), learning-rate schedules and Grokfast gradient filters."""

from .grokfast import EMAFilter, Grokfast, MAFilter, lamb_schedule
from .optimizers import build_optimizer, param_groups
from .schedules import ReduceOnPlateau, build_schedule, constant, cyclic, linear, one_cycle, sequence, warmup_cosine

__all__ = ["build_optimizer", "param_groups", "ReduceOnPlateau", "build_schedule", "constant", "cyclic", "linear",
           "one_cycle", "sequence", "warmup_cosine", "EMAFilter", "Grokfast", "MAFilter", "lamb_schedule"]
