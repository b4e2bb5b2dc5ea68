"""CheckpointManager: atomic, verified, retained and optionally asynchronous checkpoints.

One directory per checkpoint (docs/checkpoints.md has the full story)::

    <directory>/<name>/model.safetensors  unique model tensors; tied names kept as aliases in its metadata
                      /state.pt           torch.save(payload["tensors"]), read back with weights_only=True
                      /state.json         payload["meta"] plus step, epoch, metrics, pinned
                      /MANIFEST.json      sha256 and size of each file, step, epoch, metrics, pinned, created
    <directory>/pins.json                 names pinned after their save (replaced atomically)

A checkpoint exists whole or not at all: it is written into a hidden sibling
(``.tmp-<name>-<pid>``), every file and the directory are fsynced, and only then is it renamed
into place. Anything whose name starts with a dot is never listed and is cleaned up (or, for an
interrupted replace, put back) by the next save.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as _st_load_file
from safetensors.torch import save_file as _st_save_file

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "format_checkpoint_table",
    "load_checkpoint",
    "select_retained",
]

FORMAT = "trainforge.checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "state.json"
MANIFEST_FILE = "MANIFEST.json"
PINS_FILE = "pins.json"
DATA_FILES = (MODEL_FILE, STATE_FILE, META_FILE)

# Checkpoint names become directory names: keep them plain so they can never escape the
# directory or collide with the hidden working names (.tmp-*, .old-*, .trash-*).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]{0,199}$")
_LEFTOVER = re.compile(r"^\.(tmp|old|trash)-(.+)-(\d+)$")
_CHUNK = 8 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, found, verified or loaded.

    The message always names the checkpoint; ``detail`` is the same message without the path
    (what a table column shows) and ``path`` the checkpoint directory when one is known.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, detail: str | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.detail = detail or message


def _error(path: Path | str, detail: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {detail}", path=path, detail=detail)


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    step: int
    epoch: int
    metrics: dict
    monitored: float | None
    size_bytes: int
    pinned: bool
    valid: bool
    reason: str | None
    created: float


# --------------------------------------------------------------------------- payload checks
_LEAVES = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.dtype, torch.device)


def _where(path: tuple) -> str:
    return "".join(f"[{p!r}]" for p in path)


def _check_tensor_tree(obj: Any, path: tuple, target: Path) -> None:
    """Refuse, at save time, anything ``torch.load(weights_only=True)`` would refuse at load time."""
    if isinstance(obj, _LEAVES) or type(obj) is torch.Size:
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (int, float, bool, str, type(None))):
                raise _error(target, f"cannot save: payload['tensors']{_where(path)} has a key of type "
                             f"{type(k).__name__}; use str or int keys")
            _check_tensor_tree(v, path + (k,), target)
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_tensor_tree(v, path + (i,), target)
        return
    raise _error(target, f"cannot save: payload['tensors']{_where(path)} is a {type(obj).__module__}."
                 f"{type(obj).__qualname__}; a checkpoint stores only tensors, numbers, strings, bools, None, "
                 "dtypes and dicts/lists/tuples of them (convert it, e.g. numpy -> torch.from_numpy, or put "
                 "JSON-able values in payload['meta'])")


def _check_json_tree(obj: Any, path: tuple, what: str, target: Path) -> None:
    """JSON would silently turn int keys into strings and objects into errors deep in json.dumps."""
    if isinstance(obj, (str, int, float, bool, type(None))):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise _error(target, f"cannot save: {what}{_where(path)} has a {type(k).__name__} key {k!r}; "
                             "JSON keys must be str (put it in payload['tensors'] to keep its type)")
            _check_json_tree(v, path + (k,), what, target)
        return
    if isinstance(obj, (list, tuple)):  # tuples come back as lists, as JSON has no tuple
        for i, v in enumerate(obj):
            _check_json_tree(v, path + (i,), what, target)
        return
    raise _error(target, f"cannot save: {what}{_where(path)} is a {type(obj).__name__}, not JSON-able "
                 "(call .item() / .tolist(), or put it in payload['tensors'])")


def _clean_metrics(metrics: dict | None, target: Path) -> dict:
    """Metrics are often 0-d tensors or numpy scalars: store them as plain numbers."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        elif hasattr(v, "item") and not isinstance(v, (int, float, bool)):
            v = v.item()  # numpy scalar
        out[k] = v
    _check_json_tree(out, (), "metrics", target)
    return json.loads(json.dumps(out))  # a deep copy the caller cannot mutate under an async writer


