"""The loop: fit / validate / step / pause / resume / stop. Read it top to bottom.

One optimizer step, in nanoGPT's fixed order (``_optimizer_step``): set lr; per micro-batch
forward + loss/N + scaled backward; unscale, clip, finite check; step; scaler update; zero_grad.
Control (pause, stop, preemption, checkpoints, logging) happens only at step boundaries.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import signals
from .callbacks import default_callbacks
from .callbacks.logging import RunLogger, build_sinks
from .callbacks.progress import ProgressBar
from .checkpoint import CheckpointManager
from .config import TrainConfig
from .data.loader import epoch_iterator, loader_for, prepare_epoch
from .data.spec import fit_data
from .events import Callback, Event, SkipBatch, StopTraining, overrides
from .gradients import NonFiniteError, clip_gradients, grad_extremes, is_finite, non_finite_message, weights_finite
from .metrics import IntervalMeter, atomic_write_text, epoch_summary, run_summary, update_best, write_result
from .optim import build_optimizer, build_schedule
from .optim.schedules import ReduceOnPlateau, schedule_horizon
from .snapshot import build_payload, resume, rollback, save_on_preemption
from .state import Lifecycle, Phase, TrainState, capture_rng, restore_rng, seed_everything
from .tasks import Task, batch_size_of, make_task
from .transforms import apply_model_transforms


class Preempted(SystemExit):
    """Raised by ``fit`` after a SIGTERM/SIGINT checkpoint: exit code 75, resume continues the run."""

    def __init__(self, message: str):
        super().__init__(75)
        self.message = message


class _PreemptNow(Exception):
    pass


class _RolledBack(Exception):
    pass


@dataclass
class FitResult:
    run_dir: Path
    stopped_reason: str
    history: dict[str, list[float]]
    curves: dict[str, dict[str, list]]
    summary: dict[str, Any]
    final_checkpoint: str | None = None
    gate_passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


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
        self.autocast = self._autocast_factory()
        self.state = TrainState()
        self.lifecycle = Lifecycle()
        self.callbacks: list[Callback] = list(callbacks)
        self.evaluators = list(evaluators)
        self.result_extra: dict[str, Any] = {}
        self.schedule: Callable[[int], float] = lambda step: 1.0
        self.checkpoints = None
        self.last_checkpoint: str | None = None
        self.train_loader: DataLoader | None = None
        self.val_loader: DataLoader | None = None
        self.batches_per_epoch = 0
        self.logger = RunLogger([])
        self._dispatch: dict[Event, list[Callback]] = {}
        self._stop_reason: str | None = None
        self._pin_final = False
        self._pause_requested = False
        self._preempt_signal: str | None = None
        self._skip_batches: set[tuple[int, int]] = set()
        self._rng_before_validation: dict | None = None
        self._pending_validation = False
        self._refresh_dispatch()

    # ------------------------------------------------------------------ public control
    @property
    def phase(self) -> Phase:
        return self.lifecycle.phase

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, value: float) -> None:
        """Set the learning rate now; the schedule continues from it (its shape is kept, scaled)."""
        if not value > 0:
            raise ValueError(f"learning rate must be > 0, got {value}")
        self.state.lr_scale = value / (self.base_lrs[0] * self.schedule(self.state.counters.step))
        self._apply_lr()

    def pause(self) -> None:
        """Pause at the next step boundary (from a callback, another thread, or SIGUSR1)."""
        self._pause_requested = True

    def resume(self) -> None:
        """Leave PAUSED (another thread, or SIGUSR2)."""
        self._pause_requested = False
        if self.phase == Phase.PAUSED:
            self.lifecycle.to(Phase.RUNNING)

    def stop(self, reason: str = "stopped by request", *, pin: bool = False) -> None:
        """End the run normally at the next step boundary; ``pin`` keeps its final checkpoint forever."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._pin_final = self._pin_final or pin
        self._pause_requested = False
        if self.phase == Phase.PAUSED:
            self.lifecycle.notify()

    def add_callback(self, callback: Callback) -> None:
        self.callbacks.append(callback)
        self._refresh_dispatch()

    def remove_callback(self, callback: Callback) -> None:
        self.callbacks.remove(callback)
        self._refresh_dispatch()

    # ------------------------------------------------------------------ fit
    def fit(self, train_data: Any = None, val_data: Any = None, *, resume_from: str | Path | None = None) -> FitResult:
        """Train. ``train_data`` may also be a data spec ``{"path": ..., "format": ..., ...}`` (its
        validation part is used when ``val_data`` is None), or None to use the config's ``data`` spec."""
        self.lifecycle.to(Phase.INITIALIZING)
        self._stop_reason, self._pin_final, self._preempt_signal = None, False, None
        try:
            train_data, val_data = fit_data(train_data, val_data, self.cfg)
            self._setup_run(train_data, val_data)
            if resume_from is not None and resume(self, resume_from):
                return self._already_finished()
            if resume_from is None and self.checkpoints is not None and self.checkpoints.list(deep=False):
                warnings.warn(f"starting a fresh run in {self.cfg.run_dir}, which holds checkpoints of an earlier "
                              "run: resume_from='latest' would continue it instead", stacklevel=2)
            self.lifecycle.to(Phase.RUNNING)
            with signals.handlers(self):
                self._fire(Event.TRAIN_START)
                self._train()
            self._finish(Phase.COMPLETED)
        except _PreemptNow:
            save_on_preemption(self)
            self._finish(Phase.COMPLETED)
            raise Preempted(self._preemption_message()) from None
        except BaseException as exc:
            self.state.stopped_reason = f"error: {type(exc).__name__}: {exc}"
            self._finish(Phase.ERROR, exc)
            raise
        return self._result()

    def _train(self) -> None:
        c = self.state.counters
        if self._pending_validation:
            self._validate_and_record(mid_epoch=True)
        while self._stop_reason is None and not self._budget_reached():
            try:
                consumed = self._run_epoch()
            except _RolledBack:
                continue
            if consumed == 0 and self.batches_per_epoch == 0:
                warnings.warn("training data is empty: nothing to train on", stacklevel=3)
                self._stop_reason = "training data is empty"
        self.state.stopped_reason = self._stop_reason or self._budget_reason()
        self._flush_interval(log=True)
        if self._validation_enabled() and c.last_val_step != c.step and c.step > 0:
            self._validate_and_record(mid_epoch=True)  # the result holds final validation values
        if self.checkpoints is not None and (self.cfg.checkpoint.save_last or self._pin_final):
            self.save_checkpoint(pinned=self._pin_final)

    def _run_epoch(self) -> int:
        c = self.state.counters
        batches = epoch_iterator(self.train_loader, self.cfg.seed, c.epoch, c.batch_in_epoch)
        self._fire(Event.EPOCH_START)
        self.model.train()
        if c.batch_in_epoch == 0:
            c.epoch_start_step = c.step
        self._epoch_started = time.perf_counter()
        accumulate, micro, consumed, group_loss = self.cfg.grad.accumulate, 0, 0, None
        waited = time.perf_counter()
        for batch in batches:
            self._interval.data_wait += time.perf_counter() - waited
            index = c.batch_in_epoch
            c.batch_in_epoch += 1
            consumed += 1
            if (self._skip_batches and (c.epoch, index) in self._skip_batches) or batch_size_of(batch) == 0:
                self._skip_batch(index, batch)
                waited = time.perf_counter()
                continue
            batch = batch if self.device.type == "cpu" else to_device(batch, self.device)
            try:
                self._fire(Event.BATCH_START)
            except SkipBatch:
                c.skipped_batches += 1
                waited = time.perf_counter()
                continue
            loss = self._forward_backward(batch, accumulate)
            group_loss = loss if group_loss is None else group_loss + loss
            micro += 1
            if micro == accumulate:
                self._optimizer_step(group_loss if accumulate == 1 else group_loss / accumulate)
                micro, group_loss = 0, None
            self._fire(Event.BATCH_END)
            if micro == 0 and self._at_step_boundary():
                return consumed
            waited = time.perf_counter()
        if micro:  # a partial accumulation group at the end of the epoch still steps
            self._optimizer_step(group_loss / accumulate)
        self._end_epoch()
        return consumed

    def _end_epoch(self) -> None:
        c = self.state.counters
        self._flush_interval(log=False)
        if (self._validation_enabled() and self._is_due(self.cfg.validation.every_epochs, c.epoch + 1)
                and c.last_val_step != c.step):
            self._validate_and_record(mid_epoch=False)
        curve = self.state.history.get("train/loss", {"step": [], "value": []})
        summary = epoch_summary(curve, c.epoch_start_step, self._epoch_started)
        self.state.metrics.update(summary)
        for name, value in summary.items():
            self.state.record(name, c.step, value)
        self._fire(Event.EPOCH_END)
        self._log("epoch", summary)
        c.epoch += 1
        c.batch_in_epoch = 0
        if (self.checkpoints is not None and self._stop_reason is None and not self._budget_reached()
                and self._is_due(self.cfg.checkpoint.every_epochs, c.epoch)):
            self.save_checkpoint()

    def _at_step_boundary(self) -> bool:
        """Logging, step-based validation and checkpoints, then control requests. True ends the epoch."""
        c = self.state.counters
        if c.step % self.cfg.log.every_steps == 0 and self._interval.steps:
            self._flush_interval(log=True)
        if (self._validation_enabled() and self._is_due(self.cfg.validation.every_steps, c.step)
                and c.last_val_step != c.step):
            self._validate_and_record(mid_epoch=True)
        if self._is_due(self.cfg.checkpoint.every_steps, c.step) and self.checkpoints is not None:
            self.save_checkpoint()
        self._check_controls()
        return self._stop_reason is not None or self._budget_reached()

    # ------------------------------------------------------------------ one optimizer step
    def _forward_backward(self, batch: Any, divisor: int) -> torch.Tensor:
        with self.autocast():
            out = self.task.train_step(self.forward_model, batch)
        loss = out.loss if divisor == 1 else out.loss / divisor  # x / 1 == x: skip the kernel
        self.scaler.scale(loss).backward()
        self._interval.add_batch(out.samples, out.tokens)
        self.state.counters.samples_seen += out.samples
        self.state.counters.tokens_seen += out.tokens
        return out.loss.detach()

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        c, g = self.state.counters, self.cfg.grad
        params = self._params
        self.scaler.unscale_(self.optimizer)
        self._fire(Event.AFTER_BACKWARD)  # gradients complete and unscaled: filters act here
        norm = clip_gradients(params, g.clip_norm, g.clip_value)
        if self.cfg.log.level == "verbose" and (c.step + 1) % self.cfg.log.every_steps == 0:
            self._grad_extremes = grad_extremes(params)
        # One host sync per step: NaN/inf in either propagates through the sum (norm >= 0).
        if not math.isfinite(float(loss + norm.to(loss.device))):
            if self.scaler.is_enabled() and is_finite(loss):
                self.scaler.step(self.optimizer)  # fp16 overflow: the scaler skips and lowers its scale
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                return
            self._handle_non_finite(float(loss), float(norm))
            return
        self._apply_lr()
        self._fire(Event.BEFORE_OPTIMIZER_STEP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        c.step += 1
        c.weight_version += 1
        self._grad_norm = norm
        self._interval.add_step(c.step, loss)
        self._fire(Event.AFTER_OPTIMIZER_STEP)

    def step(self, batch: Any) -> dict[str, float]:
        """One optimizer step on one batch, outside ``fit`` (manual use). Returns loss and lr."""
        if not hasattr(self, "_interval"):
            self._interval = IntervalMeter()
            self._grad_norm = self._grad_extremes = None
        self.model.train()
        loss = self._forward_backward(to_device(batch, self.device), divisor=1)
        self._optimizer_step(loss)
        return {"loss": float(loss), "lr": self.lr}

    def _apply_lr(self) -> None:
        factor = self.state.lr_scale * self.schedule(self.state.counters.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def _handle_non_finite(self, loss: float, norm: float) -> None:
        c, policy = self.state.counters, self.cfg.grad.non_finite
        message = non_finite_message(c.step, loss, norm, policy)
        self.optimizer.zero_grad(set_to_none=True)
        if policy == "skip":
            c.skipped_steps += 1
            warnings.warn(f"{message}: step skipped ({c.skipped_steps} so far)", stacklevel=2)
            return
        if policy == "rollback":
            self._rollback(message)
        raise NonFiniteError(f"{message}: halting. The run directory {self.cfg.run_dir} is intact; "
                             "use non_finite: skip or rollback to continue past bad steps")

    def _rollback(self, message: str) -> None:
        rollback(self, message)  # restores the last good checkpoint, lowers lr; raises when it cannot
        raise _RolledBack()

    # ------------------------------------------------------------------ validation
    def validate(self, val_data: Any = None) -> dict[str, float]:
        """Evaluate on ``val_data`` (or the fit's validation data): task metrics plus evaluators."""
        loader = loader_for(val_data, self.cfg, train=False) if val_data is not None else self.val_loader
        if loader is None and not self.evaluators:
            raise ValueError("validate() needs validation data: pass it here or to fit(..., val_data)")
        was_training = self.model.training
        self.model.eval()
        metrics: dict[str, float] = {}
        # Validation must not move the training RNG: a run with and without it (or resumed
        # mid-validation) trains on identical random streams.
        rng = capture_rng()
        self._rng_before_validation = rng
        try:
            with torch.no_grad():
                if loader is not None:
                    metrics.update(self._evaluate_loader(loader))
                for evaluator in self.evaluators:
                    metrics.update(evaluator(self.model))
        finally:
            restore_rng(rng)
            self._rng_before_validation = None
            self.model.train(was_training)
        return metrics

    def _evaluate_loader(self, loader: DataLoader) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        limit = self.cfg.validation.max_batches
        prepare_epoch(loader, self.cfg.seed, 0)
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            if self._preempt_signal:
                raise _PreemptNow()
            if batch_size_of(batch) == 0:
                continue
            with self.autocast():
                out = self.task.eval_step(self.forward_model, to_device(batch, self.device))
            for k, v in out.items():
                sums[k] = sums[k] + v if k in sums else v
        return self.task.summarize(sums) if sums else {}

    def _validate_and_record(self, mid_epoch: bool) -> None:
        c = self.state.counters
        started = time.perf_counter()
        self._fire(Event.VALIDATION_START)
        self._pending_validation = True
        metrics = self.validate()
        self._pending_validation = False
        self._interval.excluded += time.perf_counter() - started
        c.last_val_step = c.step
        self.state.metrics.update(metrics)
        update_best(self.state.best, metrics)
        for name, value in metrics.items():
            self.state.record(name, c.step, value)
        if isinstance(self.schedule, ReduceOnPlateau) and self.cfg.schedule.monitor in metrics:
            self.schedule.observe(metrics[self.cfg.schedule.monitor])
        self._fire(Event.VALIDATION_END)
        self._log("val", {**metrics, "mid_epoch": mid_epoch})

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, name: str | None = None, *, pinned: bool = False) -> str | None:
        """Write the whole TrainState now (between steps). Returns the checkpoint path."""
        if self.checkpoints is None:
            raise RuntimeError("no checkpoint directory: call fit() first or enable checkpoint in the config")
        if not weights_finite(self.model):
            warnings.warn("weights are not finite: checkpoint not written (the previous one stays latest)", stacklevel=2)
            return None
        c = self.state.counters
        self._flush_interval(log=False)  # per-step losses since the last log belong in the saved history
        started = time.perf_counter()
        previous = self.lifecycle.to(Phase.CHECKPOINTING)
        try:
            payload = build_payload(self)
            path = self.checkpoints.save(name or f"step-{c.step:09d}", payload, step=c.step, epoch=c.epoch,
                                         metrics=dict(self.state.metrics), pinned=pinned)
            self.last_checkpoint = str(path)
        finally:
            self.lifecycle.to(previous)
            self._interval.excluded += time.perf_counter() - started
        self._fire(Event.CHECKPOINT)
        return self.last_checkpoint

    def _already_finished(self) -> FitResult:
        print(f"trainforge: run in {self.cfg.run_dir} already finished ({self.state.stopped_reason}); "
              "nothing to do", file=sys.stderr)
        self.lifecycle.to(Phase.RUNNING)
        self.lifecycle.to(Phase.COMPLETED)
        self.logger.close()
        result_path = Path(self.cfg.run_dir) / "result.json"
        if not result_path.exists():
            self._write_result()
        return self._result()

    def _preemption_message(self) -> str:
        c = self.state.counters
        return (f"trainforge: preempted by {self._preempt_signal} at step {c.step} (epoch {c.epoch + 1}); "
                f"checkpoint saved. Resume with: trainforge resume {self.cfg.run_dir}")

    # ------------------------------------------------------------------ setup and teardown
    def _setup_run(self, train_data: Any, val_data: Any) -> None:
        cfg = self.cfg
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        self.train_loader = loader_for(train_data, cfg, train=True)
        self.val_loader = loader_for(val_data, cfg, train=False) if val_data is not None else None
        try:
            self.batches_per_epoch: int | None = len(self.train_loader)
        except TypeError:  # an iterable dataset without a length
            self.batches_per_epoch = None
        self.schedule = build_schedule(cfg.schedule, schedule_horizon(cfg, self.batches_per_epoch))
        self._interval = IntervalMeter()
        self._grad_norm: torch.Tensor | None = None
        self._last_health_check, self._memory = -math.inf, {}
        self._grad_extremes: tuple[torch.Tensor, torch.Tensor] | None = None
        self.callbacks = default_callbacks(cfg, self.callbacks)
        self._refresh_dispatch()
        if cfg.checkpoint.enabled:
            ck = cfg.checkpoint
            self.checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=ck.keep_last, keep_best=ck.keep_best,
                                                 monitor=ck.monitor, mode=ck.mode, async_save=ck.async_save)
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        progress = [cb for cb in self.callbacks if isinstance(cb, ProgressBar)]
        self.logger = RunLogger(build_sinks(cfg, progress), cfg.log.level)
        self.logger.open(run_dir, cfg.to_dict())
        self._apply_lr()

    def _budget_reached(self) -> bool:
        c, cfg = self.state.counters, self.cfg
        return (cfg.max_steps is not None and c.step >= cfg.max_steps) or (cfg.max_epochs is not None and c.epoch >= cfg.max_epochs)

    def _budget_reason(self) -> str:
        c, cfg = self.state.counters, self.cfg
        if cfg.max_steps is not None and c.step >= cfg.max_steps:
            return f"max_steps reached ({cfg.max_steps})"
        return f"max_epochs reached ({cfg.max_epochs})"

    def _finish(self, phase: Phase, exc: BaseException | None = None) -> None:
        if exc is not None:
            self._fire_safely(Event.ERROR)
        self._fire_safely(Event.TRAIN_END)
        if self.checkpoints is not None:
            try:
                self.checkpoints.wait()
            except Exception as e:  # a failed async save must not hide the run's own outcome
                warnings.warn(f"pending checkpoint failed: {e}", stacklevel=2)
        if self.phase != phase:
            self.lifecycle.to(phase)
        self._write_result(error=exc)
        self.logger.close(failed=exc is not None)

    # ------------------------------------------------------------------ control, events, logging
    def _check_controls(self) -> None:
        if self._preempt_signal:
            raise _PreemptNow()
        if self._pause_requested and self._stop_reason is None:
            self.lifecycle.to(Phase.PAUSED)
            while self.phase == Phase.PAUSED and self._stop_reason is None and not self._preempt_signal:
                self.lifecycle.wait_while(Phase.PAUSED, timeout=0.2)
            if self.phase == Phase.PAUSED:
                self.lifecycle.to(Phase.RUNNING)
            if self._preempt_signal:
                raise _PreemptNow()

    def _validation_enabled(self) -> bool:
        v = self.cfg.validation
        return (self.val_loader is not None or bool(self.evaluators)) and (v.every_epochs or v.every_steps) is not None

    def _is_due(self, every: int | None, count: int) -> bool:
        return every is not None and count > 0 and count % every == 0

    def _skip_batch(self, index: int, batch: Any) -> None:
        self.state.counters.skipped_batches += 1
        if batch_size_of(batch) == 0:
            warnings.warn(f"empty batch {index} in epoch {self.state.counters.epoch + 1} skipped", stacklevel=3)

    def _refresh_dispatch(self) -> None:
        # Only callbacks that override an event are called for it: a no-op costs nothing per step.
        self._dispatch = {e: [cb for cb in self.callbacks if overrides(cb, e)] for e in Event}

    def _fire(self, event: Event) -> None:
        # _refresh_dispatch swaps in new lists, so a callback added or removed here is safe.
        for cb in self._dispatch[event]:
            try:
                getattr(cb, event.value)(self)
            except StopTraining as s:
                self.stop(s.reason)

    def _fire_safely(self, event: Event) -> None:
        try:
            self._fire(event)
        except Exception as e:  # teardown must finish even when a callback fails
            warnings.warn(f"callback failed during {event.value}: {e!r}", stacklevel=2)

    def _flush_interval(self, log: bool) -> None:
        if not self._interval.steps:
            return
        verbose = self.cfg.log.level == "verbose"
        steps, values, rates = self._interval.flush()
        self.state.record_many("train/loss", steps, values)
        if not log:
            return
        record: dict[str, Any] = {"train/loss": values[-1], "lr": self.lr, **rates,
                                  "weight_version": self.state.counters.weight_version}
        if self._grad_norm is not None:
            record["grad/norm"] = float(self._grad_norm)
        if verbose and self._grad_extremes is not None:
            record["grad/max"], record["grad/min"] = (float(t) for t in self._grad_extremes)
        record.update(self._data_stats())
        plugin_values: dict[str, Any] = {}
        for cb in self.callbacks:
            if overrides(cb, "log_values"):
                plugin_values.update(cb.log_values(self))
        # Memory and a pass over all weights at most once a second: at a tiny model's log rate they
        # would cost more than its steps. (Before every checkpoint the weights are checked anyway.)
        now = time.monotonic()
        if now - self._last_health_check >= 1.0 or steps[-1] <= self.cfg.log.every_steps:
            self._last_health_check = now
            if self.cfg.log.memory and self.cfg.log.level != "minimal":
                from .callbacks.monitors import memory_stats
                self._memory = memory_stats()
            if not weights_finite(self.model):
                self._handle_non_finite(values[-1], float("nan"))
        record.update(self._memory)
        self.state.metrics.update(record)
        self.state.metrics.update(plugin_values)
        self.state.record("lr", steps[-1], self.lr)
        for name, value in plugin_values.items():
            self.state.record(name, steps[-1], value)
        self._log("train", record, plugin_values)

    def _data_stats(self) -> dict[str, float]:
        """Counters of a cache or quality filter around the training data (hits, drops), if any."""
        stats = getattr(getattr(self.train_loader, "dataset", None), "stats", None)
        return dict(stats()) if callable(stats) else {}

    def _log(self, kind: str, values: dict[str, Any], plugin_values: dict[str, Any] | None = None) -> None:
        c = self.state.counters
        self.logger.write({"kind": kind, "step": c.step, "epoch": c.epoch, "time": time.time(), **values}, plugin_values)

    def _autocast_factory(self) -> Callable[[], contextlib.AbstractContextManager]:
        if self.cfg.precision == "32":
            return contextlib.nullcontext
        dtype = torch.bfloat16 if self.cfg.precision == "bf16-mixed" else torch.float16
        return partial(torch.autocast, device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ results
    def _result(self) -> FitResult:
        curves = self.state.history
        return FitResult(
            run_dir=Path(self.cfg.run_dir), stopped_reason=self.state.stopped_reason or "",
            history={k: list(v["value"]) for k, v in curves.items()}, curves=curves,
            summary=run_summary(self.state, self._data_stats()), final_checkpoint=self.last_checkpoint,
            gate_passed=self.result_extra.get("gate_passed"), extra=dict(self.result_extra))

    def _write_result(self, error: BaseException | None = None) -> None:
        result = {"summary": run_summary(self.state, self._data_stats()), "stopped_reason": self.state.stopped_reason,
                  "final_checkpoint": self.last_checkpoint, "gate_passed": None, "phase": str(self.phase),
                  **self.result_extra, "curves": self.state.history, "config": self.cfg.to_dict()}
        if error is not None:
            result["error"] = f"{type(error).__name__}: {error}"
        write_result(Path(self.cfg.run_dir) / "result.json", result)
