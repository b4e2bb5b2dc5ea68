"""TrainState <-> checkpoint payload, resume compatibility, and rollback.

A payload is ``{"model": state_dict, "tensors": {...}, "meta": {...}}``: weights go to
safetensors, other tensors (optimizer, scaler, RNG, callback state) to a weights_only torch file,
and counters, history and the resolved config to JSON.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import CheckpointError, load_checkpoint
from .gradients import NonFiniteError
from .optim.schedules import ReduceOnPlateau
from .state import capture_rng, restore_rng

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

FORMAT = 1

# Config fields a resume may change (reported, not refused): budgets, lr, logging, bookkeeping.
RESUMABLE_CHANGES = ("run_dir", "max_epochs", "max_steps", "optimizer.lr", "log.", "checkpoint.", "validation.",
                     "early_stopping", "gate", "device", "num_workers", "compile", "schedule.total_steps", "data",
                     "recipe_args.n_eval", "distributed.")


class ResumeError(RuntimeError):
    """A checkpoint does not fit this run; the message lists every difference."""


def build_payload(trainer: "Trainer") -> dict[str, Any]:
    states = ((cb.state_key, cb.state_dict()) for cb in trainer.callbacks)
    callbacks = {key: state for key, state in states if state}
    model_state = trainer.model.state_dict()
    tensors: dict[str, Any] = {
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": capture_rng(),
        "callbacks": callbacks,
    }
    if isinstance(trainer.schedule, ReduceOnPlateau):
        tensors["plateau"] = trainer.schedule.state_dict()
    meta = {
        "format": FORMAT,
        "state": trainer.state.state_dict(),
        "pending_validation": trainer._pending_validation,
        "skip_batches": sorted(trainer._skip_batches),
        "config": trainer.cfg.to_dict(),
        "model_signature": signature(model_state),
        "optimizer": type(trainer.optimizer).__name__,
        "task": trainer.task.name,
    }
    return {"model": model_state, "tensors": tensors, "meta": meta}


def signature(model_state: dict[str, Any]) -> dict[str, list[int]]:
    """Tensor names and shapes: what must match for a resume."""
    return {k: list(v.shape) for k, v in model_state.items()}


def compare(trainer: "Trainer", meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(blocking differences, allowed changes) between this run and a checkpoint's meta."""
    blocking: list[str] = []
    ours, theirs = signature(trainer.model.state_dict()), meta["model_signature"]
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs:
            blocking.append(f"model has {key} {ours[key]} that the checkpoint lacks")
        elif key not in ours:
            blocking.append(f"checkpoint has {key} {theirs[key]} that the model lacks")
        elif ours[key] != list(theirs[key]):
            blocking.append(f"{key}: checkpoint shape {theirs[key]}, model shape {ours[key]}")
    if meta["optimizer"] != type(trainer.optimizer).__name__:
        blocking.append(f"optimizer type: checkpoint {meta['optimizer']}, run {type(trainer.optimizer).__name__}")
    allowed: list[str] = []
    for key, old, new in config_diff(meta["config"], trainer.cfg.to_dict()):
        line = f"{key}: {old!r} -> {new!r}"
        (allowed if key.startswith(RESUMABLE_CHANGES) else blocking).append(line)
    return blocking, allowed