def _split_aliases(model: dict, target: Path) -> tuple[dict, dict, list]:
    """Unique tensors to store, {alias: stored name} for tied ones, and the original key order.

    safetensors refuses tensors that share memory. Names that are the *same view* of one storage
    (tied weights: state_dict() gives two detached tensors over one storage) are stored once and
    re-tied on load. Names that merely overlap (different slices of one storage) are cloned, so the
    values round-trip even though the overlap does not.
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    by_storage: dict[tuple, list[str]] = {}
    for name, t in model.items():
        if not isinstance(name, str):
            raise _error(target, f"cannot save: payload['model'] has a non-str key {name!r}")
        if not isinstance(t, torch.Tensor):
            raise _error(target, f"cannot save: payload['model'][{name!r}] is a {type(t).__name__}, not a "
                         "tensor (put extra state in payload['tensors'])")
        if t.layout != torch.strided:
            raise _error(target, f"cannot save: payload['model'][{name!r}] is a {t.layout} tensor; "
                         "only dense tensors go in model.safetensors (call .to_dense())")
        t = t.detach()
        if t.numel() == 0:  # empty tensors have no storage to share
            unique[name] = t
            continue
        ptr = t.untyped_storage().data_ptr()
        view = (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        unique[name] = t
        by_storage.setdefault((t.device, ptr), []).append(name)
    for names in by_storage.values():
        if len(names) > 1:
            for name in names:
                unique[name] = unique[name].clone(memory_format=torch.contiguous_format)
    return unique, aliases, list(model.keys())


def _model_container_info(model: dict) -> dict:
    """state_dict() is an OrderedDict carrying ``_metadata`` (per-module format versions that
    load_state_dict consults); keep both so the model comes back exactly as it was given."""
    info = {"container": "OrderedDict" if isinstance(model, OrderedDict) else "dict"}
    module_md = getattr(model, "_metadata", None)
    if module_md is not None:
        try:
            info["module_metadata"] = json.dumps(list(module_md.items()))
        except (TypeError, ValueError):
            pass  # not JSON-able: load_state_dict works without it (versions default to current)
    return info


# --------------------------------------------------------------------------- host snapshot (async)
class _HostStaging:
    """Host copies of the state for async saves, in buffers reused from one save to the next.

    Allocating (for CUDA: pinning) fresh host memory costs about as much as the copy itself and
    would be paid inside the training stall at every save; reusing buffers keeps the stall to one
    memcpy, at the price of holding one host copy of the state between saves. Reuse is safe because
    at most one save is in flight: the previous writer is done before the next copy starts.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def snapshot(self, unique: dict, tensors: Any) -> tuple[dict, Any, list]:
        fresh: dict[tuple, torch.Tensor] = {}
        devices: set = set()
        memo: dict[int, torch.Tensor] = {}  # one object saved twice stays one object
        unique = {k: self._tree(v, ("model", k), fresh, devices, memo) for k, v in unique.items()}
        tensors = self._tree(tensors, ("tensors",), fresh, devices, memo)
        self._buffers = fresh  # forget buffers of tensors that are gone
        return unique, tensors, _device_events(devices)

    def _tree(self, obj: Any, key: tuple, fresh: dict, devices: set, memo: dict) -> Any:
        if isinstance(obj, torch.Tensor):
            if id(obj) not in memo:
                memo[id(obj)] = fresh[key] = self._copy(obj, self._buffers.get(key), devices)
            return memo[id(obj)]
        if isinstance(obj, dict):
            items = {k: self._tree(v, key + (k,), fresh, devices, memo) for k, v in obj.items()}
            return OrderedDict(items) if type(obj) is OrderedDict else items
        if type(obj) in (list, tuple):
            return type(obj)(self._tree(v, key + (i,), fresh, devices, memo) for i, v in enumerate(obj))
        return obj  # immutable leaves

    @staticmethod
    def _copy(t: torch.Tensor, buf: torch.Tensor | None, devices: set) -> torch.Tensor:
        t = t.detach()
        on_device = t.device.type != "cpu"
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.device.type == "cuda")
        # Off-CPU the copy is non-blocking and ordered on the current stream: the optimizer's later
        # in-place updates run after it, so they cannot tear it; the writer waits on an event first.
        buf.copy_(t, non_blocking=on_device)
        if on_device:
            devices.add(t.device)
        return buf


