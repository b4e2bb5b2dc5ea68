"""The loop: fit / validate / step / pause / unpause / stop. Read it top to bottom.

``fit`` -> ``_train`` (epochs; the one place a rollback is caught) -> ``_run_epoch`` (iterates
optimizer steps) -> ``_train_step`` (one optimizer step over an accumulation group, in nanoGPT's
fixed order). When to log, validate by steps and checkpoint is the ``Cadence`` callback's call;
how is here. Control (pause, stop, preemption) acts only at step boundaries.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from . import ending, signals, snapshot
from .batches import EpochBatches
from .callbacks.cadence import is_due
from .callbacks.logging import RunLogger
from .checkpoint import CheckpointManager
from .config import TrainConfig
from .controls import Controls, PreemptRequested
from .data.fingerprint import fingerprint
from .data.loader import loader_for
from .data.spec import data_files, fit_data
from .distributed import attach as attach_distributed
from .devices import autocast_factory, resolve_device, to_device
from .events import Callback, CallbackList, Event, SkipBatch, overrides
from .evaluation import Interrupted, evaluate, record_validation
from .gradients import clip_gradients, grad_extremes
from .host_memory import keep_freed_memory
from .metrics import epoch_summary
from .optim import build_optimizer
from .prepare import prepare_run
from .results import FitResult
from .rundir import RunDirectory
from .sanity import sanity_pass
from .state import Lifecycle, Phase, RngState, TrainState
from .tasks import Task, make_task
from .telemetry import RollBackRequest, Telemetry
from .transforms import apply_model_transforms


class Trainer:
    """Orchestrates model, task, optimizer, schedule, data, metrics, callbacks and checkpoints.

    ``Trainer(model, cfg, task="classification", callbacks=[...]).fit(train, val)``. ``evaluators``
    are functions ``model -> {metric: value}`` run after each validation (e.g. generation-based
    compliance); ``optimizer`` replaces the one built from ``cfg.optimizer``.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig | dict | None = None, *, task: Any = None,
                 callbacks: Iterable[Callback] = (), evaluators: Iterable[Callable[[nn.Module], dict]] = (),
                 optimizer: torch.optim.Optimizer | None = None):
        self.cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg or {})
        model, task, callbacks = apply_model_transforms(model, self.cfg, task=task, callbacks=callbacks)  # bitnet:, loss:
        self.device = resolve_device(self.cfg.device)
        self.model = model.to(self.device)
        self.forward_model = torch.compile(self.model) if self.cfg.compile else self.model
        self.task: Task = make_task(task if task is not None else self.cfg.task)
        self.optimizer = optimizer or build_optimizer(self.model, self.cfg.optimizer)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        # model order, as a hand-written loop passes them to clip_grad_norm_ (same bits)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "16-mixed")
        self.autocast = autocast_factory(self.cfg.precision, self.device)
        self.state = TrainState()
        self.state.register("model", self.model)
        self.state.register("optimizer", self.optimizer)
        self.state.register("rng", RngState())
        if self.scaler.is_enabled():
            self.state.register("scaler", self.scaler)
        self.lifecycle = Lifecycle()
        self.callbacks = CallbackList()
        self.evaluators = list(evaluators)
        self.result_extra: dict[str, Any] = {}
        self.schedule: Callable[[int], float] = lambda step: 1.0
        self.checkpoints: CheckpointManager | None = None
        self.last_checkpoint: str | None = None
        self.last_checkpoint_step: int | None = None
        self.train_loader = self.val_loader = None
        self.batches_per_epoch: int | None = 0
        self.logger = RunLogger([])
        self.telemetry = Telemetry(self.cfg.grad.non_finite, self.scaler.is_enabled())
        self.controls = Controls(self.lifecycle)
        self.data_fingerprint: dict[str, Any] | None = None
        self.failed_saves = 0  # periodic saves in a row that failed (the next boundary retries)
        self.rundir = RunDirectory(self.cfg.run_dir)
        self.ended = False  # the run was ended (ending.finish): it is not ended twice
        self.batches = EpochBatches(self)  # the current epoch's
        self.dist = attach_distributed(self, optimizer_given=optimizer is not None)  # torchrun: process group, DDP/FSDP
        for cb in callbacks:
            self.add_callback(cb)

    # ------------------------------------------------------------------ public control
    @property
    def phase(self) -> Phase:
        return self.lifecycle.phase

    @property
    def opened(self) -> bool:
        """The last fit passed its checks and wrote into the run directory."""
        return self.rundir.opened

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, value: float) -> None:
        """Set the learning rate now; the schedule continues from it (its shape is kept, scaled)."""
        if not value > 0:
            raise ValueError(f"learning rate must be > 0, got {value}")
        self.state.lr_scale = value / (self.base_lrs[0] * self.schedule(self.state.counters.step))
        self.apply_lr()

    def pause(self) -> None:
        """Pause at the next step boundary (from a callback, another thread, or SIGUSR1)."""
        self.controls.pause()

    def unpause(self) -> None:
        """Leave PAUSED (another thread, or SIGUSR2)."""
        self.controls.unpause()

    def resume(self) -> None:
        """Deprecated name of ``unpause`` (``resume`` means continuing from a checkpoint)."""
        warnings.warn("Trainer.resume() is deprecated: use unpause()", DeprecationWarning, stacklevel=2)
        self.unpause()

    def stop(self, reason: str = "stopped by request", *, pin: bool = False) -> None:
        """End the run normally at the next step boundary; ``pin`` keeps its final checkpoint forever."""
        self.controls.stop(reason, pin)

    def request_preemption(self, signal_name: str) -> None:
        """Checkpoint at the next step boundary (also inside validation), then exit 75."""
        self.controls.preempt_signal = signal_name

    @property
    def preemption_requested(self) -> str | None:
        return self.controls.preempt_signal

    def add_callback(self, callback: Callback, *, first: bool = False) -> None:
        """Add a callback (at run time too); one with ``state_dict`` is checkpointed from now on."""
        self.callbacks.add(callback, first=first)
        if overrides(callback, "state_dict"):
            self.state.register(f"callback/{callback.state_key}", callback, required=False)

    def remove_callback(self, callback: Callback) -> None:
        self.callbacks.remove(callback)
        if self.state.parts.get(f"callback/{callback.state_key}") is callback:
            self.state.unregister(f"callback/{callback.state_key}")

    # ------------------------------------------------------------------ fit
    def fit(self, train_data: Any = None, val_data: Any = None, *, resume_from: str | Path | None = None,
            allow_data_change: bool = False) -> FitResult:
        """Train. ``train_data`` may also be a data spec ``{"path": ..., "format": ..., ...}`` (its
        validation part is used when ``val_data`` is None), or None to use the config's ``data`` spec.

        Every check (config, data, the checkpoint's fit) runs before the first byte is written into
        the run directory, under its lock. A resume on training data that changed since the
        checkpoint is refused unless ``allow_data_change`` (then result.json records the change)."""
        self.lifecycle.to(Phase.INITIALIZING)
        keep_freed_memory()  # activations are reused every step: don't hand them back to the kernel
        self.controls.reset()
        self.rundir, self.ended = RunDirectory(self.cfg.run_dir), False
        preempted = False
        try:
            files = data_files(train_data, self.cfg)
            train_data, val_data = fit_data(train_data, val_data, self.cfg)
            prepare_run(self, train_data, val_data)
            self.data_fingerprint = fingerprint(train_data, files)
            self.rundir.take_lock()
            if resume_from is not None and snapshot.resume_run(self, resume_from, allow_data_change=allow_data_change):
                return ending.already_finished(self)
            if resume_from is None and self.checkpoints is not None and self.checkpoints.list(deep=False):
                warnings.warn(f"starting a fresh run in {self.cfg.run_dir}, which holds checkpoints of an earlier "
                              "run: resume_from='latest' would continue it instead", stacklevel=2)
            if self.cfg.sanity_check:
                sanity_pass(self)
            self.rundir.open(self.cfg, self.model, self.logger)
            self.lifecycle.to(Phase.RUNNING)
            with signals.handlers(self):  # kept through the preemption checkpoint: a second signal is noted
                try:
                    self._fire(Event.TRAIN_START)
                    self._train()
                except PreemptRequested:
                    preempted = True
                    ending.save_on_preemption(self)
            ending.finish(self, Phase.COMPLETED)
            self.dist.ended_in_step()  # finished, stopped or preempted: every rank alike
        except BaseException as exc:
            if not self.ended:
                self.state.stopped_reason = f"error: {type(exc).__name__}: {exc}"
                ending.finish(self, Phase.ERROR, exc)
            raise
        finally:
            self.rundir.release()
        if preempted:
            raise ending.preempted_exit(self)
        return ending.result(self)

    def _train(self) -> None:
        while True:
            try:
                if self.state.pending_validation:
                    self.record_validation(mid_epoch=True)
                while self.controls.stop_reason is None and not self.budget_reached():
                    step, epoch = self.state.counters.step, self.state.counters.epoch
                    consumed = self._run_epoch()
                    if consumed == 0 and self.batches_per_epoch == 0:
                        warnings.warn("training data is empty: nothing to train on", stacklevel=3)
                        self.controls.stop_reason = "training data is empty"
                    elif consumed > 0 and self.state.counters.step == step and self.controls.stop_reason is None:
                        raise self.batches.nothing_trained(epoch, consumed)
                self.log_interval()
                break
            except RollBackRequest as rb:  # the one place a non-finite step under `rollback` is handled
                snapshot.rollback(self, rb.message, rb.batches)
        c = self.state.counters
        self.state.stopped_reason = self.controls.stop_reason or c.budget_reason(self.cfg.max_steps, self.cfg.max_epochs)
        if self.has_validation and c.last_val_step != c.step and c.step > 0:
            self.record_validation(mid_epoch=True)  # the result holds final validation values
        if self.checkpoints is not None and (self.cfg.checkpoint.save_last or self.controls.pin_final):
            self.save_checkpoint(pinned=self.controls.pin_final)

    def _run_epoch(self) -> int:
        """Optimizer steps until the epoch's batches run out or a boundary ends the run. Returns the
        batches consumed."""
        c = self.state.counters
        if c.batch_in_epoch == 0:
            c.epoch_start_step = c.step
        start = c.batch_in_epoch
        self._fire(Event.EPOCH_START)
        self.model.train()
        self._epoch_started = time.perf_counter()
        self.batches = EpochBatches(self)
        batches = iter(self.batches)
        while self._train_step(batches):
            self.controls.at_boundary()
            if self.controls.stop_reason is not None or self.budget_reached():
                return c.batch_in_epoch - start
        consumed = c.batch_in_epoch - start  # _end_epoch starts the next epoch's count
        self._end_epoch()
        return consumed

    # ------------------------------------------------------------------ one optimizer step
    def _train_step(self, batches: Iterator[Any]) -> bool:
        """One optimizer step over up to ``grad.accumulate`` micro-batches pulled from ``batches``
        (fewer at an epoch's end). False when no batch was left. No host sync: a non-finite step is
        dropped on the device (StepGuard) and reported at the log interval."""
        c, accumulate = self.state.counters, self.cfg.grad.accumulate
        self.apply_lr()
        first, micro, loss_sum, end_pending = c.batch_in_epoch, 0, None, False
        for batch in batches:
            if end_pending:
                self._fire(Event.BATCH_END)  # the previous micro-batch's; the last one's follows the step
            try:
                self._fire(Event.BATCH_START)
            except SkipBatch:
                self.batches.skipped("skipped by a callback (SkipBatch)")
                end_pending = False
                continue
            self.dist.before_micro_batch(self, last=micro + 1 == accumulate)  # DDP no_sync but on the last
            with self.autocast():
                out = self.task.train_step(self.forward_model, batch)
            # loss / N per micro-batch, so N micro-batches give the gradient of their mean (x / 1 == x: no kernel)
            self.scaler.scale(out.loss if accumulate == 1 else out.loss / accumulate).backward()
            loss = out.loss.detach()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            self.telemetry.meter.add_batch(out.samples, out.tokens)
            c.samples_seen += out.samples
            c.tokens_seen += out.tokens
            micro, end_pending = micro + 1, True
            if micro == accumulate:
                break
        if micro == 0:
            return False
        loss = loss_sum if accumulate == 1 else loss_sum / accumulate
        loss = self.dist.after_backward(self, loss)  # distributed: the mean over ranks (one scalar all-reduce)
        self.scaler.unscale_(self.optimizer)
        self._fire(Event.AFTER_BACKWARD)  # gradients complete and unscaled: filters act here
        norm = clip_gradients(self._params, self.cfg.grad.clip_norm, self.cfg.grad.clip_value)
        if self.cfg.log.level == "verbose" and (c.step + 1) % self.cfg.log.every_steps == 0:
            self.telemetry.extremes = grad_extremes(self._params)
        drop, bad = self.telemetry.guard.flags(loss, norm)
        self._fire(Event.BEFORE_OPTIMIZER_STEP)
        self.telemetry.guard.step(self.optimizer, drop)
        if self.scaler.is_enabled():
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        c.step += 1
        c.weight_version += 1  # less the dropped ones, counted at the log interval
        self.telemetry.meter.add_step(c.step, loss, norm, drop, bad, position=(c.epoch, first, c.batch_in_epoch))
        self._fire(Event.AFTER_OPTIMIZER_STEP)
        self._fire(Event.BATCH_END)
        return True

    def step(self, batch: Any) -> dict[str, float]:
        """One optimizer step on one batch, outside ``fit`` (manual use; syncs to return the loss). A
        non-finite step is acted on at once, by the config's ``grad.non_finite`` policy."""
        self.model.train()
        self._train_step(iter([to_device(batch, self.device)]))
        interval = self.telemetry.meter.flush()
        self.telemetry.act_on_non_finite(self, interval)
        return {"loss": interval.losses[-1], "lr": self.lr}

    def apply_lr(self) -> None:
        """Set every group's lr from the schedule at the current step, times ``state.lr_scale``."""
        factor = self.state.lr_scale * self.schedule(self.state.counters.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def log_interval(self, *, log: bool = True) -> None:
        """Close the log interval now (see ``Telemetry.close``)."""
        self.telemetry.close(self, log=log)

    # ------------------------------------------------------------------ validation
    @property
    def has_validation(self) -> bool:
        v = self.cfg.validation
        return (self.val_loader is not None or bool(self.evaluators)) and (v.every_epochs or v.every_steps) is not None

    def validate(self, val_data: Any = None) -> dict[str, float]:
        """Evaluate on ``val_data`` (or the fit's validation data): task metrics plus evaluators."""
        loader = loader_for(val_data, self.cfg, train=False) if val_data is not None else self.val_loader
        if loader is None and not self.evaluators:
            raise ValueError("validate() needs validation data: pass it here or to fit(..., val_data)")
        try:
            return evaluate(self.model, self.task, loader, forward_model=self.forward_model, evaluators=self.evaluators,
                            autocast=self.autocast, device=self.device, max_batches=self.cfg.validation.max_batches,
                            seed=self.cfg.seed, interrupted=lambda: self.controls.preempt_signal is not None)
        except Interrupted:
            raise PreemptRequested() from None

    def record_validation(self, mid_epoch: bool) -> None:
        """Validate now and record the values (``evaluation.record_validation``)."""
        record_validation(self, mid_epoch)

    def _end_epoch(self) -> None:
        c = self.state.counters
        self.log_interval(log=False)
        if self.has_validation and is_due(self.cfg.validation.every_epochs, c.epoch + 1) and c.last_val_step != c.step:
            self.record_validation(mid_epoch=False)
        curve = self.state.history.get("train/loss", {"step": [], "value": []})
        summary = epoch_summary(curve, c.epoch_start_step, self._epoch_started)
        self.state.record_now(summary)
        self._fire(Event.EPOCH_END)
        self.log_record("epoch", summary)
        c.epoch += 1
        c.batch_in_epoch = 0

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, name: str | None = None, *, pinned: bool = False, periodic: bool = False) -> str | None:
        """Write the whole TrainState now (between steps). Returns the checkpoint path, or None when
        nothing was written (non-finite weights; a failed ``periodic`` save, retried at the next
        boundary). A save that fails otherwise raises ``CheckpointWriteError`` naming the cause and the
        last valid checkpoint (``snapshot.save_failed``)."""
        return snapshot.save_checkpoint(self, name, pinned=pinned, periodic=periodic)

    # ------------------------------------------------------------------ control, events, logging
    def budget_reached(self) -> bool:
        """True once ``max_steps`` or ``max_epochs`` is used up."""
        return self.state.counters.budget_reason(self.cfg.max_steps, self.cfg.max_epochs) is not None

    def _fire(self, event: Event) -> None:
        self.callbacks.fire(event, self)

    def data_stats(self) -> dict[str, float]:
        """Counters of a cache or quality filter around the training data (hits, drops), if any."""
        stats = getattr(getattr(self.train_loader, "dataset", None), "stats", None)
        return dict(stats()) if callable(stats) else {}

    def log_record(self, kind: str, values: dict[str, Any], plugin_values: dict[str, Any] | None = None) -> None:
        """One record to every sink; ``epoch`` counts from 1, as the console does."""
        c = self.state.counters
        self.logger.write({"kind": kind, "step": c.step, "epoch": c.epoch + 1, "time": time.time(), **values},
                          plugin_values)
