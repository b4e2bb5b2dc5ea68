"""The payload codec: what a checkpoint's three data files hold and how they are read back.

- ``payload["model"]`` (a state dict) -> ``model.safetensors``: unique tensors, with names tied to
  one storage (shared weights) kept as aliases in its metadata and re-tied on load;
- ``payload["tensors"]`` -> ``state.pt``, written with ``torch.save`` and read back with
  ``weights_only=True``, so it may hold only tensors, numbers, strings and plain containers;
- ``payload["meta"]`` plus the step, epoch, metrics and pin -> ``state.json``.

Every check that loading would fail runs at save time, naming the offending key.
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as _st_load_file
from safetensors.torch import save_file as _st_save_file

from ..fileio import fsync_dir, write_synced
from .layout import FORMAT, MANIFEST_FILE, META_FILE, MODEL_FILE, STATE_FILE, error, json_bytes
from .manifest import read_json, seal, verify

_LEAVES = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.dtype, torch.device)


def _where(path: tuple) -> str:
    return "".join(f"[{p!r}]" for p in path)


def check_tensor_tree(obj: Any, path: tuple, target: Path) -> None:
    """Refuse, at save time, anything ``torch.load(weights_only=True)`` would refuse at load time."""
    if isinstance(obj, _LEAVES) or type(obj) is torch.Size:
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (int, float, bool, str, type(None))):
                raise error(target, f"cannot save: payload['tensors']{_where(path)} has a key of type "
                             f"{type(k).__name__}; use str or int keys")
            check_tensor_tree(v, path + (k,), target)
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_tensor_tree(v, path + (i,), target)
        return
    raise error(target, f"cannot save: payload['tensors']{_where(path)} is a {type(obj).__module__}."
                 f"{type(obj).__qualname__}; a checkpoint stores only tensors, numbers, strings, bools, None, "
                 "dtypes and dicts/lists/tuples of them (convert it, e.g. numpy -> torch.from_numpy, or put "
                 "JSON-able values in payload['meta'])")


def check_json_tree(obj: Any, path: tuple, what: str, target: Path) -> None:
    """JSON would silently turn int keys into strings and objects into errors deep in json.dumps."""
    if isinstance(obj, (str, int, float, bool, type(None))):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise error(target, f"cannot save: {what}{_where(path)} has a {type(k).__name__} key {k!r}; "
                             "JSON keys must be str (put it in payload['tensors'] to keep its type)")
            check_json_tree(v, path + (k,), what, target)
        return
    if isinstance(obj, (list, tuple)):  # tuples come back as lists, as JSON has no tuple
        for i, v in enumerate(obj):
            check_json_tree(v, path + (i,), what, target)
        return
    raise error(target, f"cannot save: {what}{_where(path)} is a {type(obj).__name__}, not JSON-able "
                 "(call .item() / .tolist(), or put it in payload['tensors'])")


def clean_metrics(metrics: dict | None, target: Path) -> dict:
    """Metrics are often 0-d tensors or numpy scalars: store them as plain numbers."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        elif hasattr(v, "item") and not isinstance(v, (int, float, bool)):
            v = v.item()  # numpy scalar
        out[k] = v
    check_json_tree(out, (), "metrics", target)
    return json.loads(json.dumps(out))  # a deep copy the caller cannot mutate under an async writer


def split_aliases(model: dict, target: Path) -> tuple[dict, dict, list]:
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
            raise error(target, f"cannot save: payload['model'] has a non-str key {name!r}")
        if not isinstance(t, torch.Tensor):
            raise error(target, f"cannot save: payload['model'][{name!r}] is a {type(t).__name__}, not a "
                         "tensor (put extra state in payload['tensors'])")
        if t.layout != torch.strided:
            raise error(target, f"cannot save: payload['model'][{name!r}] is a {t.layout} tensor; "
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


def model_container_info(model: dict) -> dict:
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


@dataclass
class Job:
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
    nbytes: int = 0  # about what the files take on disk: what a full disk is told it lacks


def payload_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) payload part, plus a little for each other leaf."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 16


def write_files(tmp: Path, job: Job) -> None:
    """Write the three data files and the manifest into ``tmp``, each fsynced."""
    # One metadata key: safetensors writes its metadata map in hash order, so several keys would
    # make the bytes of identical checkpoints differ between processes.
    info = {"format": FORMAT, "aliases": json.dumps(job.aliases), "keys": json.dumps(job.keys), **job.model_info}
    metadata = {"trainforge": json.dumps(info, sort_keys=True)}
    unique = {k: v.contiguous() for k, v in job.unique.items()}  # safetensors stores dense rows only
    _st_save_file(unique, str(tmp / MODEL_FILE), metadata=metadata)
    torch.save(job.tensors, tmp / STATE_FILE)
    write_synced(tmp / META_FILE, job.state_json)
    files = {f: seal(tmp / f) for f in (MODEL_FILE, STATE_FILE)}
    files[META_FILE] = seal(tmp / META_FILE)
    for f in sorted(tmp.rglob("*")):  # files other writers put there first (every rank's shards)
        name = f.relative_to(tmp).as_posix()
        if f.is_file() and name not in files and name != MANIFEST_FILE:
            files[name] = seal(f)
    for d in sorted({f.parent for f in tmp.rglob("*") if f.is_file()} - {tmp}):
        fsync_dir(d)    # The manifest is written last: a directory holding one was finished.
    write_synced(tmp / MANIFEST_FILE, json_bytes({**job.manifest, "files": files}))
    fsync_dir(tmp)


# --------------------------------------------------------------------------- load
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
        raise error(path, f"{MODEL_FILE} could not be read: {e}") from e
    for alias, target in aliases.items():
        if target not in tensors:
            raise error(path, f"{MODEL_FILE}: alias {alias!r} points at missing tensor {target!r}")
        tensors[alias] = tensors[target]  # the same tensor object: the tie is restored
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise error(path, f"{MODEL_FILE} lacks tensors {missing[:5]}")
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
        raise error(path, f"refusing to unpickle {STATE_FILE}: it holds objects other than tensors and plain "
                     f"containers, so it is not a trainforge checkpoint or it was tampered with "
                     f"({_unpickling_detail(e)})") from None
    except Exception as e:
        raise error(path, f"{STATE_FILE} could not be read: {e}") from e


def load_checkpoint(path: Path | str) -> dict:
    """Verify a checkpoint directory against its manifest, then return {"model", "tensors", "meta"}."""
    path = Path(path)
    verify(path, deep=True)
    state = read_json(path / META_FILE, path, META_FILE)
    if not isinstance(state, dict) or "meta" not in state:
        raise error(path, f"{META_FILE} has no 'meta' entry")
    payload = {"model": _load_model(path), "tensors": _load_tensors(path), "meta": state["meta"]}
    if isinstance(state["meta"], dict) and state["meta"].get("sharded"):  # FSDP: every rank's shards, read whole
        from ..distributed.sharded import read_shards
        payload = read_shards(path, payload)
    return payload