def _device_events(devices: set) -> list:
    events = []
    for dev in devices:
        if dev.type == "cuda":
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(dev))
            events.append(ev)
        else:  # other accelerators: no event API to rely on, so finish the copies now
            getattr(torch, dev.type).synchronize()
    return events


# --------------------------------------------------------------------------- files
def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory to fsync it; NTFS journals the rename
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _digest(f) -> tuple[str, int]:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    size = 0
    while n := f.readinto(buf):
        h.update(view[:n])
        size += n
    return h.hexdigest(), size


def _seal(path: Path) -> dict:
    """fsync a written file and return its manifest entry (sha256 of what is on disk, size)."""
    with open(path, "r+b") as f:  # r+ so fsync is allowed everywhere (Windows needs write access)
        digest, size = _digest(f)
        os.fsync(f.fileno())
    return {"sha256": digest, "size": size}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return _digest(f)[0]


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1).encode("utf-8")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours to signal, or cannot tell: leave its files alone
    return True


@dataclass
class _Job:
    """Everything one save writes, prepared on the caller's thread."""

    name: str
    final: Path
    unique: dict
    aliases: dict
    keys: list
    tensors: Any
    state_json: bytes
    manifest: dict
    model_info: dict
    events: list = field(default_factory=list)


def _write_files(tmp: Path, job: _Job) -> None:
    """Write the three data files and the manifest into ``tmp``, each fsynced."""
    # One metadata key: safetensors writes its metadata map in hash order, so several keys would
    # make the bytes of identical checkpoints differ between processes.
    info = {"format": FORMAT, "aliases": json.dumps(job.aliases), "keys": json.dumps(job.keys), **job.model_info}
    metadata = {"trainforge": json.dumps(info, sort_keys=True)}
    unique = {k: v.contiguous() for k, v in job.unique.items()}  # safetensors stores dense rows only
    _st_save_file(unique, str(tmp / MODEL_FILE), metadata=metadata)
    torch.save(job.tensors, tmp / STATE_FILE)
    _write_bytes(tmp / META_FILE, job.state_json)
    files = {f: _seal(tmp / f) for f in (MODEL_FILE, STATE_FILE)}
    files[META_FILE] = _seal(tmp / META_FILE)
    # The manifest is written last: a directory holding one was finished.
    _write_bytes(tmp / MANIFEST_FILE, _json_bytes({**job.manifest, "files": files}))
    _fsync_dir(tmp)


