"""Summed evaluation statistics over ranks: each rank evaluates its slice of the validation data,
then one all-reduce per statistic makes every rank's metrics those of the whole set."""

from __future__ import annotations

import torch
import torch.distributed as dist


def several_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sums`` added up over every rank. The keys are agreed first: a rank whose slice was empty has
    none, and all ranks must issue the same all-reduces in the same order."""
    if not several_ranks():
        return sums
    names: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(names, sorted(sums))
    keys = sorted(set().union(*names))
    if not keys:
        return sums
    device = next(iter(sums.values())).device if sums else _device()
    shapes: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(shapes, {k: (tuple(v.shape), str(v.dtype)) for k, v in sums.items()})
    out = {}
    for k in keys:
        shape, dtype = next(s[k] for s in shapes if k in s)
        value = sums[k].detach().clone() if k in sums else torch.zeros(shape, dtype=getattr(torch, dtype[6:]),
                                                                             device=device)
        original = value.dtype
        value = value.to(torch.float64) if not value.is_floating_point() or original != torch.float64 else value
        dist.all_reduce(value)
        out[k] = value.to(original)
    return out


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
