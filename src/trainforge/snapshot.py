"""A run's state <-> a checkpoint payload, whether a checkpoint fits this run, and the two ways
a run goes back to a checkpoint: resume and rollback (through the Trainer's public interface).

A payload is ``{"model": state_dict, "tensors": {key: part state}, "meta": {...}}``: the weights go
to safetensors, the other registered parts (optimizer, scaler, RNG, callbacks, filters, data) to a
weights_only torch file, and the TrainState's own fields, the resolved config and the run's
identity (model signature, optimizer type, task) to JSON.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint
from .data.fingerprint import changes as data_changes
from .distributed.context import is_main, world_size
from .distributed.sharded import by_index, to_index
from .events import Event
from .gradients import NonFiniteError, total_norm
from .state import Phase, TrainState

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

FORMAT = 2

# Config fields a resume may change (reported, not refused): budgets, lr, logging, bookkeeping.
RESUMABLE_CHANGES = ("run_dir", "max_epochs", "max_steps", "optimizer.lr", "log.", "checkpoint.", "validation.",
                     "early_stopping", "gate", "device", "num_workers", "compile", "schedule.total_steps", "data",
                     "recipe_args.n_eval", "distributed.", "milestones", "stop_on_milestone", "sanity_check")


class ResumeError(RuntimeError):
    """A checkpoint does not fit this run; the message lists every difference."""


def signature(model_state: dict[str, Any]) -> dict[str, list[int]]:
    """Tensor names and shapes: what must match for a resume."""
    return {k: list(v.shape) for k, v in model_state.items()}


def identity(trainer: Trainer) -> dict[str, Any]:
    """What a checkpoint must match to resume this run (with the model's signature and, checked
    apart, the training data's fingerprint), and the world size it runs at (a global batch is
    batch_size x world size: another world size resumes when the global batch is kept)."""
    return {"config": trainer.cfg.to_dict(), "optimizer": type(trainer.optimizer).__name__, "task": trainer.task.name,
            "data_fingerprint": trainer.data_fingerprint, "world_size": world_size()}


def build_payload(state: TrainState, identity: dict[str, Any]) -> dict[str, Any]:
    """``identity``: ``config``, ``optimizer`` and ``task`` of the run (the model signature is added here)."""
    saved = state.state_dict()
    tensors = dict(saved["parts"])
    model_state = tensors.pop("model")
    meta = {"format": FORMAT, "state": saved["state"], "model_signature": signature(model_state), **identity}
    return {"model": model_state, "tensors": tensors, "meta": meta}


def foreign(payload: dict[str, Any]) -> str | None:
    """Why a loadable checkpoint is not one a run can resume from (None: it is). A checkpoint
    written through ``CheckpointManager.save`` by other code has a meta of its own choosing."""
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        return "its meta is not a mapping"
    if meta.get("format") not in (1, FORMAT):
        return (f"not a checkpoint of a trainforge run (payload format {meta.get('format')!r}; this trainforge "
                f"resumes formats 1 and {FORMAT})")
    missing = [k for k in ("model_signature", "optimizer", "config", "state") if k not in meta]
    if missing:
        return f"not a checkpoint of a trainforge run: its meta lacks {', '.join(missing)}"
    return None


def upgrade(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload of an older format in today's layout (format 1: callbacks nested, flags in meta)."""
    meta = payload["meta"]
    version = meta.get("format")
    if version == FORMAT:
        return payload
    if version != 1:
        raise ResumeError(f"checkpoint format {version!r} is not one this trainforge reads (it reads 1 and {FORMAT})")
    tensors = dict(payload["tensors"])
    for key, value in tensors.pop("callbacks", {}).items():
        tensors[f"callback/{key}"] = value
    if "plateau" in tensors:
        tensors["schedule"] = tensors.pop("plateau")
    if not tensors.get("scaler"):
        tensors.pop("scaler", None)
    state = {**meta["state"], "pending_validation": bool(meta.get("pending_validation")),
             "skip_batches": meta.get("skip_batches", [])}
    return {"model": payload["model"], "tensors": tensors, "meta": {**meta, "format": FORMAT, "state": state}}


