"""Resource monitors: memory statistics and a torch.profiler callback.

``memory_stats()`` is a pure function the metrics code calls at the log interval;
``ProfilerCallback`` is the adapter that wires torch.profiler to the loop's events
(enabled by ``log.profile_steps: N``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch

from ..events import Callback

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer

__all__ = ["memory_stats", "ProfilerCallback"]

_MB = 1024 * 1024
_PROCESS: psutil.Process | None = None  # created once: psutil.Process() costs a few syscalls


def memory_stats() -> dict[str, float]:
    """``{"memory/rss_mb": ...}`` plus ``memory/cuda_peak_mb`` when CUDA is in use.

    Cheap enough for every log step: RSS is one /proc read, and the CUDA figure is the
    allocator's own counter (no device sync). The peak is since the start of the process
    (or the last ``torch.cuda.reset_peak_memory_stats``)."""
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = psutil.Process()
    stats = {"memory/rss_mb": _PROCESS.memory_info().rss / _MB}
    # is_initialized, not is_available: asking is_available on a CPU-only run costs nothing,
    # but reading a counter must not create a CUDA context in a process that never used one.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        stats["memory/cuda_peak_mb"] = torch.cuda.max_memory_allocated() / _MB
    return stats


class ProfilerCallback(Callback):
    """Profile ``steps`` optimizer steps with torch.profiler and write a Chrome trace.

    The schedule skips ``wait`` steps (start-up noise), warms up for ``warmup`` steps
    (profiler overhead settles) and records ``steps`` steps once. The trace lands in
    ``run_dir/profiler/trace_step<N>[_rank<R>].json``; open it in chrome://tracing or
    https://ui.perfetto.dev. The profiler is stopped as soon as the trace is written, so the
    rest of the run pays nothing; a run shorter than the schedule writes what it recorded
    at ``on_train_end``.
    """

    def __init__(self, steps: int, wait: int = 1, warmup: int = 1, *, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False) -> None:
        if steps < 1 or wait < 0 or warmup < 0:
            raise ValueError(f"ProfilerCallback needs steps >= 1, wait >= 0, warmup >= 0 "
                             f"(got steps={steps}, wait={wait}, warmup={warmup})")
        self.steps, self.wait, self.warmup = steps, wait, warmup
        self._options = {"record_shapes": record_shapes, "profile_memory": profile_memory, "with_stack": with_stack}
        self._prof: torch.profiler.profile | None = None
        self._out_dir: Path | None = None
        self._step: int = 0
        self.trace_path: Path | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        self._out_dir = Path(trainer.cfg.run_dir) / "profiler"
        self._out_dir.mkdir(parents=True, exist_ok=True)
        self._step = int(trainer.state.counters.step)
        self.trace_path = None
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=self.wait, warmup=self.warmup, active=self.steps, repeat=1),
            on_trace_ready=self._write_trace,
            **self._options,
        )
        self._prof.start()

    def on_after_optimizer_step(self, trainer: "Trainer") -> None:
        if self._prof is None:
            return
        self._step = int(trainer.state.counters.step)
        self._prof.step()
        if self.trace_path is not None:  # schedule finished and the trace is on disk
            self._stop()

    def on_train_end(self, trainer: "Trainer") -> None:
        self._stop()

    def _stop(self) -> None:
        prof, self._prof = self._prof, None
        if prof is not None:
            prof.stop()  # mid-recording, this fires _write_trace with what was recorded

    def _write_trace(self, prof: torch.profiler.profile) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        name = f"trace_step{self._step}" + (f"_rank{rank}" if rank else "") + ".json"
        path = self._out_dir / name
        try:
            prof.export_chrome_trace(str(path))
        except Exception as exc:  # a failed trace must never end a training run
            warnings.warn(f"profiler trace could not be written to {path}: {exc}", stacklevel=2)
            return
        self.trace_path = path
