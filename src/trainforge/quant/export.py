"""Packed export of a BitNet model: 2 bits per ternary weight, 1 bit per binary weight, in safetensors.

The file holds, for each BitLinear ``name``: ``name.weight.packed`` (uint8, 4 ternary or 8 binary
codes per byte, row-major, zero-padded) and ``name.weight.scale`` (float32, the per-tensor scale),
plus every other tensor of the model's state dict in full precision (biases, norms, embeddings,
the LM head). A tensor shared by several names (tied embeddings) is stored once; the metadata
(``trainforge_bitnet``, JSON) lists the layers, their shapes and settings, and the aliases.
Nothing is pickled. ``load_bitnet(path, model)`` puts it back into a model of the same architecture
(dense or converted): its outputs equal the quantized model's exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .bitnet import BitLinear, bit_layers, convert_to_bitnet, weight_codes

FORMAT = "trainforge-bitnet/1"


# -- packing -------------------------------------------------------------------------------------

def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Codes in {-1, 0, 1} -> uint8, 4 per byte (2 bits each: code + 1), little end first."""
    u = (codes.reshape(-1).to(torch.int16) + 1).to(torch.uint8)
    if not bool(((u <= 2)).all()):
        raise ValueError("pack_ternary: codes must be -1, 0 or 1")
    pad = (-u.numel()) % 4
    u = torch.cat([u, u.new_ones(pad)]) if pad else u  # pad with code 0 (stored as 1)
    u = u.reshape(-1, 4)
    return u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)


