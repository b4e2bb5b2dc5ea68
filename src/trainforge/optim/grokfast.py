"""Grokfast gradient filters (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow
Gradients"): add the slow component of the gradient, amplified, to the gradient itself.

- EMA: ``mu <- alpha * mu + (1 - alpha) * g`` (``mu`` starts at the first gradient), then
  ``g <- g + lamb * mu``. State: one gradient-sized buffer.
- MA: keep the last ``window`` gradients; once the queue is full, ``g <- g + lamb * mean(queue)``
  (before, gradients pass unchanged). State: ``window`` gradient-sized buffers, plus their running
  sum in float64 (the mean is ``sum / window``, rounded once to the gradient's dtype).

Both act in place on ``p.grad`` once per optimizer step, after the gradient is complete and
unscaled and before clipping (``Event.AFTER_BACKWARD``). The gradients of all parameters of one
dtype and device are gathered into one flat buffer with a foreach copy; the filter's arithmetic is
then a handful of large elementwise kernels, and a foreach copy writes the result back. Nothing
here waits on the device: the filter never reads a value on the host.

A non-finite gradient (the engine then skips the step, halts or rolls back) must not poison the
state forever: each step computes an ``ok`` flag on the device (all gradients finite, as 1.0 or
0.0) and the state update blends through it (``lerp`` with weight 0 or 1, multiplies), so a bad
step leaves ``mu`` or the queue as it was. Equality with the formulas is exact in value (IEEE
``==``; a zero's sign may differ, as ``x + 0.0`` turns ``-0.0`` into ``0.0``).

Under FSDP2 the gradients are DTensors holding each rank's shard of the synchronized gradient:
each rank filters its shards and keeps their state only (the filter is elementwise, so this is the
1-process filter on the whole gradient), the ``ok`` flag is all-reduced (MIN, on the device) so all
ranks skip the same updates, and ``state_dict`` gathers every rank's part to rank 0. Such a state
loads only at the world size that saved it (resharding it is not supported).

``Grokfast`` is the thin adapter to the loop (a Callback); ``EMAFilter`` and ``MAFilter`` work in
any hand-written loop: ``f = EMAFilter(0.98); ...; loss.backward(); f(model.parameters(), 2.0)``.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
import torch.distributed as dist

from ..events import Callback

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer

LambSpec = Any  # a number, {"warmup": steps, "value": v}, or [[step, value], ...]


# ----------------------------------------------------------------------------------- lamb schedule
def lamb_schedule(spec: LambSpec) -> Callable[[int], float]:
    """``lamb`` as a pure function of the optimizer step (0 for the first step).

    - a number: constant;
    - ``{"warmup": W, "value": V}``: rises linearly from 0 (step 0) to V (step W), then stays V;
    - ``[[s0, v0], [s1, v1], ...]``: linear between breakpoints (steps strictly increasing), v0
      before s0 and the last value after the last breakpoint. ``[[0, 5], [1000, 5], [1001, 0]]``
      amplifies for 1000 steps, then switches the filter's contribution off.
    """
    if isinstance(spec, bool):
        raise ValueError(f"lamb must be a number, {{warmup, value}} or a list of [step, value], got {spec!r}")
    if isinstance(spec, (int, float)):
        value = _check_value(spec)
        return lambda step: value
    if isinstance(spec, dict) or hasattr(spec, "warmup"):
        warmup = int(spec["warmup"] if isinstance(spec, dict) else spec.warmup)
        value = _check_value(spec["value"] if isinstance(spec, dict) else spec.value)
        if warmup < 1:
            raise ValueError(f"lamb warmup must be >= 1 step, got {warmup}")
        return lambda step: value * min(1.0, step / warmup)
    points = [(int(s), _check_value(v)) for s, v in spec]
    if not points:
        raise ValueError("lamb breakpoints: give at least one [step, value]")
    steps = [s for s, _ in points]
    if steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"lamb breakpoints: steps must be >= 0 and strictly increasing, got {steps}")
    values = [v for _, v in points]

    def at(step: int) -> float:
        i = bisect.bisect_right(steps, step)
        if i == 0:
            return values[0]
        if i == len(steps):
            return values[-1]
        s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
        return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return at


def _check_value(v: Any) -> float:
    value = float(v)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"lamb values must be finite and >= 0, got {v!r}")
    return value


# ----------------------------------------------------------------------------------- flat groups
def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter or gradient (a DTensor); a plain tensor itself. Under
    ``no_grad`` ``to_local`` returns the DTensor's own local tensor, so writing into it writes the
    gradient in place."""
    return t.to_local() if hasattr(t, "to_local") else t


