"""A user project as the CLI sees it: `model: tiny_project:build_model`, `data: tiny_project:build_data`.

The model has dropout (so resume must restore the torch RNG) and can sleep per forward call
(so a subprocess can be killed at random moments, checkpoint writes included).
"""

import time

import torch
from torch import nn

from trainforge.data.loader import TensorData


class SlowMLP(nn.Module):
    def __init__(self, width=32, sleep=0.0, dropout=0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 4))
        self.sleep = sleep

    def forward(self, x):
        if self.sleep and self.training:
            time.sleep(self.sleep)
        return self.net(x)


def build_model(width=32, sleep=0.0, dropout=0.1):
    torch.manual_seed(1234)
    return SlowMLP(width, sleep, dropout)


def build_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 1).long()) % 4
    cut = n * 3 // 4
    return TensorData(x[:cut], y[:cut]), TensorData(x[cut:], y[cut:])
