"""The model under a strategy: DDP (replicated, gradients all-reduced) or FSDP2 (sharded).

The trainer keeps ``model`` as the plain module (its state_dict keys never change, so a checkpoint
is the same whatever the strategy) and runs forward passes through ``forward_model``, the wrapper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from .context import DistContext


def wrap_ddp(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel: rank 0's parameters and buffers are broadcast at construction (so every
    rank starts from the same weights whatever its seed); backward all-reduces the mean gradient.
    ``broadcast_buffers=False``: no collective inside each forward (evaluation forwards then never
    wait on other ranks); the buffers were made equal at the start."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("distributed.strategy ddp: the model has no trainable parameters")
    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    import inspect
    quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
             else {"broadcast_buffers": False})  # the newer name (torch >= 2.13), same meaning
    return DDP(model, device_ids=ids, **quiet)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The blocks FSDP shards one by one: the children holding parameters of the model's largest
    ModuleList or Sequential (a transformer's layers), else its direct children that hold parameters."""
    def size(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())
    lists = [m for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and size(m) > 0]
    parent = max(lists, key=size) if lists else model
    return [c for c in parent.children() if size(c) > 0 and c is not model]


def wrap_fsdp(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """FSDP2: ``fully_shard`` on each block, then on the root, in place. Parameters become DTensors
    sharded over the ranks; gradients are reduce-scattered, optimizer state lives on the shards."""
    from torch.distributed.fsdp import fully_shard
    blocks = blocks_of(model)
    if not blocks:
        raise ConfigError(f"distributed.strategy fsdp: the model ({type(model).__name__}) has no sub-modules with "
                          "parameters to shard; use distributed.strategy: ddp for it")
    mesh = _mesh(ctx, device)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _mesh(ctx: DistContext, device: torch.device) -> Any:
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device.type, (ctx.world_size,))


def set_gradient_sync(forward_model: nn.Module, strategy: str, sync: bool) -> None:
    """DDP: skip the all-reduce of this micro-batch's backward (``require_backward_grad_sync``, what
    ``no_sync`` sets); FSDP2: skip the reduce-scatter (``set_requires_gradient_sync``)."""
    if strategy == "ddp":
        forward_model.require_backward_grad_sync = sync
    elif strategy == "fsdp":
        forward_model.set_requires_gradient_sync(sync)
