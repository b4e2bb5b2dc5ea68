"""The table ``trainforge checkpoints RUN_DIR`` prints."""

from __future__ import annotations

from ..fileio import human_size
from .layout import CheckpointInfo


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
        human_size(i.size_bytes),
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
