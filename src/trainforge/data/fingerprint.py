"""A fingerprint of the training data, recorded in every checkpoint so a resume notices changed data.

Cheap even for GBs: each file contributes its size and a BLAKE2b hash of its content — all of it up
to 64 MiB, beyond that 16 blocks of 1 MiB spread evenly (first and last included) plus the size, so
an append, a truncation or an edit inside a sampled block is caught; an edit of equal length
between sampled blocks of a huge file is not. The modification time is not used (a ``touch`` or a
copy is not a change). In-memory data contributes its length and the same kind of hash of its
tensors (and of its text columns); a dataset that is neither (a user's ``__getitem__``) contributes
its length only, which the fingerprint says (``"method"``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import torch

WHOLE = 64 << 20
BLOCK = 1 << 20
BLOCKS = 16


def fingerprint(dataset: Any, files: Iterable[Path | str] = ()) -> dict[str, Any]:
    try:
        length = len(dataset)
    except TypeError:  # a stream: its files say what it holds
        length = None
    fp: dict[str, Any] = {"length": length}
    digest = hashlib.blake2b(digest_size=16)
    found = _hash_object(dataset, digest, depth=0, seen=set())
    if found:
        fp["content"] = digest.hexdigest()
    listed = {}
    for f in files:
        for path in _expand(Path(f)):
            listed[str(path)] = file_fingerprint(path)
    if listed:
        fp["files"] = listed
    fp["method"] = "size + sampled blake2b" if (found or listed) else "length only"
    return fp


def file_fingerprint(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= WHOLE:
            h.update(f.read())
        else:
            for i in range(BLOCKS):
                f.seek((size - BLOCK) * i // (BLOCKS - 1))
                h.update(f.read(BLOCK))
    return {"size": size, "hash": h.hexdigest()}


def changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """What differs between two fingerprints, in words (empty: the same data, or nothing to compare)."""
    if not old or not new:
        return []
    out = []
    if old.get("length") != new.get("length"):
        out.append(f"training samples: {old.get('length')} -> {new.get('length')}")
    of, nf = old.get("files") or {}, new.get("files") or {}
    for name in sorted(set(of) | set(nf)):
        a, b = of.get(name), nf.get(name)
        if a is None:
            out.append(f"file {name} is new")
        elif b is None:
            out.append(f"file {name} is gone")
        elif a["size"] != b["size"]:
            out.append(f"file {name}: {a['size']:,} -> {b['size']:,} bytes")
        elif a["hash"] != b["hash"]:
            out.append(f"file {name}: content changed (same size)")
    if old.get("content") and new.get("content") and old["content"] != new["content"] and not out:
        out.append("the training data's content changed (same length)")
    return out


def _expand(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))[:1000]
    return []


def _hash_object(obj: Any, digest: Any, depth: int, seen: set[int]) -> bool:
    """Feed the tensors (and text columns) reachable from a dataset into ``digest``."""
    if depth > 4 or id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        _hash_tensor(obj, digest)
        return True
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(x, torch.Tensor) for x in obj[:8]):
            return any([_hash_object(x, digest, depth + 1, seen) for x in obj[:64]])
        if obj and all(isinstance(x, (str, int, float)) for x in obj[:8]):
            step = max(1, len(obj) // 4096)
            digest.update(repr((len(obj), obj[::step])).encode())
            return True
        return False
    if isinstance(obj, dict):
        return any([_hash_object(v, digest, depth + 1, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))])
    found = False
    for attr in ("tensors", "columns", "tokens", "data", "indices", "dataset"):
        value = getattr(obj, attr, None)
        if value is not None and not callable(value):
            found = _hash_object(value, digest, depth + 1, seen) or found
    return found


def _hash_tensor(t: torch.Tensor, digest: Any) -> None:
    t = t.detach()
    digest.update(repr((tuple(t.shape), str(t.dtype))).encode())
    if t.device.type != "cpu" or t.layout != torch.strided or t.numel() == 0:
        return
    flat = t.contiguous().reshape(-1).view(torch.uint8)
    n = flat.numel()
    if n <= WHOLE:
        digest.update(flat.numpy().tobytes())
        return
    for i in range(BLOCKS):
        start = (n - BLOCK) * i // (BLOCKS - 1)
        digest.update(flat[start:start + BLOCK].numpy().tobytes())
