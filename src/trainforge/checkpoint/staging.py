"""Host staging for async saves: a copy of the state taken on the trainer's thread, so the
optimizer's in-place updates cannot tear a checkpoint that a background thread is still writing."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch


class HostStaging:
    """Host copies of the state for async saves, in buffers reused from one save to the next.

    Allocating (for CUDA: pinning) fresh host memory costs about as much as the copy itself and
    would be paid inside the training stall at every save; reusing buffers keeps the stall to one
    memcpy, at the price of holding one host copy of the state between saves. Reuse is safe because
    at most one save is in flight: the previous writer is done before the next copy starts.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def snapshot(self, unique: dict, tensors: Any) -> tuple[dict, Any, list]:
        fresh: dict[tuple, torch.Tensor] = {}
        devices: set = set()
        memo: dict[int, torch.Tensor] = {}  # one object saved twice stays one object
        unique = {k: self._tree(v, ("model", k), fresh, devices, memo) for k, v in unique.items()}
        tensors = self._tree(tensors, ("tensors",), fresh, devices, memo)
        self._buffers = fresh  # forget buffers of tensors that are gone
        return unique, tensors, device_events(devices)

    def _tree(self, obj: Any, key: tuple, fresh: dict, devices: set, memo: dict) -> Any:
        if isinstance(obj, torch.Tensor):
            if id(obj) not in memo:
                memo[id(obj)] = fresh[key] = self._copy(obj, self._buffers.get(key), devices)
            return memo[id(obj)]
        if isinstance(obj, dict):
            items = {k: self._tree(v, key + (k,), fresh, devices, memo) for k, v in obj.items()}
            return OrderedDict(items) if type(obj) is OrderedDict else items
        if type(obj) in (list, tuple):
            return type(obj)(self._tree(v, key + (i,), fresh, devices, memo) for i, v in enumerate(obj))
        return obj  # immutable leaves

    @staticmethod
    def _copy(t: torch.Tensor, buf: torch.Tensor | None, devices: set) -> torch.Tensor:
        t = t.detach()
        on_device = t.device.type != "cpu"
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.device.type == "cuda")
        # Off-CPU the copy is non-blocking and ordered on the current stream: the optimizer's later
        # in-place updates run after it, so they cannot tear it; the writer waits on an event first.
        buf.copy_(t, non_blocking=on_device)
        if on_device:
            devices.add(t.device)
        return buf


def device_events(devices: set) -> list:
    """Events the writer waits on before reading the staged copies (CUDA); other devices finish now."""
    events = []
    for dev in devices:
        if dev.type == "cuda":
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(dev))
            events.append(ev)
        else:  # other accelerators: no event API to rely on, so finish the copies now
            getattr(torch, dev.type).synchronize()
    return events