def unpack_ternary(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    u = (packed.reshape(-1, 1) >> shifts) & 3
    return u.reshape(-1)[:numel].to(torch.int8) - 1


def pack_binary(codes: torch.Tensor) -> torch.Tensor:
    """Codes in {-1, 1} -> uint8, 8 per byte (bit set = +1), little end first."""
    bits = (codes.reshape(-1) > 0).to(torch.uint8)
    pad = (-bits.numel()) % 8
    bits = torch.cat([bits, bits.new_zeros(pad)]) if pad else bits
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (bits.reshape(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_binary(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8)
    bits = (packed.reshape(-1, 1) >> shifts) & 1
    return bits.reshape(-1)[:numel].to(torch.int8) * 2 - 1


# -- export / load -------------------------------------------------------------------------------

@dataclass
class ExportSizes:
    path: Path
    file_bytes: int            # the exported file
    dense_bytes: int           # the same model's unique state tensors in fp32 (what a dense safetensors holds)
    layer_fp32_bytes: int      # the converted layers' weights in fp32
    layer_packed_bytes: int    # the same weights packed, with their scales
    layers: int

    @property
    def layer_ratio(self) -> float:
        return self.layer_fp32_bytes / max(self.layer_packed_bytes, 1)

    @property
    def file_ratio(self) -> float:
        return self.dense_bytes / max(self.file_bytes, 1)

    def lines(self) -> list[str]:
        return [f"converted layers: {self.layers} · fp32 weights {_mb(self.layer_fp32_bytes)} -> packed "
                f"{_mb(self.layer_packed_bytes)} ({self.layer_ratio:.1f}x smaller)",
                f"whole model: dense fp32 {_mb(self.dense_bytes)} -> exported {_mb(self.file_bytes)} "
                f"({self.file_ratio:.2f}x smaller) · {self.path}"]


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB" if n >= 10_000 else f"{n:,} B"


def export_bitnet(model: nn.Module, path: str | Path) -> ExportSizes:
    """Write ``model`` (with its BitLinear layers quantized and packed) to ``path`` (safetensors)."""
    path = Path(path)
    layers = dict(bit_layers(model))
    if not layers:
        raise ValueError("export_bitnet: the model has no BitLinear layers (convert it with convert_to_bitnet, "
                         "or set `bitnet:` in the run's config)")
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta_layers: dict[str, dict] = {}
    packed_bytes = fp32_bytes = 0
    skip = {f"{name}.weight" for name in layers}
    for name, layer in layers.items():
        with torch.no_grad():
            if layer.frozen_weight is not None:
                w_q = layer.frozen_weight.detach().cpu().float()
                scale = w_q.abs().max()
                codes = torch.where(scale > 0, w_q / scale.clamp(min=1e-30), w_q).round()
            else:
                codes, scale = weight_codes(layer.weight.detach().cpu().float(), layer.weight_bits, layer.eps)
        packed = pack_binary(codes) if layer.weight_bits == 1 else pack_ternary(codes)
        tensors[f"{name}.weight.packed"] = packed
        tensors[f"{name}.weight.scale"] = scale.reshape(1).to(torch.float32)
        meta_layers[name] = {"shape": list(layer.weight.shape), "weight_bits": layer.weight_bits,
                             "act_bits": layer.act_bits, "norm": layer.norm is not None, "eps": layer.eps,
                             "dtype": str(layer.weight.dtype).removeprefix("torch.")}
        packed_bytes += packed.numel() + 4
        fp32_bytes += layer.weight.numel() * 4
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    dense_bytes = 0
    for key, t in state.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        dense_bytes += t.numel() * 4 if t.is_floating_point() else t.numel() * t.element_size()
        if key not in skip:
            tensors[key] = t.detach().cpu().contiguous().clone()
    metadata = {"format": FORMAT, "trainforge_bitnet": json.dumps({"layers": meta_layers, "aliases": aliases})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return ExportSizes(path, path.stat().st_size, dense_bytes, fp32_bytes, packed_bytes, len(layers))


def read_bitnet(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of an exported file; a file of another kind is a ValueError naming it."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a trainforge BitNet export (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, json.loads(meta["trainforge_bitnet"])


def load_bitnet(path: str | Path, model: nn.Module) -> nn.Module:
    """Load an export into ``model`` (same architecture, dense or converted), in place; returns it.

    Each exported layer becomes a BitLinear whose weight is the exported ``codes * scale``, used as
    is (never re-quantized), so outputs equal the quantized model's exactly. Put the model in
    eval mode for inference (it is left in the mode it was in).
    """
    tensors, meta = read_bitnet(path)
    layers: dict[str, dict] = meta["layers"]
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"load_bitnet: the model has no module(s) {', '.join(missing)} named in {path}")
    for name, info in layers.items():
        module = modules[name]
        if not isinstance(module, nn.Linear) or list(module.weight.shape) != info["shape"]:
            raise ValueError(f"load_bitnet: {name} in {path} is a {info['shape']} linear layer; the model's is "
                             f"{type(module).__name__} {list(getattr(module, 'weight', torch.empty(0)).shape)}")
        if not isinstance(module, BitLinear):
            parent, _, child = name.rpartition(".")
            convert_to_bitnet(modules[parent] if parent else model, info["weight_bits"], skip=[],
                              act_bits=info["act_bits"], norm=info["norm"], eps=info["eps"])
    modules = dict(model.named_modules())
    state = {k: v for k, v in tensors.items() if not k.endswith((".weight.packed", ".weight.scale"))}
    for alias, source in meta.get("aliases", {}).items():
        state[alias] = state[source]
    for name, info in layers.items():
        layer: BitLinear = modules[name]
        shape = info["shape"]
        numel = shape[0] * shape[1]
        packed = tensors[f"{name}.weight.packed"]
        codes = unpack_binary(packed, numel) if info["weight_bits"] == 1 else unpack_ternary(packed, numel)
        w_q = (codes.to(torch.float32) * tensors[f"{name}.weight.scale"][0]).reshape(shape)
        w_q = w_q.to(getattr(torch, info.get("dtype", "float32")))
        state[f"{name}.weight"] = w_q
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"load_bitnet: {path} does not fit the model: missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys}")
    for name in layers:
        layer = modules[name]
        layer.frozen_weight = layer.weight.detach().clone()
        layer.lam = 1.0
    return model