class _Group:
    """Parameters of one (device, dtype): their gradients gathered into one flat buffer.

    Under FSDP2 the parameters and gradients are DTensors: the buffer holds this rank's shards (the
    gradients already reduce-scattered, i.e. synchronized). The filter is elementwise, so filtering
    each rank's shards equals filtering the whole gradient, except for the finite flag, which the
    ranks all-reduce over ``process_group`` (None: one process, or DDP, whose gradients agree)."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.shapes = [tuple(_local(p).shape) for p in params]
        numels = [math.prod(s) for s in self.shapes]
        self.numel = sum(numels)
        p0 = _local(params[0])
        self.flat = torch.zeros(self.numel, dtype=p0.dtype, device=p0.device)
        self.views = [v.view(s) for v, s in zip(self.flat.split(numels), self.shapes)]
        mesh = getattr(params[0], "device_mesh", None)
        self.process_group = mesh.get_group() if mesh is not None and mesh.size() > 1 else None

    def gather(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copy the gradients (this rank's shards) into ``flat`` (a parameter without one counts as
        zero); returns the (gradients, views) pairs to write back."""
        grads, views = [], []
        for p, view in zip(self.params, self.views):
            if p.grad is None:
                view.zero_()
            else:
                grads.append(_local(p.grad))
                views.append(view)
        if grads:
            torch._foreach_copy_(views, grads)
        return grads, views


def _groups(params: Iterable[torch.Tensor]) -> list[_Group]:
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.requires_grad:
            local = _local(p)
            # the same keys, in the same order, on every rank: the flags' all-reduces pair up
            by_kind.setdefault((local.device, local.dtype), []).append(p)
    if not by_kind:
        raise ValueError("Grokfast: the model has no parameters that require a gradient")
    return [_Group(ps) for ps in by_kind.values()]


