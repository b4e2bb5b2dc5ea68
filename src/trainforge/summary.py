"""A model summary: parameters per top-level module, trainable and frozen, and their bytes."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .fileio import human_size


@dataclass
class ModuleRow:
    name: str
    kind: str
    trainable: int
    frozen: int
    bytes: int


def summarize(model: nn.Module) -> list[ModuleRow]:
    """One row per top-level child (parameters owned directly by the root make a row of their own);
    a parameter shared by two children counts once, for the first."""
    seen: set[int] = set()
    rows: list[ModuleRow] = []

    def row(name: str, kind: str, params) -> ModuleRow:
        trainable = frozen = size = shared = 0
        for p in params:
            if id(p) in seen:
                shared += 1
                continue
            seen.add(id(p))
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
            size += p.numel() * p.element_size()
        return ModuleRow(name, kind + (" (shares weights above)" if shared else ""), trainable, frozen, size)

    own = list(model.parameters(recurse=False))
    if own:
        rows.append(row("(own)", type(model).__name__, own))
    for name, child in model.named_children():
        rows.append(row(name, type(child).__name__, child.parameters()))
    return rows


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def format_summary(model: nn.Module) -> str:
    rows = summarize(model)
    header = ("module", "type", "trainable", "frozen", "size")
    lines = [(r.name, r.kind, _human(r.trainable), _human(r.frozen), human_size(r.bytes)) for r in rows]
    total = ModuleRow("total", "", sum(r.trainable for r in rows), sum(r.frozen for r in rows), sum(r.bytes for r in rows))
    lines.append((total.name, "", _human(total.trainable), _human(total.frozen), human_size(total.bytes)))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines[:-1]]
    out += [fmt.format(*("-" * w for w in widths)), fmt.format(*lines[-1])]
    return "\n".join(out)
