"""A user project for the distributed tests: a tiny MLP that, for the kill tests, SIGKILLs its own
process at a chosen forward call on a chosen rank (``TRAINFORGE_TEST_KILL=RANK:CALL``, first
attempt only: an elastic restart runs through)."""

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
        kill = os.environ.get("TRAINFORGE_TEST_KILL")
        self.kill = tuple(int(v) for v in kill.split(":")) if kill else None

    def forward(self, x):
        if self.training:
            self.calls += 1
            if (self.kill and int(os.environ.get("RANK", "0")) == self.kill[0] and self.calls == self.kill[1]
                    and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0):
                os.kill(os.getpid(), signal.SIGKILL)
            if self.sleep:
                time.sleep(self.sleep)
        return self.net(x)


def build_model(width=32, dropout=0.0, sleep=0.0):
    torch.manual_seed(1234)
    return MLP(width, dropout, sleep)


def build_data(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 1).long()) % 4
    cut = n * 3 // 4
    return TensorData(x[:cut], y[:cut]), TensorData(x[cut:], y[cut:])