class _Filter:
    """Shared plumbing: groups built at the first call, state loaded lazily (device unknown before)."""

    kind = ""

    def __init__(self) -> None:
        self.groups: list[_Group] | None = None
        self.buffers: list[dict[str, torch.Tensor]] = []
        self._pending: dict[str, Any] | None = None

    @torch.no_grad()
    def __call__(self, params: Iterable[torch.Tensor], lamb: float) -> None:
        """Filter the ``.grad`` of ``params`` in place with this ``lamb``."""
        if self.groups is None:
            self.groups = _groups(params)
            self.buffers = [self._new_state(g) for g in self.groups]
            if self._pending is not None:
                self._load_into_buffers(self._pending)
                self._pending = None
        for group, buf in zip(self.groups, self.buffers):
            grads, views = group.gather()
            if not grads:  # under FSDP no rank has a gradient or every rank has one: all skip together
                continue
            self._apply(group.flat, buf, float(lamb), group.process_group)
            torch._foreach_copy_(grads, views)

    def _new_state(self, group: _Group) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _apply(self, g: torch.Tensor, buf: dict[str, torch.Tensor], lamb: float, group: Any = None) -> None:
        raise NotImplementedError

    # Checkpointed: tensors, numbers and strings only (loads with torch.load(weights_only=True)).
    STATE_KEYS: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """The filter's state. Under FSDP each rank holds its shards' state, and rank 0 alone writes
        the checkpoint's non-sharded part: every rank's state is gathered there (a collective: every
        rank calls this at the same save), as ``{"filter", "world_size", "ranks": [state of rank
        r]}``; the other ranks' return value holds no state (``ranks`` None) and is never written."""
        if self.groups is None:
            return dict(self._pending) if self._pending is not None else {}
        state = {"filter": self.kind,
                 "shapes": [[list(s) for s in g.shapes] for g in self.groups],
                 "groups": [{k: buf[k] for k in self.STATE_KEYS} for buf in self.buffers]}
        group = self.groups[0].process_group
        if group is None:
            return state
        # on the CPU: rank 0 must not unpickle tensors onto another rank's device
        mine = {**state, "groups": [{k: v.cpu() for k, v in g.items()} for g in state["groups"]]}
        world, main = dist.get_world_size(group), dist.get_global_rank(group, 0)
        ranks: list[Any] | None = [None] * world if dist.get_rank() == main else None
        dist.gather_object(mine, ranks, dst=main, group=group)  # to rank 0 alone: not the whole state on every rank
        return {"filter": self.kind, "world_size": world, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("filter") != self.kind:
            raise ValueError(f"Grokfast state is for filter {state.get('filter')!r}, this run uses {self.kind!r}")
        if self.groups is None:
            self._pending = state  # under FSDP, which rank's part is ours is known at the first call
        else:
            self._load_into_buffers(state)

    def _load_into_buffers(self, state: dict[str, Any]) -> None:
        group = self.groups[0].process_group if self.groups else None
        if group is not None or "ranks" in state:
            state = self._rank_part(state, group)
        ours = [[list(s) for s in g.shapes] for g in self.groups or []]
        theirs = [[list(s) for s in shapes] for shapes in state["shapes"]]
        if ours != theirs:
            raise ValueError("Grokfast state does not fit this model: parameter shapes differ "
                             f"({sum(map(len, theirs))} tensors saved, {sum(map(len, ours))} in the model)")
        for buf, saved in zip(self.buffers, state["groups"]):
            for key in self.STATE_KEYS:
                buf[key].copy_(saved[key])

    def _rank_part(self, state: dict[str, Any], group: Any) -> dict[str, Any]:
        """This rank's part of a state saved under FSDP. Each rank's state is that of its shards, whose
        bounds depend on the world size: a state sharded over another number of ranks is refused
        (resharding it is not supported), as is a whole-gradient state (1 process, DDP) under FSDP."""
        world, rank = (dist.get_world_size(group), dist.get_rank(group)) if group is not None else (1, 0)
        ranks = state.get("ranks")
        if ranks is None and "ranks" in state:
            raise ValueError("Grokfast state: this is a non-zero rank's copy of an FSDP state, which holds none")
        saved = len(ranks) if ranks is not None else 1
        if saved != world:
            where = f"sharded over {saved} FSDP ranks" if ranks is not None else "of whole gradients (1 process or DDP)"
            raise ValueError(f"Grokfast state was saved {where}, but this run shards the filter over {world} FSDP "
                             f"rank(s): resharding the grokfast filter's state is not supported (world size "
                             f"{saved} -> {world}); resume at world size {saved}")
        return ranks[rank] if ranks is not None else state


def _finite_flag(g: torch.Tensor, group: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(1.0 if every element of ``g`` is finite else 0.0 — on the device, in ``g``'s dtype; ``g`` with
    its non-finite elements replaced by 0). A NaN or inf propagates through the sum (accumulated in
    float32 at least, so half-precision gradients do not overflow it; a float32 sum beyond 3e38
    counts as non-finite); ``torch.where`` and ``isfinite().all()`` cost several times as much on a
    CPU, where they are not vectorised. The flag blends through ``lerp`` and multiplies, never a
    host read.

    ``group``: the process group over which ``g`` is sharded (FSDP). Each rank sees only its shard,
    so the flag is the MIN over ranks (an all-reduce on the device, queued like a kernel): the state
    of every rank skips the same steps, as the 1-process filter on the whole gradient would."""
    ok = torch.isfinite(g.sum(dtype=torch.promote_types(g.dtype, torch.float32)))
    if group is not None:
        ok = ok.float()  # a float32 flag: every backend reduces it (not all reduce bool or half)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)
    return ok.to(g.dtype), torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


class EMAFilter(_Filter):
    """``mu <- alpha * mu + (1 - alpha) * g`` (``mu`` = the first finite gradient), ``g <- g + lamb * mu``."""

    kind = "ema"
    STATE_KEYS = ("mu", "started")

    def __init__(self, alpha: float = 0.98):
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)

    def _new_state(self, group: _Group) -> dict[str, torch.Tensor]:
        mu = torch.zeros_like(group.flat)
        return {"mu": mu, "started": torch.zeros((), dtype=mu.dtype, device=mu.device),
                "cand": torch.empty_like(mu), "tmp": torch.empty_like(mu)}

    def _apply(self, g: torch.Tensor, buf: dict[str, torch.Tensor], lamb: float, group: Any = None) -> None:
        mu, started, cand, tmp = buf["mu"], buf["started"], buf["cand"], buf["tmp"]
        ok, finite = _finite_flag(g, group)
        # Separate multiplies and an add (never add(alpha=) or lerp here, which fuse or reorder):
        # the same roundings as the formula written out, so a per-tensor reference matches exactly.
        torch.mul(mu, self.alpha, out=cand)
        torch.mul(finite, 1.0 - self.alpha, out=tmp)
        cand.add_(tmp)
        # lerp with a weight of exactly 0 or 1 returns one end: the first gradient starts the
        # average; a non-finite gradient leaves mu as it was.
        torch.lerp(finite, cand, started, out=cand)
        torch.lerp(mu, cand, ok, out=mu)
        torch.maximum(started, ok, out=started)
        torch.mul(mu, lamb, out=tmp)
        g.add_(tmp)


class MAFilter(_Filter):
    """Last ``window`` finite gradients; when the queue is full, ``g <- g + lamb * mean(queue)``."""

    kind = "ma"
    STATE_KEYS = ("queue", "total", "pos", "count")

    def __init__(self, window: int = 100):
        super().__init__()
        if int(window) < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)

    def _new_state(self, group: _Group) -> dict[str, torch.Tensor]:
        g = group.flat
        zero = torch.zeros((), dtype=torch.long, device=g.device)
        return {"queue": torch.zeros(self.window, g.numel(), dtype=g.dtype, device=g.device),
                "total": torch.zeros(g.numel(), dtype=torch.float64, device=g.device),
                "pos": zero.clone(), "count": zero.clone(),
                "g64": torch.empty(g.numel(), dtype=torch.float64, device=g.device),
                "mean": torch.empty_like(g)}

    def _apply(self, g: torch.Tensor, buf: dict[str, torch.Tensor], lamb: float, group: Any = None) -> None:
        queue, total, pos, count, g64, mean = (buf[k] for k in ("queue", "total", "pos", "count", "g64", "mean"))
        ok, finite = _finite_flag(g, group)
        slot = pos.view(1)
        oldest = queue.index_select(0, slot).view(-1)    # zeros while the queue is filling
        g64.copy_(finite)
        g64.sub_(oldest)                                  # in float64 (an out= float64 would compute in float32)
        g64.mul_(ok)                                      # a non-finite gradient changes nothing
        total.add_(g64)                                   # exact while float64 holds the sums exactly
        queue.index_copy_(0, slot, torch.lerp(oldest, finite, ok).view(1, -1))
        step = ok.long()
        torch.remainder(pos + step, self.window, out=pos)
        torch.clamp(count + step, max=self.window, out=count)
        torch.div(total, self.window, out=g64)
        mean.copy_(g64)
        mean.mul_(lamb)
        mean.mul_((count >= self.window).to(mean.dtype))  # gradients pass unchanged until the queue is full
        g.add_(mean)


def make_filter(kind: str, *, alpha: float = 0.98, window: int = 100) -> _Filter:
    if kind == "ema":
        return EMAFilter(alpha)
    if kind == "ma":
        return MAFilter(window)
    raise ValueError(f"filter must be 'ema' or 'ma', got {kind!r}")


# ----------------------------------------------------------------------------------- the callback
class Grokfast(Callback):
    """The filter as a plug-in: acts on the model's gradients at ``on_after_backward`` (once per
    optimizer step, unscaled, before clipping), with ``lamb`` a function of the step; its state is
    checkpointed with the run; ``grokfast/lamb`` is logged.

    ``Grokfast("ema", alpha=0.98, lamb=2.0)`` or ``Grokfast("ma", window=100, lamb=5.0)``; ``lamb``
    may also be ``{"warmup": 100, "value": 2.0}`` or ``[[step, value], ...]`` (see ``lamb_schedule``).
    """

    def __init__(self, filter: str = "ema", *, alpha: float = 0.98, window: int = 100, lamb: LambSpec = 2.0):
        self.filter = make_filter(filter, alpha=alpha, window=window)
        self.lamb = lamb_schedule(lamb)
        self.last_lamb = self.lamb(0)
        self._params: list[torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return "grokfast"

    def on_after_backward(self, trainer: "Trainer") -> None:
        if self._params is None:
            self._params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.last_lamb = self.lamb(trainer.state.counters.step)
        self.filter(self._params, self.last_lamb)

    def log_values(self, trainer: "Trainer") -> dict[str, float]:
        return {"grokfast/lamb": self.last_lamb}

    def state_dict(self) -> dict[str, Any]:
        return self.filter.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.filter.load_state_dict(state)

