"""Memory statistics and the profiler callback, driven by a tiny fake trainer and model loop."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from trainforge.callbacks.monitors import ProfilerCallback, memory_stats
from trainforge.events import Callback


def test_memory_stats_reports_rss():
    stats = memory_stats()
    assert 1.0 < stats["memory/rss_mb"] < 1e6
    assert ("memory/cuda_peak_mb" in stats) == (torch.cuda.is_available() and torch.cuda.is_initialized())
    assert all(isinstance(v, float) for v in stats.values())


def fake_trainer(run_dir):
    return SimpleNamespace(cfg=SimpleNamespace(run_dir=str(run_dir)), state=SimpleNamespace(counters=SimpleNamespace(step=0)))


def train(callback: Callback, trainer, n_steps: int) -> None:
    """A tiny loop firing the events the profiler listens to, in the trainer's order."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    callback.on_train_start(trainer)
    try:
        for _ in range(n_steps):
            loss = model(torch.randn(4, 8)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            trainer.state.counters.step += 1
            callback.on_after_optimizer_step(trainer)
    finally:
        callback.on_train_end(trainer)


def load_trace(path):
    trace = json.loads(path.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    assert isinstance(events, list) and events
    return events


def test_profiler_writes_chrome_trace_after_scheduled_steps(tmp_path):
    cb = ProfilerCallback(steps=2, wait=1, warmup=1)
    trainer = fake_trainer(tmp_path)
    train(cb, trainer, n_steps=8)
    traces = list((tmp_path / "profiler").glob("*.json"))
    assert traces == [cb.trace_path]
    assert cb.trace_path.name == "trace_step4.json"  # written when the 1 + 1 + 2 scheduled steps were done
    names = {e.get("name", "") for e in load_trace(cb.trace_path)}
    assert any("Optimizer.step" in n or "aten::" in n for n in names)
    assert cb._prof is None  # stopped right after the trace: the rest of the run is not profiled


def test_profiler_short_run_stops_cleanly_with_partial_trace(tmp_path):
    cb = ProfilerCallback(steps=10, wait=0, warmup=1)
    train(cb, fake_trainer(tmp_path), n_steps=3)  # ends mid-recording
    assert cb.trace_path is not None and cb.trace_path.is_file()
    load_trace(cb.trace_path)


def test_profiler_run_ending_before_recording_writes_nothing(tmp_path):
    cb = ProfilerCallback(steps=2, wait=5, warmup=1)
    train(cb, fake_trainer(tmp_path), n_steps=2)
    assert cb.trace_path is None and cb._prof is None


def test_profiler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps >= 1"):
        ProfilerCallback(steps=0)
