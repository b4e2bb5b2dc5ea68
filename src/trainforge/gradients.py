"""Gradient handling between backward and the optimizer step: clipping, statistics, finiteness,
and the non-finite policy. Pure functions; the trainer wires them in a fixed order."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient under ``non_finite: halt`` (or rollback with none left)."""


def grads_of(params: Iterable[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of all gradients, as a tensor (no host sync)."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]), 2.0)


def clip_gradients(params: list[nn.Parameter], clip_norm: float | None, clip_value: float | None) -> torch.Tensor:
    """Clamp by value (if set), then clip the global norm (if set). Returns the global norm measured
    before norm clipping: that is what tells a user how large the gradients really were."""
    if clip_value is not None:
        nn.utils.clip_grad_value_(params, clip_value)
    if clip_norm is not None:
        # Same call as a hand-written loop, so the result is bit-identical to one.
        return nn.utils.clip_grad_norm_(params, clip_norm)
    return total_norm(grads_of(params))


def grad_extremes(params: Iterable[nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and smallest absolute gradient element (tensors). Costs a pass over the gradients,
    so the trainer computes it only on logged steps."""
    grads = grads_of(params)
    if not grads:
        return torch.zeros(()), torch.zeros(())
    maxes = torch.stack([g.detach().abs().max() for g in grads])
    mins = torch.stack([g.detach().abs().min() for g in grads])
    return maxes.max(), mins.min()


def is_finite(*values: torch.Tensor) -> bool:
    """One host sync for all values: True when every one is finite."""
    flags = [torch.isfinite(v.detach()).all() for v in values]
    return bool(torch.stack(flags).all()) if flags else True


def weights_finite(model: nn.Module) -> bool:
    """One fused pass and one sync: the global norm is finite only if every weight is."""
    return math.isfinite(float(total_norm([p.detach() for p in model.parameters()])))


def non_finite_message(step: int, loss: float, norm: float, policy: str) -> str:
    what = "loss" if not torch.isfinite(torch.tensor(loss)) else "gradient norm"
    return f"non-finite {what} at step {step} (loss={loss}, grad norm={norm}); policy '{policy}'"
