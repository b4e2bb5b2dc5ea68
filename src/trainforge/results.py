"""What a run comes to: ``FitResult`` (returned by ``fit``) and ``result.json`` (written by every run)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text
from .metrics import json_safe


class Preempted(SystemExit):
    """Raised by ``fit`` after a SIGTERM/SIGINT checkpoint: exit code 75, resume continues the run."""

    def __init__(self, message: str, code: int = 75):
        super().__init__(code)  # 1 when no checkpoint could be written (checkpointing disabled)
        self.message = message
        self.printed = False  # fit prints it on stderr before raising



@dataclass
class FitResult:
    run_dir: Path
    stopped_reason: str
    history: dict[str, list[float]]
    curves: dict[str, dict[str, list]]
    summary: dict[str, Any]
    final_checkpoint: str | None = None
    gate_passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)




def fit_result(state: Any, data_stats: dict[str, float], *, run_dir: Path, final_checkpoint: str | None,
               extra: dict[str, Any]) -> FitResult:
    curves = state.history
    return FitResult(run_dir=run_dir, stopped_reason=state.stopped_reason or "",
                     history={k: list(v["value"]) for k, v in curves.items()}, curves=curves,
                     summary=run_summary(state, data_stats), final_checkpoint=final_checkpoint,
                     gate_passed=extra.get("gate_passed"), extra=dict(extra))


def write_result(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(json_safe(result), indent=1))


def result_record(state: Any, data_stats: dict[str, float], *, final_checkpoint: str | None, phase: str,
                  extra: dict[str, Any], config: dict[str, Any], error: BaseException | None = None) -> dict[str, Any]:
    """What result.json holds."""
    result = {"summary": run_summary(state, data_stats), "stopped_reason": state.stopped_reason,
              "final_checkpoint": final_checkpoint, "gate_passed": None, "phase": phase,
              **extra, "curves": state.history, "config": config}
    if error is not None:
        result["error"] = f"{type(error).__name__}: {error}"
    return result


def run_summary(state: Any, data_stats: dict[str, float]) -> dict[str, Any]:
    """The ``summary`` block of result.json from a TrainState."""
    c = state.counters
    return {"steps": c.step, "epochs_completed": c.epoch, "samples_seen": c.samples_seen,
            "tokens_seen": c.tokens_seen, "weight_version": c.weight_version, "skipped_steps": c.skipped_steps,
            "skipped_batches": c.skipped_batches, "rollbacks": c.rollbacks, "best": dict(state.best),
            "data": data_stats, "final": {k: v for k, v in state.metrics.items() if "/" in k or k == "lr"}}