# --------------------------------------------------------------------------- verify / load
def _read_json(path: Path, ckpt: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _error(ckpt, f"{what} is missing (the save never finished, or the file was deleted)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _error(ckpt, f"{what} is not valid JSON ({e})") from None


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise _error(path, "does not exist (or is not a directory)")
    m = _read_json(path / MANIFEST_FILE, path, MANIFEST_FILE)
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise _error(path, f"{MANIFEST_FILE} is not a trainforge checkpoint manifest")
    if not isinstance(m.get("version"), int) or m["version"] > VERSION:
        raise _error(path, f"format version {m.get('version')!r} is newer than this trainforge reads "
                     f"({VERSION}); upgrade trainforge")
    for f in DATA_FILES:
        if f not in m["files"]:
            raise _error(path, f"{MANIFEST_FILE} does not list {f}")
    return m


def _verify(path: Path, deep: bool = True) -> dict:
    """Return the manifest once every listed file has its recorded size (and, if deep, sha256)."""
    path = Path(path)
    m = _read_manifest(path)
    for fname, entry in m["files"].items():
        if Path(fname).name != fname or fname in ("", ".", ".."):
            raise _error(path, f"{MANIFEST_FILE} lists {fname!r}, which is outside the checkpoint")
        try:
            size, digest = int(entry["size"]), str(entry["sha256"])
        except (TypeError, KeyError, ValueError):
            raise _error(path, f"{MANIFEST_FILE} entry for {fname} lacks size/sha256") from None
        f = path / fname
        try:
            actual = f.stat().st_size
        except FileNotFoundError:
            raise _error(path, f"{fname} is missing") from None
        if actual != size:
            raise _error(path, f"{fname} is {actual} bytes, the manifest says {size} (truncated or overwritten)")
        if deep and (got := _sha256(f)) != digest:
            raise _error(path, f"{fname} is corrupted: sha256 {got[:16]}... does not match the manifest's "
                         f"{digest[:16]}...")
    return m


def _load_model(path: Path) -> dict:
    f = path / MODEL_FILE
    try:
        with safe_open(str(f), framework="pt") as st:
            md = st.metadata() or {}
        if "trainforge" in md:
            md = json.loads(md["trainforge"])
        tensors = _st_load_file(str(f), device="cpu")
        aliases = dict(json.loads(md.get("aliases", "{}")))
        keys = list(json.loads(md.get("keys", "null")) or tensors)
        module_md = json.loads(md["module_metadata"]) if "module_metadata" in md else None
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise _error(path, f"{MODEL_FILE} could not be read: {e}") from e
    for alias, target in aliases.items():
        if target not in tensors:
            raise _error(path, f"{MODEL_FILE}: alias {alias!r} points at missing tensor {target!r}")
        tensors[alias] = tensors[target]  # the same tensor object: the tie is restored
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise _error(path, f"{MODEL_FILE} lacks tensors {missing[:5]}")
    if md.get("container") != "OrderedDict":
        return {k: tensors[k] for k in keys}
    out = OrderedDict((k, tensors[k]) for k in keys)
    if module_md is not None:
        out._metadata = OrderedDict((k, v) for k, v in module_md)  # per-module versions load_state_dict reads
    return out


def _unpickling_detail(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
    return lines[0] if lines else type(e).__name__


def _load_tensors(path: Path) -> Any:
    try:
        return torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise _error(path, f"refusing to unpickle {STATE_FILE}: it holds objects other than tensors and plain "
                     f"containers, so it is not a trainforge checkpoint or it was tampered with "
                     f"({_unpickling_detail(e)})") from None
    except Exception as e:
        raise _error(path, f"{STATE_FILE} could not be read: {e}") from e


def load_checkpoint(path: Path | str) -> dict:
    """Verify a checkpoint directory against its manifest, then return {"model", "tensors", "meta"}."""
    path = Path(path)
    _verify(path, deep=True)
    state = _read_json(path / META_FILE, path, META_FILE)
    if not isinstance(state, dict) or "meta" not in state:
        raise _error(path, f"{META_FILE} has no 'meta' entry")
    return {"model": _load_model(path), "tensors": _load_tensors(path), "meta": state["meta"]}


# --------------------------------------------------------------------------- retention
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def select_retained(infos: list[CheckpointInfo], *, keep_last: int | None, keep_best: int,
                    monitor: str | None, mode: str = "min", protect: tuple = ()) -> set[str]:
    """Names to keep: the last ``keep_last`` by step, the best ``keep_best`` by ``metrics[monitor]``
    (checkpoints without a finite value don't compete; ties go to the newer one), every pinned one,
    and ``protect``. ``keep_last=None`` keeps everything."""
    by_step = sorted(infos, key=lambda i: (i.step, i.created))
    keep = {i.name for i in infos if i.pinned} | set(protect)
    if keep_last is None:
        keep |= {i.name for i in infos}
    elif keep_last > 0:
        keep |= {i.name for i in by_step[-keep_last:]}
    if keep_best > 0 and monitor:
        sign = 1.0 if mode == "min" else -1.0
        scored = [i for i in infos if _is_number(i.metrics.get(monitor))]
        scored.sort(key=lambda i: (sign * i.metrics[monitor], -i.step, -i.created))
        keep |= {i.name for i in scored[:keep_best]}
    return keep


# --------------------------------------------------------------------------- table
def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_checkpoint_table(infos: list[CheckpointInfo]) -> str:
    """The table `trainforge checkpoints RUN_DIR` prints."""
    if not infos:
        return "no checkpoints"
    header = ["name", "step", "epoch", "monitored", "size", "pinned", "valid", "reason"]
    rows = [[
        i.name,
        str(i.step) if i.step >= 0 else "?",
        str(i.epoch) if i.epoch >= 0 else "?",
        f"{i.monitored:.6g}" if i.monitored is not None else "-",
        _human_size(i.size_bytes),
        "yes" if i.pinned else "no",
        "yes" if i.valid else "NO",
        i.reason or "",
    ] for i in infos]
    if not any(r[-1] for r in rows):
        header, rows = header[:-1], [r[:-1] for r in rows]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    right = {"step", "epoch", "monitored", "size"}
    lines = ["  ".join(cell.rjust(w) if h in right else cell.ljust(w)
                       for cell, w, h in zip(r, widths, header)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- manager
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
        self._pending: _Job | None = None
        self._error: BaseException | None = None
        self._staging = _HostStaging()

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

    def _prepare(self, name, payload, step, epoch, metrics, pinned) -> _Job:
        final = self.directory / name
        if not isinstance(name, str) or not _NAME.match(name) or name == PINS_FILE:
            raise _error(final, f"invalid checkpoint name {name!r}: use letters, digits and _ . = + - "
                         "(not starting with a dot), e.g. 'step-000100'")
        if not isinstance(payload, dict) or not {"model", "tensors", "meta"} <= payload.keys():
            got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise _error(final, f"cannot save: payload must be a dict with 'model', 'tensors' and 'meta', got {got}")
        if not isinstance(payload["model"], dict):
            raise _error(final, "cannot save: payload['model'] must be a state dict (name -> tensor)")
        _check_tensor_tree(payload["tensors"], (), final)
        _check_json_tree(payload["meta"], (), "payload['meta']", final)
        metrics = _clean_metrics(metrics, final)
        unique, aliases, keys = _split_aliases(payload["model"], final)
        tensors, events = payload["tensors"], []
        if self.async_save:
            # Copy now, on the caller's thread: the optimizer will update these tensors in place
            # while the writer runs, and a torn checkpoint would resume a different run.
            unique, tensors, events = self._staging.snapshot(unique, tensors)
        record = {"step": int(step), "epoch": int(epoch), "metrics": metrics, "pinned": bool(pinned)}
        # Serialised now: the trainer keeps appending to its history while an async writer runs.
        state_json = _json_bytes({"format": FORMAT, "version": VERSION, **record, "meta": payload["meta"]})
        manifest = {"format": FORMAT, "version": VERSION, "name": name, **record, "created": time.time()}
        model_info = _model_container_info(payload["model"])
        return _Job(name, final, unique, aliases, keys, tensors, state_json, manifest, model_info, events)

    def _run(self, job: _Job) -> None:
        try:
            self._commit(job)
        except BaseException as e:  # handed to the next wait(), on the trainer's thread
            self._error = e

    def _commit(self, job: _Job) -> None:
        for ev in job.events:
            ev.synchronize()
        self._ensure_directory()
        self._clean_leftovers()
        tmp = self.directory / f".tmp-{job.name}-{os.getpid()}"
        try:
            tmp.mkdir()
            _write_files(tmp, job)
            self._install(tmp, job.final)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, CheckpointError):
                raise
            raise _error(job.final, f"could not be written: {type(e).__name__}: {e}") from e
        self._retain(protect=job.name)

    def _ensure_directory(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.directory.parent)

    def _install(self, tmp: Path, final: Path) -> None:
        """Rename the finished directory into place, replacing an existing one of the same name."""
        if not final.exists():
            os.replace(tmp, final)
            _fsync_dir(self.directory)
            return
        # rename(2) cannot replace a non-empty directory, so: old aside, new in, old deleted.
        # A crash between the two renames leaves .old-<name>-<pid>, which the next save puts back.
        old = self.directory / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        _fsync_dir(self.directory)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)  # keep the previous version visible rather than none
            raise
        _fsync_dir(self.directory)
        shutil.rmtree(old, ignore_errors=True)

    def _clean_leftovers(self) -> None:
        """Remove what killed saves left behind; restore a checkpoint whose replacement never landed."""
        for entry in self.directory.iterdir():
            m = _LEFTOVER.match(entry.name)
            if not m:
                continue
            kind, name, pid = m.group(1), m.group(2), int(m.group(3))
            if pid != os.getpid() and _pid_alive(pid):
                continue  # another live process may be writing it
            try:
                if kind == "old" and not (self.directory / name).exists():
                    os.replace(entry, self.directory / name)
                    _fsync_dir(self.directory)
                else:
                    _remove(entry)
            except FileNotFoundError:
                pass

    def _retain(self, protect: str) -> None:
        """Delete what the retention rules do not keep. Never deletes ``protect`` or a pinned one;
        directories without a readable manifest are never touched (we cannot tell what they are)."""
        try:
            pins = self._read_pins()
        except CheckpointError as e:
            warnings.warn(f"checkpoint retention skipped, nothing deleted: {e}", stacklevel=2)
            return
        infos = [info for info, manifest in (self._inspect(p, pins, deep=False) for p in self._entries())
                 if manifest is not None]
        keep = select_retained(infos, keep_last=self.keep_last, keep_best=self.keep_best,
                               monitor=self.monitor, mode=self.mode, protect=(protect,))
        for info in infos:
            if info.name not in keep:
                self._delete(info.path)

    def _delete(self, path: Path) -> None:
        # Rename first so a crash mid-delete leaves a hidden leftover, not a half checkpoint in list().
        trash = self.directory / f".trash-{path.name}-{os.getpid()}"
        try:
            os.replace(path, trash)
            shutil.rmtree(trash)
        except OSError as e:
            warnings.warn(f"checkpoint {path}: retention could not delete it ({e})", stacklevel=3)

    # -- waiting
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
            raise _error(job.final, f"async save failed: {type(err).__name__}: {err}") from err

    def close(self) -> None:
        self.wait()

    # -- pins
    def _read_pins(self) -> set[str]:
        path = self.directory / PINS_FILE
        if not path.exists():
            return set()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return set(data["pinned"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"checkpoint pins {path} are unreadable ({e}); fix or delete the file",
                                  path=path) from None

    def pin(self, name: str) -> None:
        """Keep ``name`` forever (retention never deletes it). Recorded in ``pins.json``."""
        with self._lock:
            self.wait()
            path = self.directory / name
            _read_manifest(path)  # only a finished checkpoint can be pinned
            pins = {p for p in self._read_pins() if (self.directory / p).is_dir()} | {name}
            tmp = self.directory / f".tmp-{PINS_FILE}-{os.getpid()}"
            _write_bytes(tmp, _json_bytes({"version": VERSION, "pinned": sorted(pins)}))
            os.replace(tmp, self.directory / PINS_FILE)
            _fsync_dir(self.directory)

    # -- reading
    def _entries(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _inspect(self, path: Path, pins: set, deep: bool) -> tuple[CheckpointInfo, dict | None]:
        """CheckpointInfo for one directory, and its manifest when that is readable."""
        manifest, valid, reason = None, True, None
        try:
            manifest = _read_manifest(path)
            _verify(path, deep=deep)
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
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            created = float(record.get("created") or path.stat().st_mtime)
        except (OSError, TypeError, ValueError):
            size, created = 0, 0.0
        info = CheckpointInfo(
            name=path.name, path=path, step=_int(record.get("step")), epoch=_int(record.get("epoch")),
            metrics=metrics, monitored=float(monitored) if _is_number(monitored) else None,
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
        for p in self._entries():
            info, _ = self._inspect(p, pins, deep)
            if p.is_dir():  # a retention running in the background may have removed it meanwhile
                infos.append(info)
        return sorted(infos, key=lambda i: (i.step, i.created))

    def latest_valid(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies in full; warns naming each newer one skipped and why."""
        found = self._newest(load=False)
        return found[0] if found else None

    def load_latest(self) -> tuple[CheckpointInfo, dict] | None:
        """The newest checkpoint that loads, with its payload: verified once (``latest_valid``
        followed by ``load`` would hash every file twice); warns like ``latest_valid``."""
        return self._newest(load=True)

    def _newest(self, load: bool) -> tuple[CheckpointInfo, dict | None] | None:
        self.wait()  # a pending save may be the newest one
        skipped: list[CheckpointInfo] = []
        chosen = None
        for info in reversed(self.list(deep=False)):
            if info.valid:
                try:
                    if load:
                        chosen = (info, load_checkpoint(info.path))
                    else:
                        _verify(info.path, deep=True)
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
        _verify(self._resolve(path), deep=True)

    def load(self, path_or_name: Path | str) -> dict:
        """Verify, then return the payload ({"model", "tensors", "meta"}) on the CPU."""
        self.wait()  # the pending save may be replacing this very name
        return load_checkpoint(self._resolve(path_or_name))


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1
