"""AdamW (default), Adam, SGD with weight decay on weights only: never on biases, norms or embeddings' gains."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: tensors of 2+ dims (matmul and embedding weights) decay; 1-dim ones (biases, norm
    scales) do not — decaying a LayerNorm gain towards 0 only fights the normalisation."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def can_fuse(model: nn.Module) -> bool:
    """PyTorch's fused kernels take floating-point parameters on CPU or CUDA."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """From an OptimizerConfig. Fused where the parameters allow (``fused: null``): one kernel over
    all parameters, and it can drop a non-finite step on the device (``found_inf``), so the loop
    never waits for the device to learn whether a step was finite. ``decay_all``: one group, every
    parameter decayed (as ``torch.optim.Adam(model.parameters(), weight_decay=...)`` does)."""
    if getattr(cfg, "decay_all", False):
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    else:
        groups = param_groups(model, cfg.weight_decay)
    fused = can_fuse(model) if cfg.fused is None else cfg.fused
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    if cfg.name == "adam":
        # Adam's weight_decay is L2 added to the gradient (not decoupled) — kept per group.
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    raise ValueError(f"unknown optimizer {cfg.name!r}")
