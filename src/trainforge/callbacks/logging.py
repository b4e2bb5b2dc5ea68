"""The run's log: one record per log step, validation and epoch, fanned out to sinks.

A record is ``{"kind": "train"|"val"|"epoch", "step", "epoch", "time", <metric>: value, ...}``;
its ``epoch`` counts from 1 (the epoch the record belongs to, as the console shows it).
A sink is any object with ``open(run_dir, config)``, ``write(record)`` and ``close()``.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..metrics import json_safe

LEVEL_KEYS = {
    # what a train record carries at each level (validation and epoch records are always whole)
    "minimal": ("train/loss", "lr"),
    "standard": ("train/loss", "lr", "grad/norm", "throughput/", "time/step", "weight_version", "memory/", "cache/", "data/"),
    "verbose": None,  # everything
}


_ALWAYS = frozenset({"kind", "step", "epoch", "time"})
_KEPT: dict[tuple[str, str], bool] = {}  # (level, key) -> kept; records repeat the same few keys


def _kept(level: str, key: str) -> bool:
    hit = _KEPT.get((level, key))
    if hit is None:
        keys = LEVEL_KEYS[level] or ()
        hit = key in _ALWAYS or any(key == p or (p.endswith("/") and key.startswith(p)) for p in keys)
        _KEPT[(level, key)] = hit
    return hit


def filter_for_level(record: dict[str, Any], level: str) -> dict[str, Any]:
    if LEVEL_KEYS[level] is None or record.get("kind") != "train":
        return record
    return {k: v for k, v in record.items() if _kept(level, k)}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


class JsonlSink:
    """``metrics.jsonl``: appended (a resumed run continues the file). Flushed at every validation
    and epoch record and at least once a second, so a killed run loses at most a second of steps
    (which its checkpoint's history holds anyway) without a write syscall per log step."""

    FLUSH_SECS = 1.0

    def open(self, run_dir: Path, config: dict) -> None:
        self._fh = open(Path(run_dir) / "metrics.jsonl", "a", encoding="utf-8")
        self._flushed = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(json_safe(record)) + "\n")
        now = time.monotonic()
        if record.get("kind") != "train" or now - self._flushed >= self.FLUSH_SECS:
            self._fh.flush()
            self._flushed = now

    def close(self) -> None:
        if getattr(self, "_fh", None):
            self._fh.flush()
            try:
                os.fsync(self._fh.fileno())  # durable like the checkpoints it goes with
            except OSError:
                pass
            self._fh.close()
            self._fh = None


class ConsoleSink:
    """Epoch summaries and validation results always; a line per log step at level verbose
    (or when there is no progress bar). Writes through tqdm so bars are not broken."""

    def __init__(self, level: str = "standard", max_epochs: int | None = None, progress: bool = True):
        self.level = level
        self.max_epochs = max_epochs
        self.progress = progress
        self._epoch_val: dict[str, Any] = {}

    def open(self, run_dir: Path, config: dict) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "train" and (self.level == "verbose" or (not self.progress and self.level != "minimal")):
            self._print(f"step {record['step']}", record)
        elif kind == "val" and record.get("mid_epoch"):
            self._print(f"step {record['step']} validation", record)
        elif kind == "val":
            self._epoch_val = record  # shown on the epoch's summary line
        elif kind == "epoch":
            total = f"/{self.max_epochs}" if self.max_epochs else ""
            head = f"epoch {record['epoch']}{total} · step {record['step']}"
            if "train/epoch_loss" in record:
                head += f" · loss {fmt(record['train/epoch_loss'])}"
            rest = {k: v for k, v in self._epoch_val.items() if "/" in k}
            self._epoch_val = {}
            seconds = record.get("time/epoch", 0.0)
            self._print(head, rest, tail=f"{seconds:.1f}s" if seconds >= 10 else f"{seconds:.2f}s")

    def _print(self, head: str, record: dict[str, Any], tail: str = "") -> None:
        skip = {"kind", "step", "epoch", "time", "mid_epoch"}
        parts = [head] + [f"{k} {fmt(v)}" for k, v in record.items() if k not in skip and v is not None]
        tqdm.write(" · ".join(parts + ([tail] if tail else [])), file=sys.stderr)

    def close(self) -> None:
        pass


class RunLogger:
    """Fans records out to the sinks; only the main process logs."""

    def __init__(self, sinks: list[Any], level: str = "standard"):
        self.sinks = sinks
        self.level = level

    def open(self, run_dir: Path, config: dict) -> None:
        for sink in self.sinks:
            sink.open(run_dir, config)

    def write(self, record: dict[str, Any], plugin_values: dict[str, Any] | None = None) -> None:
        record = filter_for_level(record, self.level)
        if plugin_values:  # a callback's log_values were asked for: kept at every level
            record = {**record, **plugin_values}
        for sink in self.sinks:
            sink.write(record)

    def close(self, failed: bool = False) -> None:
        for sink in self.sinks:
            if failed and "status" in inspect.signature(sink.close).parameters:
                sink.close(status="FAILED")  # trackers that know run status show the run as failed
            else:
                sink.close()


def build_sinks(cfg: Any, extra: list[Any] | None = None) -> list[Any]:
    """Sinks named in ``cfg.log.sinks``; the optional trackers are imported only when asked for. None
    on a rank other than 0 under torchrun: only rank 0 logs."""
    from ..distributed.context import is_main
    if not is_main():
        return []
    sinks: list[Any] = []
    for name in cfg.log.sinks:
        if name == "console":
            sinks.append(ConsoleSink(cfg.log.level, cfg.max_epochs, cfg.log.progress))
        elif name == "jsonl":
            sinks.append(JsonlSink())
        else:
            from .trackers import make_sink
            kwargs = {}
            if name == "mlflow":
                kwargs = {"tracking_uri": cfg.log.mlflow_tracking_uri, "experiment": cfg.log.mlflow_experiment}
            elif name == "wandb":
                kwargs = {"project": cfg.log.wandb_project, "mode": cfg.log.wandb_mode}
            sinks.append(make_sink(name, **kwargs))
    if "jsonl" not in cfg.log.sinks:
        sinks.append(JsonlSink())  # metrics.jsonl is part of the run directory contract
    return sinks + list(extra or [])
