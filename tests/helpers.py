"""Tiny models and data shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

from trainforge import Callback


def tiny_data(n: int = 64, d: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def tiny_mlp(d: int = 6, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, classes))


def quiet_cfg(tmp_path, **fields):
    """A config with no progress bar and no console output, written under tmp_path."""
    base = {"run_dir": str(tmp_path / "run"), "log": {"progress": False, "sinks": ["jsonl"]}}
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return base


class PreemptAt(Callback):
    """Simulates SIGTERM arriving during step ``step`` (the handler only sets the flag)."""

    def __init__(self, step):
        self.step = step

    def on_after_optimizer_step(self, trainer):
        if trainer.state.counters.step == self.step:
            trainer.request_preemption("SIGTERM")
