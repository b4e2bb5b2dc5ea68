"""A user project for the distributed tests: a tiny MLP that misbehaves on one rank at one training
forward call when told to by the environment (``RANK:CALL``): ``TRAINFORGE_TEST_KILL`` SIGKILLs the
process (first attempt only: an elastic restart runs through), ``TRAINFORGE_TEST_STALL`` sleeps a
minute, ``TRAINFORGE_TEST_NAN`` makes the output NaN."""

import os
import signal
import time

import torch
from torch import nn

from trainforge.data.loader import TensorData


class MLP(nn.Module):
    def __init__(self, width=32, dropout=0.0, sleep=0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 4))
        self.sleep, self.calls = sleep, 0
        self.kill, self.nan, self.stall = (_at(os.environ.get(f"TRAINFORGE_TEST_{k}")) for k in ("KILL", "NAN", "STALL"))

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
            if self._now(self.kill) and first_attempt:
                os.kill(os.getpid(), signal.SIGKILL)
            if self._now(self.stall):
                time.sleep(60)
            if self._now(self.nan):
                out = out * float("nan")
            if self.sleep:
                time.sleep(self.sleep)
        return out

    def _now(self, at):
        return at is not None and int(os.environ.get("RANK", "0")) == at[0] and self.calls == at[1]


def _at(text):
    """``RANK:CALL`` -> (rank, call) or None."""
    return tuple(int(v) for v in text.split(":")) if text else None


def build_model(width=32, dropout=0.0, sleep=0.0):
    torch.manual_seed(1234)
    return MLP(width, dropout, sleep)


def build_data(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 1).long()) % 4
    cut = n * 3 // 4
    return TensorData(x[:cut], y[:cut]), TensorData(x[cut:], y[cut:])
