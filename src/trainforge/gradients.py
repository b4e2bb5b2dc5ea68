"""Gradient handling between backward and the optimizer step: clipping, statistics, finiteness,
and the non-finite policy. Pure functions plus ``StepGuard``; the trainer wires them in a fixed order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient under ``non_finite: halt`` (or rollback with none left)."""


def grads_of(params: Iterable[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value as a plain tensor (FSDP shards: the norm over all of them, reduced
    across ranks); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of all gradients, as a tensor (no host sync). Sharded (FSDP) tensors give the
    norm over every shard, the same on all ranks."""
    if not grads:
        return torch.zeros(())
    if hasattr(grads[0], "full_tensor"):
        return _local(nn.utils.get_total_norm(grads, 2.0))
    norms = torch._foreach_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]), 2.0)


def clip_gradients(params: list[nn.Parameter], clip_norm: float | None, clip_value: float | None) -> torch.Tensor:
    """Clamp by value (if set), then clip the global norm (if set). Returns the global norm measured
    before norm clipping: that is what tells a user how large the gradients really were."""
    if clip_value is not None:
        nn.utils.clip_grad_value_(params, clip_value)
    if clip_norm is not None:
        # Same call as a hand-written loop, so the result is bit-identical to one.
        return _local(nn.utils.clip_grad_norm_(params, clip_norm))
    return total_norm(grads_of(params))


def grad_extremes(params: Iterable[nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and smallest absolute gradient element (tensors). Costs a pass over the gradients,
    so the trainer computes it only on logged steps."""
    grads = grads_of(params)
    if not grads:
        return torch.zeros(()), torch.zeros(())
    maxes = torch.stack([_local(g.detach().abs().max()) for g in grads])  # FSDP: over every shard
    mins = torch.stack([_local(g.detach().abs().min()) for g in grads])
    return maxes.max(), mins.min()


def _non_finite(value: torch.Tensor) -> torch.Tensor:
    """1.0 where ``value`` is NaN or inf, else 0.0 (float32, as ``found_inf`` wants it). Two kernels,
    not isfinite's three: x * 0 is NaN exactly when x is not finite."""
    flag = value.mul(0).nan_to_num_(1.0)
    return flag if flag.dtype == torch.float32 else flag.float()


class StepGuard:
    """Drops the update of a non-finite step on the device, without waiting for it.

    ``flags(loss, norm)`` gives two device tensors: ``drop`` (this update must not happen) and
    ``bad`` (the non-finite policy must hear of it: a non-finite loss, or a non-finite gradient
    that is not an fp16 overflow, which the GradScaler handles by lowering its scale). Under
    ``halt`` and ``rollback`` a bad step also drops every later update until the host acts on it at
    the log interval, so the weights stay those of the last good step.

    ``step(optimizer, drop)`` hands ``drop`` to the optimizer as ``found_inf``, as GradScaler does:
    fused optimizers (the ones trainforge builds) skip the update, moments and step count inside
    their kernel. Any other optimizer is asked on the host — one sync per step, documented.
    """

    def __init__(self, policy: str, scaler_enabled: bool):
        self.sticky = policy in ("halt", "rollback")
        self.scaler_enabled = scaler_enabled
        self._dropping: torch.Tensor | None = None

    def flags(self, loss: torch.Tensor, norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(drop, bad) as float 0/1 scalars on the device (``found_inf`` wants a float)."""
        if norm.device != loss.device:
            norm = norm.to(loss.device)
        if self.scaler_enabled:  # an overflow (finite loss, non-finite gradients) is the scaler's, not bad
            bad = _non_finite(loss)
            drop = torch.maximum(bad, _non_finite(norm))
        else:  # NaN/inf in either propagates through the sum (norm >= 0)
            drop = bad = _non_finite(loss + norm)
        if self.sticky:
            self._dropping = bad if self._dropping is None else torch.maximum(self._dropping, bad)
            drop = torch.maximum(drop, self._dropping)
        return drop, bad

    def reset(self) -> None:
        """The host has acted on the interval's verdict (rolled back, or nothing was bad)."""
        self._dropping = None

    @staticmethod
    def step(optimizer: torch.optim.Optimizer, drop: torch.Tensor) -> None:
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf = drop  # type: ignore[attr-defined]
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf  # type: ignore[attr-defined]
        elif not bool(drop):  # an optimizer without found_inf support: one host sync per step
            optimizer.step()


@dataclass
class Verdict:
    """What the non-finite policy makes of a log interval that held a bad step (or bad weights)."""

    action: str  # skip | halt | rollback
    message: str  # about the first bad step
    skipped: list[str]  # skip: one warning per dropped step
    first_bad: int | None  # the first bad step's index (optimizer steps before it)
    position: tuple[int, int, int] | None  # its (epoch, first batch, end batch)


def judge(interval, policy: str, step: int) -> Verdict | None:
    """None when every step and the weights were finite. ``interval`` is a ``metrics.Interval``."""
    weights = interval.probes.get("weights/norm", 0.0)
    if not interval.bad and math.isfinite(weights):
        return None
    messages = [non_finite_message(interval.steps[i] - 1, interval.losses[i], interval.norms[i], policy)
                for i in interval.bad]
    if not interval.bad:
        messages = [f"non-finite weights at step {step}; policy '{policy}'"]
    first = interval.bad[0] if interval.bad else None
    return Verdict(action=policy, message=messages[0],
                   skipped=[f"{m}: step skipped" for m in messages] if interval.bad else messages,
                   first_bad=None if first is None else interval.steps[first] - 1,
                   position=interval.positions[first] if first is not None else interval.positions[-1])


def non_finite_message(step: int, loss: float, norm: float, policy: str) -> str:
    """``step``: the index of the bad step (the optimizer steps taken before it)."""
    what = "loss" if not torch.isfinite(torch.tensor(loss)) else "gradient norm"
    return f"non-finite {what} at step {step} (loss={loss}, grad norm={norm}); policy '{policy}'"
