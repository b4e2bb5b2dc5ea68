"""The trainer under torchrun: one ``attach`` at construction, two calls inside the step.

``attach(trainer)`` joins the process group, wraps the model (DDP or FSDP2), registers the per-rank
RNG state, and gives the parts that must agree across ranks their reducers (the log interval's
counts, the control flags). In a single process it returns a ``DistributedRun`` whose methods do
nothing, so the loop calls them unconditionally.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..state import RngState, capture_rng, restore_rng
from .context import DistContext, meet_at_exit
from .wrap import set_gradient_sync, wrap_ddp, wrap_fsdp

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer


class DistributedRun:
    """What the loop asks of the distribution: the rank, gradient sync per micro-batch, the loss."""

    def __init__(self, ctx: DistContext, wrapped: Any = None):
        self.ctx = ctx
        self.wrapped = wrapped  # the DDP / FSDP module (``forward_model`` may be a compiled view of it)
        self._synced = True

    @property
    def enabled(self) -> bool:
        return self.ctx.enabled

    @property
    def sharded(self) -> bool:
        """FSDP: every rank writes its shards of each checkpoint."""
        return self.enabled and self.ctx.strategy == "fsdp"

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    def ended_in_step(self) -> None:
        """The run ended on every rank alike (see ``context.meet_at_exit``)."""
        if self.enabled:
            meet_at_exit()

    def before_micro_batch(self, trainer: "Trainer", last: bool) -> None:
        """Before a micro-batch's forward: all-reduce its gradients only when it ends the accumulation
        group (``last``) or the epoch; the others accumulate locally (DDP ``no_sync``)."""
        if not self.enabled:
            return
        c = trainer.state.counters
        sync = last or (trainer.batches_per_epoch is not None and c.batch_in_epoch >= trainer.batches_per_epoch)
        if self.ctx.strategy == "fsdp" and (trainer.batches_per_epoch is None or trainer.state.skip_batches):
            # FSDP2 cannot reduce-scatter after the fact, so it skips the sync only where the group is
            # sure to go on (a stream's end, or batches a rollback excluded, could end it early)
            sync = True
        if sync != self._synced:
            set_gradient_sync(self.wrapped, self.ctx.strategy, sync)
        self._synced = sync

    def after_backward(self, trainer: "Trainer", loss: torch.Tensor) -> torch.Tensor:
        """After the group's last backward: complete a gradient sync the group skipped (it ended early,
        on batches a rollback excluded), and return the mean loss over ranks. The loss then is the
        global batch's, as reported, and its non-finite flag agrees on every rank (the gradients
        already do: they were all-reduced), so a NaN on one rank drops the step on all."""
        if not self.enabled:
            return loss
        if not self._synced:
            if self.ctx.strategy == "fsdp":  # FSDP2 cannot reduce late; say so rather than train apart
                raise RuntimeError("fsdp: an accumulation group ended without its gradient reduce-scatter (a "
                                   "callback skipped the epoch's last batches with SkipBatch); use grad.accumulate: 1 "
                                   "or distributed.strategy: ddp")
            grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
            for g in grads:
                g.div_(self.world_size)
                dist.all_reduce(g)
            set_gradient_sync(self.wrapped, self.ctx.strategy, True)
            self._synced = True
        return self.ctx.mean(loss)


class RankRng:
    """The RNG streams of every rank, one entry per rank, saved by rank 0 (a collective: every rank
    calls ``state_dict`` at the same save). At the same world size each rank gets its own streams
    back; at another, rank r takes saved rank r modulo the saved world size."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx

    def state_dict(self) -> dict[str, Any]:
        states = self.ctx.gather_objects(capture_rng())
        return {**states[0], "ranks": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ranks = state.get("ranks") or [state]
        restore_rng(ranks[self.ctx.rank % len(ranks)])


def attach(trainer: "Trainer", *, optimizer_given: bool = False) -> DistributedRun:
    """Join the process group (under torchrun) and set the trainer up for it; a no-op otherwise."""
    cfg = trainer.cfg
    ctx = DistContext.from_env(cfg, trainer.device)
    if not ctx.enabled:
        return DistributedRun(ctx)
    if trainer.device.type == "cuda":  # each rank its own GPU
        trainer.device = torch.device("cuda", ctx.local_rank)
        trainer.model.to(trainer.device)
    if ctx.strategy == "fsdp":
        if optimizer_given:
            raise ConfigError("distributed.strategy fsdp builds the optimizer on the sharded parameters: pass no "
                              "optimizer= to Trainer (configure it under `optimizer:`)")
        wrapped = wrap_fsdp(trainer.model, ctx, trainer.device)
        _rebuild_optimizer(trainer)
    else:
        wrapped = wrap_ddp(trainer.model, ctx, trainer.device)
    trainer.forward_model = torch.compile(wrapped) if cfg.compile else wrapped
    trainer.state.unregister("rng")
    trainer.state.register("rng", RankRng(ctx))
    if ctx.strategy == "fsdp":  # the registry sees shards; a checkpoint holds every rank's (sharded.py)
        from .sharded import ShardedModel, ShardedOptimizer
        trainer.state.unregister("model")
        trainer.state.register("model", ShardedModel(trainer.model))
        trainer.state.unregister("optimizer")
        trainer.state.register("optimizer", ShardedOptimizer(trainer.model, trainer.optimizer))
    trainer.telemetry.reduce_counts = ctx.sum_ints
    trainer.controls.agree = ctx.max_flags
    if ctx.is_main:
        global_batch = cfg.batch_size * ctx.world_size
        print(f"trainforge: distributed {ctx.strategy} ({ctx.backend}) · world size {ctx.world_size} · per-rank "
              f"batch {cfg.batch_size} · accumulate {cfg.grad.accumulate} · global batch {global_batch} "
              f"({global_batch * cfg.grad.accumulate} samples per optimizer step)", file=sys.stderr)
    return DistributedRun(ctx, wrapped)


def _rebuild_optimizer(trainer: "Trainer") -> None:
    """FSDP2 replaced the parameters with sharded ones: the optimizer (and everything holding the old
    parameters) is built again on them."""
    from ..optim import build_optimizer
    trainer.optimizer = build_optimizer(trainer.model, trainer.cfg.optimizer)
    trainer.base_lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    trainer._params = [p for p in trainer.model.parameters() if p.requires_grad]


__all__ = ["DistributedRun", "RankRng", "RngState", "attach"]