def restore_payload(state: TrainState, payload: dict[str, Any]) -> None:
    payload = upgrade(payload)
    optimizer, saved = state.parts.get("optimizer"), payload["tensors"].get("optimizer")
    if isinstance(optimizer, torch.optim.Optimizer) and isinstance(saved, dict) and not by_index(saved):
        # an FSDP checkpoint keys the optimizer by parameter name; a plain optimizer loads by index
        payload = {**payload, "tensors": {**payload["tensors"],
                                          "optimizer": to_index(saved, state.parts["model"], optimizer)}}
    state.load_state_dict({"state": payload["meta"]["state"], "parts": {"model": payload["model"], **payload["tensors"]}})


def compare(identity: dict[str, Any], model_state: dict[str, Any], meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(blocking differences, allowed changes) between this run and a checkpoint's meta."""
    blocking: list[str] = []
    ours, theirs = signature(model_state), meta["model_signature"]
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs:
            blocking.append(f"model has {key} {ours[key]} that the checkpoint lacks")
        elif key not in ours:
            blocking.append(f"checkpoint has {key} {theirs[key]} that the model lacks")
        elif ours[key] != list(theirs[key]):
            blocking.append(f"{key}: checkpoint shape {theirs[key]}, model shape {ours[key]}")
    if meta["optimizer"] != identity["optimizer"]:
        blocking.append(f"optimizer type: checkpoint {meta['optimizer']}, run {identity['optimizer']}")
    allowed: list[str] = []
    old_world, new_world = int(meta.get("world_size", 1)), int(identity.get("world_size", 1))
    for key, old, new in config_diff(meta["config"], identity["config"]):
        line = f"{key}: {old!r} -> {new!r}"
        if key == "batch_size" and isinstance(old, int) and isinstance(new, int) and old * old_world == new * new_world:
            # another world size with the same global batch: the global sample sequence continues exactly
            allowed.append(f"{line} per rank at world size {old_world} -> {new_world} (global batch {old * old_world} kept)")
            continue
        (allowed if key.startswith(RESUMABLE_CHANGES) else blocking).append(line)
    if old_world != new_world and not any(k == "batch_size" for k, _, _ in config_diff(meta["config"], identity["config"])):
        blocking.append(f"world size: checkpoint {old_world}, run {new_world} with the same per-rank batch_size, so the "
                        f"global batch would change; set batch_size so that batch_size x world size = "
                        f"{meta['config'].get('batch_size', 0) * old_world}")
    old_shards, new_shards = _grokfast_shards(meta["config"], old_world), _grokfast_shards(identity["config"], new_world)
    if old_shards != new_shards and meta["config"].get("grokfast") and identity["config"].get("grokfast"):
        # under FSDP each rank's filter state is that of its shards, whose bounds follow the world size
        blocking.append(f"grokfast: the checkpoint's filter state is {_sharding(old_shards, old_world)}, this run's "
                        f"would be {_sharding(new_shards, new_world)}; resharding the grokfast filter's state is not "
                        f"supported: resume at world size {old_world} with distributed.strategy "
                        f"{meta['config'].get('distributed', {}).get('strategy', 'none')}")
    return blocking, allowed


def _grokfast_shards(config: dict[str, Any], world: int) -> int:
    """Over how many ranks a run shards its Grokfast filter's state (FSDP: the world size; else 1)."""
    return world if world > 1 and (config.get("distributed") or {}).get("strategy") == "fsdp" else 1


def _sharding(shards: int, world: int) -> str:
    return f"sharded over {shards} FSDP ranks" if shards > 1 else f"whole (world size {world}, not FSDP)"


def config_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += config_diff(old.get(k), new.get(k), f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
        return out
    return [] if old == new else [(prefix, old, new)]


def check(identity: dict[str, Any], model_state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Refuse a checkpoint that does not fit (every difference listed); report allowed changes."""
    blocking, allowed = compare(identity, model_state, meta)
    if blocking:
        raise ResumeError("cannot resume: the checkpoint does not match this run:\n  - " + "\n  - ".join(blocking))
    if allowed:
        print("trainforge: resuming with changed settings:\n  - " + "\n  - ".join(allowed), file=sys.stderr)


# --------------------------------------------------------------------------- saving, and going back
def save_checkpoint(trainer: Trainer, name: str | None = None, *, pinned: bool = False,
                    periodic: bool = False) -> str | None:
    """``Trainer.save_checkpoint``: settle an earlier async save, write, count a failure; the time
    it takes is not training time."""
    started = time.perf_counter()
    try:
        settle_saves(trainer, periodic=True)  # an earlier async save was periodic: the final one is last
        path = save(trainer, name, pinned=pinned)
        if path is not None and not trainer.checkpoints.async_save:
            trainer.failed_saves = 0
    except CheckpointWriteError as e:
        save_failed(trainer, e, periodic)
        return None
    finally:
        trainer.telemetry.meter.excluded += time.perf_counter() - started
    if path is not None:
        trainer.callbacks.fire(Event.CHECKPOINT, trainer)
    return path


def save(trainer: Trainer, name: str | None = None, *, pinned: bool = False) -> str | None:
    """Write ``trainer``'s whole state as a checkpoint (phase CHECKPOINTING). The open log interval is
    closed first, so a non-finite step is acted on before anything is written, and the history holds
    the interval's losses. A model with non-finite weights is never saved: warns, returns None."""
    if trainer.checkpoints is None:
        raise RuntimeError("no checkpoint directory: call fit() first or enable checkpoint in the config")
    trainer.log_interval(log=False)
    if not torch.isfinite(total_norm([p.detach() for p in trainer.model.parameters()])):
        warnings.warn("weights are not finite: checkpoint not written (the previous one stays latest)", stacklevel=3)
        return None
    c = trainer.state.counters
    previous = trainer.lifecycle.to(Phase.CHECKPOINTING)
    try:
        payload = build_payload(trainer.state, identity(trainer))  # every rank: per-rank parts are gathered
        name = name or f"step-{c.step:09d}"
        record = dict(step=c.step, epoch=c.epoch, metrics=dict(trainer.state.metrics), pinned=pinned)
        if getattr(trainer, "dist", None) is not None and trainer.dist.sharded:  # FSDP: every rank its shards
            from .distributed import sharded
            path = sharded.save(trainer, name, payload, **record)
        elif is_main():  # under torchrun (DDP) rank 0 writes the checkpoint every rank's state is in
            path = trainer.checkpoints.save(name, payload, **record)
        else:
            path = trainer.checkpoints.directory / name
        trainer.last_checkpoint, trainer.last_checkpoint_step = str(path), c.step
    finally:
        trainer.lifecycle.to(previous)
    return trainer.last_checkpoint


def resume_run(trainer: Trainer, resume_from: str | Path, *, allow_data_change: bool = False) -> bool:
    """Load a checkpoint into ``trainer`` (phase RESTORING). True when that run had already finished
    (a gate, an early stop, its budget), so there is nothing to do; a budget that was raised goes on.
    ``"latest"`` with no checkpoint starts fresh, saying so; a foreign checkpoint in the run is
    skipped with a warning naming it. Every check runs before the state is touched."""
    if str(resume_from) == "latest":
        found = trainer.checkpoints.load_latest(accept=foreign) if trainer.checkpoints is not None else None
        if found is None:
            print(f"trainforge: no checkpoint in {Path(trainer.cfg.run_dir) / 'checkpoints'}; starting fresh",
                  file=sys.stderr)
            return False
        path, payload = found[0].path, found[1]
    else:
        path = Path(resume_from)
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        payload = load_checkpoint(path)
        problem = foreign(payload)
        if problem:
            raise ResumeError(f"cannot resume from {path}: {problem}")
    payload = upgrade(payload)
    check(identity(trainer), trainer.model.state_dict(), payload["meta"])
    earlier = recorded_data_changes(Path(trainer.cfg.run_dir))  # kept across later resumes
    check_data(trainer, path, payload["meta"].get("data_fingerprint"), allow_data_change, payload["meta"].get("state"))
    if earlier:
        trainer.result_extra["data_changes"] = earlier + trainer.result_extra.get("data_changes", [])
    trainer.lifecycle.to(Phase.RESTORING)
    restore_payload(trainer.state, payload)
    c = trainer.state.counters
    trainer.last_checkpoint, trainer.last_checkpoint_step = str(path), c.step
    trainer.apply_lr()
    where = f"epoch {c.epoch + 1}, batch {c.batch_in_epoch}" if c.batch_in_epoch else f"the start of epoch {c.epoch + 1}"
    print(f"trainforge: resuming from {path} at step {c.step} ({where})", file=sys.stderr)
    reason = trainer.state.stopped_reason
    if reason is None or reason == "preempted" or reason.startswith("error"):
        return False
    if reason.startswith(("max_steps", "max_epochs")) and not trainer.budget_reached():
        trainer.state.stopped_reason = None  # the budget was raised: train on
        return False
    return True


def recorded_data_changes(run_dir: Path) -> list:
    """The data changes an earlier resume allowed, as result.json recorded them."""
    try:
        changes = json.loads((run_dir / "result.json").read_text(encoding="utf-8")).get("data_changes")
    except (OSError, ValueError, AttributeError):
        return []
    return list(changes) if isinstance(changes, list) else []


def check_data(trainer: Trainer, path: Path, saved: dict | None, allow: bool, saved_state: dict | None = None) -> None:
    """Refuse a resume on training data that changed since the checkpoint (a resumed epoch would
    read other samples, some twice, some never), unless allowed; an allowed change is recorded."""
    changed = data_changes(saved, trainer.data_fingerprint)
    if not changed:
        return
    lines = "\n  - ".join(changed)
    if not allow:
        raise ResumeError(f"cannot resume: the training data changed since checkpoint {path}:\n  - {lines}\n"
                          "The resumed epoch would read other samples than the interrupted one. Put the data back, "
                          "or continue on the new data with `trainforge resume RUN_DIR --allow-data-change` "
                          "(fit(..., allow_data_change=True)); the change is recorded in result.json")
    print(f"trainforge: resuming on changed training data (allowed):\n  - {lines}", file=sys.stderr)
    step = ((saved_state or {}).get("counters") or {}).get("step")
    trainer.result_extra.setdefault("data_changes", []).append({"checkpoint": str(path), "step": step, "changes": changed})


def rollback(trainer: Trainer, message: str, bad_batches: set[tuple[int, int]]) -> None:
    """Restore the last good checkpoint, scale the lr down, skip the offending batches from now on."""
    g = trainer.cfg.grad
    rollbacks = trainer.state.counters.rollbacks + 1
    if rollbacks > g.max_rollbacks:
        raise NonFiniteError(f"{message}: gave up after {g.max_rollbacks} rollbacks")
    found = trainer.checkpoints.load_latest(accept=foreign) if trainer.checkpoints is not None else None
    if found is None:
        raise NonFiniteError(f"{message}: no checkpoint to roll back to")
    info, payload = found
    skip = trainer.state.skip_batches | bad_batches
    restore_payload(trainer.state, payload)
    trainer.state.skip_batches = skip
    trainer.state.counters.rollbacks = rollbacks
    trainer.state.lr_scale *= g.rollback_lr_factor
    trainer.last_checkpoint, trainer.last_checkpoint_step = str(info.path), info.step
    trainer.telemetry.reset()  # the undone steps' losses are dropped
    trainer.apply_lr()
    warnings.warn(f"{message}: rolled back to {info.name} (step {info.step}), lr x{g.rollback_lr_factor}, "
                  f"skipping {len(bad_batches)} batch(es); rollback {rollbacks}/{g.max_rollbacks}", stacklevel=4)


# --------------------------------------------------------------------------- saves that fail
MAX_FAILED_SAVES = 3  # periodic saves in a row that may fail (each retried at the next boundary)


def settle_saves(trainer: Trainer, periodic: bool) -> None:
    """Wait for a pending async save; its failure is handled as that save's own."""
    try:
        pending = trainer.checkpoints is not None and trainer.checkpoints.pending
        if trainer.checkpoints is not None:
            trainer.checkpoints.wait()
        if pending:
            trainer.failed_saves = 0
    except CheckpointWriteError as e:
        save_failed(trainer, e, periodic)


def save_failed(trainer: Trainer, e: CheckpointWriteError, periodic: bool) -> None:
    """Point at what is really on disk; a periodic failure warns (the next boundary retries), any
    other, or the ``MAX_FAILED_SAVES``-th periodic one in a row, raises."""
    trainer.last_checkpoint = str(e.last_valid) if e.last_valid else None
    trainer.last_checkpoint_step = None
    trainer.failed_saves += 1
    if not periodic or trainer.failed_saves >= MAX_FAILED_SAVES:
        if periodic:
            raise CheckpointWriteError(f"{e} ({trainer.failed_saves} checkpoint saves in a row failed: stopping "
                                       "rather than training on without checkpoints)", path=e.path,
                                       detail=e.detail, last_valid=e.last_valid) from e
        raise e
    warnings.warn(f"CHECKPOINT NOT SAVED ({trainer.failed_saves}/{MAX_FAILED_SAVES}): {e}; training goes on "
                  "and the next checkpoint boundary retries", stacklevel=4)