def config_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += config_diff(old.get(k), new.get(k), f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
        return out
    return [] if old == new else [(prefix, old, new)]


def restore_payload(trainer: "Trainer", payload: dict[str, Any], *, check: bool = True) -> None:
    meta, tensors = payload["meta"], payload["tensors"]
    if check:
        blocking, allowed = compare(trainer, meta)
        if blocking:
            raise ResumeError("cannot resume: the checkpoint does not match this run:\n  - " + "\n  - ".join(blocking))
        if allowed:
            print("trainforge: resuming with changed settings:\n  - " + "\n  - ".join(allowed), file=sys.stderr)
    trainer.model.load_state_dict(payload["model"])
    trainer.optimizer.load_state_dict(tensors["optimizer"])
    # base_lrs stay those of this run's config: a changed optimizer.lr is honoured from here on.
    if tensors["scaler"]:
        trainer.scaler.load_state_dict(tensors["scaler"])
    trainer.state.load_state_dict(meta["state"])
    trainer._pending_validation = bool(meta.get("pending_validation"))
    trainer._skip_batches = {tuple(x) for x in meta.get("skip_batches", [])}
    if "plateau" in tensors and isinstance(trainer.schedule, ReduceOnPlateau):
        trainer.schedule.load_state_dict(tensors["plateau"])
    for cb in trainer.callbacks:
        if cb.state_key in tensors["callbacks"]:
            cb.load_state_dict(tensors["callbacks"][cb.state_key])
    restore_rng(tensors["rng"])
    trainer._apply_lr()


def find_checkpoint(trainer: "Trainer", resume_from: str | Path) -> dict[str, Any] | None:
    """'latest' -> the newest valid checkpoint of the run (None when there is none); else a path."""
    manager = trainer.checkpoints
    if str(resume_from) == "latest":
        if manager is None:
            return None
        found = manager.load_latest()
        if found is None:
            return None
        info, payload = found
        trainer.last_checkpoint = str(info.path)
        return payload
    path = Path(resume_from)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    trainer.last_checkpoint = str(path)
    return load_checkpoint(path)


def rollback(trainer: "Trainer", message: str) -> None:
    """Restore the last good checkpoint, scale the lr down, skip the offending batches."""
    c = trainer.state.counters
    rollbacks = c.rollbacks + 1
    if rollbacks > trainer.cfg.grad.max_rollbacks:
        raise NonFiniteError(f"{message}: gave up after {trainer.cfg.grad.max_rollbacks} rollbacks")
    found = trainer.checkpoints.load_latest() if trainer.checkpoints is not None else None
    if found is None:
        raise NonFiniteError(f"{message}: no checkpoint to roll back to")
    info, payload = found
    accumulate = trainer.cfg.grad.accumulate
    bad = {(c.epoch, i) for i in range(max(0, c.batch_in_epoch - accumulate), c.batch_in_epoch)}
    skip = trainer._skip_batches | bad
    restore_payload(trainer, payload, check=False)
    trainer._skip_batches = skip
    trainer._interval = type(trainer._interval)()  # losses of the undone steps are dropped
    trainer.state.counters.rollbacks = rollbacks
    trainer.state.lr_scale *= trainer.cfg.grad.rollback_lr_factor
    trainer._apply_lr()
    warnings.warn(f"{message}: rolled back to {info.name} (step {info.step}), lr x{trainer.cfg.grad.rollback_lr_factor}, "
                  f"skipping {len(bad)} batch(es); rollback {rollbacks}/{trainer.cfg.grad.max_rollbacks}", stacklevel=3)


def resume(trainer: "Trainer", resume_from: str | Path) -> bool:
    """Load a checkpoint into ``trainer`` (phase RESTORING). True when that run had already
    finished (a gate, an early stop, its budget), so there is nothing to do; a run stopped by its
    budget goes on when the budget was raised."""
    from .state import Phase
    found = find_checkpoint(trainer, resume_from)
    if found is None:
        print(f"trainforge: no checkpoint in {Path(trainer.cfg.run_dir) / 'checkpoints'}; starting fresh",
              file=sys.stderr)
        return False
    trainer.lifecycle.to(Phase.RESTORING)
    restore_payload(trainer, found)
    reason = trainer.state.stopped_reason
    if reason is None or reason == "preempted" or reason.startswith("error"):
        return False
    if reason.startswith(("max_steps", "max_epochs")) and not trainer._budget_reached():
        trainer.state.stopped_reason = None  # the budget was raised: train on
        return False
    return True


def save_on_preemption(trainer: "Trainer") -> None:
    """The SIGTERM/SIGINT checkpoint, of the state at the last step boundary."""
    trainer.state.stopped_reason = "preempted"
    if trainer._rng_before_validation is not None:
        restore_rng(trainer._rng_before_validation)  # interrupted mid-validation: the boundary's streams
    if trainer.checkpoints is not None:
        trainer.checkpoints.wait()
        trainer.save_checkpoint()
        trainer.checkpoints.wait()
