"""Retention: which checkpoints to keep (the last N, the best N by a metric, the pinned ones),
and the pins file that records names pinned after their save."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes
from .layout import PINS_FILE, VERSION, CheckpointError, CheckpointInfo, json_bytes


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): a value a checkpoint can be ranked by."""
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
        scored = [i for i in infos if is_number(i.metrics.get(monitor))]
        scored.sort(key=lambda i: (sign * i.metrics[monitor], -i.step, -i.created))
        keep |= {i.name for i in scored[:keep_best]}
    return keep


def read_pins(directory: Path) -> set[str]:
    """The names recorded in ``<directory>/pins.json`` (none when it does not exist)."""
    path = directory / PINS_FILE
    if not path.exists():
        return set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return set(data["pinned"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint pins {path} are unreadable ({e}); fix or delete the file",
                              path=path) from None


def write_pins(directory: Path, pins: set[str]) -> None:
    """Replace ``pins.json`` atomically with ``pins`` (sorted)."""
    atomic_write_bytes(directory / PINS_FILE, json_bytes({"version": VERSION, "pinned": sorted(pins)}))
