"""Where tensors live and in what precision the forward runs."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, Callable

import torch

from .config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU. A device this torch cannot use is refused
    before any work, saying why (a CPU-only build, or no such GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "built with CUDA but sees no GPU"
            raise ConfigError(f"field `device`: {name}, but this torch ({torch.__version__}) is {build}; "
                              "use device: auto (CUDA when there is one) or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"field `device`: {name}, but there are {torch.cuda.device_count()} CUDA device(s)")
    return device


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A no-argument context factory: ``nullcontext`` for fp32, else torch.autocast in bf16 / fp16."""
    if precision == "32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)
