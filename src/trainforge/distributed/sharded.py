"""FSDP state in the registry and in checkpoints (torch.distributed.checkpoint).

Under FSDP the registry's ``model`` and ``optimizer`` parts are ``ShardedModel`` and
``ShardedOptimizer``: their ``state_dict`` is this rank's shards (DTensors, parameter names as
keys, the same names as the plain model's), and ``load_state_dict`` takes either shards or a full
state (a 1-process or DDP checkpoint, or a sharded one read whole), which it shards itself — so a
checkpoint reshards on load, whatever world size wrote it.

A sharded checkpoint is one checkpoint directory: every rank writes its shards with DCP into
``shards/`` of the same temporary directory, then rank 0 writes the other files (replicated state,
meta) and the manifest over every file, shards included, and renames it into place. Only tensors go
through DCP (optimizer hyper-parameters stay in the weights_only state file), and DCP's metadata is
read with an unpickler that admits only DCP's own record types: nothing untrusted is unpickled.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer

SHARDS = "shards"  # the DCP sub-directory of a sharded checkpoint


def _is_dtensor(value: Any) -> bool:
    return hasattr(value, "full_tensor")


def _options(full: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=full)


class ShardedModel:
    """The registry's ``model`` part under FSDP."""

    def __init__(self, model: nn.Module):
        self.module = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        return get_model_state_dict(self.module)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        full = not any(_is_dtensor(v) for v in state.values())
        set_model_state_dict(self.module, dict(state), options=_options(full))


class ShardedOptimizer:
    """The registry's ``optimizer`` part under FSDP: keyed by parameter name (``state_dict``); loads a
    plain optimizer's state (keyed by index) as well."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
        if by_index(state):
            state = to_names(state, self.model, self.optimizer)
        full = not any(_is_dtensor(v) for s in state["state"].values() for v in s.values())
        set_optimizer_state_dict(self.model, self.optimizer, state, options=_options(full))


# --------------------------------------------------------------------------- optimizer key forms
def by_index(state: dict[str, Any]) -> bool:
    """A plain ``Optimizer.state_dict()`` (parameters by index) rather than one keyed by name."""
    groups = state.get("param_groups") or [{}]
    return any(isinstance(p, int) for g in groups for p in g.get("params", []))


def _order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def to_names(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    order = _order(model, optimizer)
    return {"state": {order[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}


def to_index(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    index = {n: i for i, n in enumerate(_order(model, optimizer))}
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


# --------------------------------------------------------------------------- save
def split(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what DCP writes: every tensor of the model and of the optimizer's state; the rest of the
    payload, which rank 0 writes as usual, with the optimizer's hyper-parameters)."""
    optimizer = payload["tensors"]["optimizer"]
    tensors, others = {}, {}
    for name, entry in optimizer["state"].items():
        tensors[name] = {k: v for k, v in entry.items() if isinstance(v, torch.Tensor)}
        rest = {k: v for k, v in entry.items() if not isinstance(v, torch.Tensor)}
        if rest:
            others[name] = rest
    shards = {"model": payload["model"], "optim": tensors}
    rest = {**payload, "model": {},
            "tensors": {**payload["tensors"], "optimizer": {"param_groups": optimizer["param_groups"],
                                                            "state_rest": others}}}
    rest["meta"] = {**payload["meta"], "sharded": SHARDS}
    return shards, rest


def save(trainer: "Trainer", name: str, payload: dict[str, Any], **record: Any) -> Path:
    """Write a sharded checkpoint (a collective: every rank calls it at the same save)."""
    import torch.distributed.checkpoint as dcp
    ctx, manager = trainer.dist.ctx, trainer.checkpoints
    shards, rest = split(payload)
    tmp = ctx.gather_objects(str(manager.begin(name)) if ctx.is_main else None)[0]
    try:
        dcp.save(shards, storage_writer=dcp.FileSystemWriter(Path(tmp) / SHARDS, sync_files=True))
    except BaseException:
        ctx.barrier()
        raise
    path = manager.directory / name
    if ctx.is_main:
        path = manager.seal(name, rest, Path(tmp), **record)  # the manifest covers every rank's shards
    ctx.barrier()  # complete only now: every rank wrote, and rank 0 sealed and renamed it
    return path


# --------------------------------------------------------------------------- load
def read_shards(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """A sharded checkpoint's payload with the model and optimizer state read whole (plain tensors,
    the optimizer keyed by parameter name). Inside a process group every rank must call it."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
        whole = _load_state_dict_from_keys(storage_reader=_SafeReader(path / SHARDS))
    optimizer = payload["tensors"]["optimizer"]
    state = {n: {**whole.get("optim", {}).get(n, {}), **optimizer.get("state_rest", {}).get(n, {})}
             for n in set(whole.get("optim", {})) | set(optimizer.get("state_rest", {}))}
    tensors = {**payload["tensors"], "optimizer": {"state": state, "param_groups": optimizer["param_groups"]}}
    return {**payload, "model": whole.get("model", {}), "tensors": tensors}


def plain_optimizer_state(state: dict[str, Any], model: Any, optimizer: Any) -> dict[str, Any]:
    """A name-keyed optimizer state in the form a plain optimizer loads (1 process, DDP)."""
    return to_index(state, model, optimizer) if not by_index(state) else state


def _safe_reader():  # built lazily: importing DCP costs time every CLI call would pay
    import torch.distributed.checkpoint as dcp

    class SafeReader(dcp.FileSystemReader):
        """DCP's reader, but its metadata file is unpickled admitting DCP's own record types only."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


def _SafeReader(path: Path) -> Any:  # noqa: N802 - reads as a class
    return _safe_reader()(path)


class _MetadataUnpickler(pickle.Unpickler):
    SAFE_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "int", "float", "str", "bool", "bytes", "slice"}
    # what DCP's metadata holds besides its own records: each builds a plain value from strings
    SAFE_CALLS = {("collections", "OrderedDict"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
                  ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"), ("torch.serialization", "_get_layout")}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint."):
            return super().find_class(module, name)
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None),
                                                                 (torch.dtype, torch.layout, torch.memory_format))):
            return getattr(torch, name)
        if module == "builtins" and name in self.SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in self.SAFE_CALLS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}, which a checkpoint's metadata "
                                     "never holds: refusing to unpickle it")
