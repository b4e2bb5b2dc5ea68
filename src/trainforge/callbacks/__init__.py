"""Built-in callbacks: progress bar, logging sinks, early stopping and gates, monitors, trackers."""

from .cadence import Cadence
from .control import EarlyStopping, Gate
from .logging import ConsoleSink, JsonlSink, RunLogger
from .progress import ProgressBar



def default_callbacks(cfg, callbacks: list) -> list:
    """The built-in callbacks a config asks for (cadence, progress bar, early stopping, gate,
    profiler), placed before the user's; one the user already passed is not added twice."""
    have = {type(cb) for cb in callbacks}
    defaults = [] if any(isinstance(cb, Cadence) for cb in callbacks) else [Cadence()]
    if cfg.log.progress and ProgressBar not in have:
        defaults.append(ProgressBar())
    if cfg.early_stopping is not None and EarlyStopping not in have:
        es = cfg.early_stopping
        defaults.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta))
    if cfg.gate and Gate not in have:
        defaults.append(Gate(cfg.gate))
    if cfg.log.profile_steps:
        from .monitors import ProfilerCallback
        defaults.append(ProfilerCallback(cfg.log.profile_steps))
    return defaults + list(callbacks)


__all__ = ["default_callbacks", "Cadence", "EarlyStopping", "Gate", "ConsoleSink", "JsonlSink", "RunLogger", "ProgressBar"]
