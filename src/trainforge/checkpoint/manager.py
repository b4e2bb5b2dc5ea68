"""CheckpointManager: saves, verifies, lists, retains and loads the checkpoints of one run directory.

It prepares a save (checks and encodes the payload: ``codec``; stages device tensors for an async
write: ``staging``), writes it (``codec.write_files`` into a ``store`` temp directory, sealed by the
``manifest``), installs it atomically (``store``) and applies ``retention``.
"""

from __future__ import annotations

import errno
import json
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from .codec import (Job, check_json_tree, check_tensor_tree, clean_metrics, load_checkpoint, model_container_info,
                    payload_bytes, split_aliases, write_files)
from .layout import (FORMAT, META_FILE, NAME, PINS_FILE, VERSION, CheckpointError, CheckpointInfo,
                     CheckpointWriteError, error, json_bytes)
from .manifest import read_manifest
from .manifest import verify as verify_files
from .retention import is_number, read_pins, select_retained, write_pins
from .staging import HostStaging
from .store import DirectoryStore


class CheckpointManager:
    """Saves, verifies, lists, retains and loads the checkpoints of one run directory.

    Used from one thread (the trainer's); with ``async_save=True`` the writing happens on one
    background thread, at most one save in flight.
    """

    def __init__(self, directory: Path | str, *, keep_last: int | None = 3, keep_best: int = 0,
                 monitor: str | None = None, mode: str = "min", async_save: bool = False):
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 0):
            raise ValueError(f"checkpoint keep_last must be an int >= 0 or None (keep all), got {keep_last!r}")
        if not isinstance(keep_best, int) or keep_best < 0:
            raise ValueError(f"checkpoint keep_best must be an int >= 0, got {keep_best!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint mode must be 'min' or 'max', got {mode!r}")
        if keep_best > 0 and not monitor:
            raise ValueError("checkpoint keep_best > 0 needs monitor (the metric to rank by, e.g. 'val/loss')")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.monitor = monitor
        self.mode = mode
        self.async_save = async_save
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._pending: Job | None = None
        self._error: BaseException | None = None
        self._staging = HostStaging()
        self._store = DirectoryStore(self.directory)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- saving
    def save(self, name: str, payload: dict, *, step: int, epoch: int, metrics: dict | None = None,
             pinned: bool = False) -> Path:
        """Persist ``payload`` as ``<directory>/<name>``; returns that path (async: once it is written)."""
        with self._lock:
            self.wait()  # one save in flight; a failed async save surfaces here before the next starts
            job = self._prepare(name, payload, step, epoch, metrics, pinned)
            if not self.async_save:
                self._commit(job)
                return job.final
            self._pending = job
            self._thread = threading.Thread(target=self._run, args=(job,), name=f"trainforge-ckpt-{name}")
            self._thread.start()  # not a daemon: interpreter exit waits for the write to finish
            return job.final

    def begin(self, name: str) -> Path:
        """An empty temporary directory for checkpoint ``name``, for other writers (every rank's shards)
        to fill before ``seal``; nothing is visible as a checkpoint until then."""
        with self._lock:
            self.wait()
            self._store.ensure()
            self._store.clean_leftovers()
            tmp = self._store.tmp_dir(name)
            tmp.mkdir()
            return tmp

    def seal(self, name: str, payload: dict, tmp: Path, *, step: int, epoch: int, metrics: dict | None = None,
             pinned: bool = False) -> Path:
        """Write ``payload`` into ``tmp`` (from ``begin``, already holding other writers' files), a
        manifest over every file in it, and rename it into place (synchronously)."""
        with self._lock:
            job = self._prepare(name, payload, step, epoch, metrics, pinned, staged=False)
            self._commit(job, tmp=tmp)
            return job.final

    def _prepare(self, name, payload, step, epoch, metrics, pinned, staged: bool = True) -> Job:
        final = self.directory / name
        if not isinstance(name, str) or not NAME.match(name) or name == PINS_FILE:
            raise error(final, f"invalid checkpoint name {name!r}: use letters, digits and _ . = + - "
                         "(not starting with a dot), e.g. 'step-000100'")
        if not isinstance(payload, dict) or not {"model", "tensors", "meta"} <= payload.keys():
            got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise error(final, f"cannot save: payload must be a dict with 'model', 'tensors' and 'meta', got {got}")
        if not isinstance(payload["model"], dict):
            raise error(final, "cannot save: payload['model'] must be a state dict (name -> tensor)")
        check_tensor_tree(payload["tensors"], (), final)
        check_json_tree(payload["meta"], (), "payload['meta']", final)
        metrics = clean_metrics(metrics, final)
        unique, aliases, keys = split_aliases(payload["model"], final)
        tensors, events = payload["tensors"], []
        if self.async_save and staged:
            # Copy now, on the caller's thread: the optimizer will update these tensors in place
            # while the writer runs, and a torn checkpoint would resume a different run.
            unique, tensors, events = self._staging.snapshot(unique, tensors)
        record = {"step": int(step), "epoch": int(epoch), "metrics": metrics, "pinned": bool(pinned)}
        # Serialised now: the trainer keeps appending to its history while an async writer runs.
        state_json = json_bytes({"format": FORMAT, "version": VERSION, **record, "meta": payload["meta"]})
        manifest = {"format": FORMAT, "version": VERSION, "name": name, **record, "created": time.time()}
        model_info = model_container_info(payload["model"])
        nbytes = payload_bytes(payload["model"]) + payload_bytes(payload["tensors"]) + len(state_json) + 4096
        return Job(name, final, unique, aliases, keys, tensors, state_json, manifest, model_info, events, nbytes)

    def _run(self, job: Job) -> None:
        try:
            self._commit(job)
        except BaseException as e:  # handed to the next wait(), on the trainer's thread
            self._error = e

    def _commit(self, job: Job, tmp: Path | None = None) -> None:
        for ev in job.events:
            ev.synchronize()
        begun = tmp is not None
        tmp = tmp if begun else self._store.tmp_dir(job.name)
        try:
            if not begun:
                self._store.ensure()
                self._store.clean_leftovers()
                tmp.mkdir()
            write_files(tmp, job)
            self._store.install(tmp, job.final)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, CheckpointError):
                raise
            raise self._write_error(job, e) from e
        self._retain(protect=job.name)

    def _write_error(self, job: Job, e: BaseException) -> CheckpointWriteError:
        """The failure in plain words, with the newest checkpoint that is still whole.

        A full disk shows up as ENOSPC/EDQUOT, or, from inside torch.save, as
        ``[enforce fail at inline_container.cc] unexpected pos``: both are named from the free space."""
        free = _free_bytes(self.directory)
        no_space = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
            free is not None and free < job.nbytes)
        if no_space:
            cause = f"no space left on device: {_size(job.nbytes)} needed in {self.directory}"
            if free is not None:
                cause += f" ({_size(free)} free)"
        else:
            cause = f"could not be written: {type(e).__name__}: {e}"
        last = self._last_valid()
        where = f"the last valid checkpoint is {last}" if last else "there is no valid checkpoint yet"
        return CheckpointWriteError(f"checkpoint {job.final}: {cause}; {where}", path=job.final,
                                    detail=cause, last_valid=last)

    def _last_valid(self) -> Path | None:
        """The newest checkpoint whose files are all present with their manifest sizes (no hashing)."""
        try:
            for info in reversed(self.list(deep=False)):
                if info.valid:
                    return info.path
        except (OSError, CheckpointError):
            pass
        return None

    def _retain(self, protect: str) -> None:
        """Delete what the retention rules do not keep. Never deletes ``protect`` or a pinned one;
        directories without a readable manifest are never touched (we cannot tell what they are)."""
        try:
            pins = self._read_pins()
        except CheckpointError as e:
            warnings.warn(f"checkpoint retention skipped, nothing deleted: {e}", stacklevel=2)
            return
        infos = [info for info, manifest in (self._inspect(p, pins, deep=False) for p in self._store.entries())
                 if manifest is not None]
        keep = select_retained(infos, keep_last=self.keep_last, keep_best=self.keep_best,
                               monitor=self.monitor, mode=self.mode, protect=(protect,))
        for info in infos:
            if info.name not in keep:
                self._store.delete(info.path)

    # -- waiting
    @property
    def pending(self) -> bool:
        """An async save is in flight (or finished and not yet waited for)."""
        return self._thread is not None

    def wait(self) -> None:
        """Block until the pending async save has finished; re-raise its error, if any."""
        with self._lock:
            if self._thread is None:
                return
            self._thread.join()
            job, err = self._pending, self._error
            self._thread, self._pending, self._error = None, None, None
            if err is None:
                return
            if isinstance(err, CheckpointError):
                raise err
            raise self._write_error(job, err) from err

    def close(self) -> None:
        self.wait()

    # -- pins
    def _read_pins(self) -> set[str]:
        return read_pins(self.directory)

    def pin(self, name: str) -> None:
        """Keep ``name`` forever (retention never deletes it). Recorded in ``pins.json``."""
        with self._lock:
            self.wait()
            path = self.directory / name
            read_manifest(path)  # only a finished checkpoint can be pinned
            pins = {p for p in self._read_pins() if (self.directory / p).is_dir()} | {name}
            write_pins(self.directory, pins)

    # -- reading
    def _inspect(self, path: Path, pins: set, deep: bool) -> tuple[CheckpointInfo, dict | None]:
        """CheckpointInfo for one directory, and its manifest when that is readable."""
        manifest, valid, reason = None, True, None
        try:
            manifest = read_manifest(path)
            verify_files(path, deep=deep)
        except CheckpointError as e:
            valid, reason = False, e.detail
        record = manifest
        if record is None:  # best effort, for sorting and display only
            try:
                record = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                record = None
            record = record if isinstance(record, dict) else {}
        metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
        monitored = metrics.get(self.monitor) if self.monitor else None
        try:
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            created = float(record.get("created") or path.stat().st_mtime)
        except (OSError, TypeError, ValueError):
            size, created = 0, 0.0
        info = CheckpointInfo(
            name=path.name, path=path, step=_int(record.get("step")), epoch=_int(record.get("epoch")),
            metrics=metrics, monitored=float(monitored) if is_number(monitored) else None,
            size_bytes=size, pinned=bool(record.get("pinned")) or path.name in pins,
            valid=valid, reason=reason, created=created)
        return info, manifest

    def list(self, *, deep: bool = True) -> list[CheckpointInfo]:
        """All checkpoints, sorted by step then creation time, invalid ones included (valid=False,
        reason). ``deep=False`` checks sizes only, skipping the sha256 of every file."""
        try:
            pins = self._read_pins()
        except CheckpointError as e:
            warnings.warn(str(e), stacklevel=2)
            pins = set()
        infos = []
        for p in self._store.entries():
            info, _ = self._inspect(p, pins, deep)
            if p.is_dir():  # a retention running in the background may have removed it meanwhile
                infos.append(info)
        return sorted(infos, key=lambda i: (i.step, i.created))

    def latest_valid(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies in full; warns naming each newer one skipped and why."""
        found = self._newest(load=False)
        return found[0] if found else None

    def load_latest(self, accept: Any = None) -> tuple[CheckpointInfo, dict] | None:
        """The newest checkpoint that loads, with its payload: verified once (``latest_valid``
        followed by ``load`` would hash every file twice); warns like ``latest_valid``.
        ``accept(payload)`` may return a reason to skip a checkpoint that loads (a foreign one)."""
        return self._newest(load=True, accept=accept)

    def _newest(self, load: bool, accept: Any = None) -> tuple[CheckpointInfo, dict | None] | None:
        self.wait()  # a pending save may be the newest one
        skipped: list[CheckpointInfo] = []
        chosen = None
        for info in reversed(self.list(deep=False)):
            if info.valid:
                try:
                    if load:
                        payload = load_checkpoint(info.path)
                        reason = accept(payload) if accept is not None else None
                        if reason:
                            raise CheckpointError(reason, detail=reason)
                        chosen = (info, payload)
                    else:
                        verify_files(info.path, deep=True)
                        chosen = (info, None)
                    break
                except CheckpointError as e:
                    info.valid, info.reason = False, e.detail
            skipped.append(info)
        if skipped:
            names = "; ".join(f"{i.path} ({i.reason})" for i in skipped)
            target = f"falling back to {chosen[0].path}" if chosen else "no valid checkpoint left"
            warnings.warn(f"skipping invalid checkpoint(s): {names}; {target}", stacklevel=3)
        return chosen

    def _resolve(self, path_or_name: Path | str) -> Path:
        p = Path(path_or_name)
        if isinstance(path_or_name, str) and not p.is_absolute() and len(p.parts) == 1:
            return self.directory / path_or_name  # a bare name lives in this manager's directory
        return p

    def verify(self, path: Path | str) -> None:
        """Raise CheckpointError unless every file matches the manifest (size and sha256)."""
        verify_files(self._resolve(path), deep=True)

    def load(self, path_or_name: Path | str) -> dict:
        """Verify, then return the payload ({"model", "tensors", "meta"}) on the CPU."""
        self.wait()  # the pending save may be replacing this very name
        return load_checkpoint(self._resolve(path_or_name))


def _free_bytes(directory: Path) -> int | None:
    for d in (directory, *directory.parents):
        if d.exists():
            try:
                return shutil.disk_usage(d).free
            except OSError:
                return None
    return None


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{max(n / 1e6, 0.1):.1f} MB"


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1
