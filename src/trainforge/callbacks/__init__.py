"""Built-in callbacks: progress bar, logging sinks, early stopping and gates, monitors, trackers."""

from .cadence import Cadence
from .control import EarlyStopping, Gate
from .logging import ConsoleSink, JsonlSink, RunLogger
from .milestones import Milestones
from .progress import ProgressBar


def default_callbacks(cfg, callbacks: list) -> list:
    """The built-in callbacks a config asks for (cadence, progress bar, early stopping, gate, Grokfast
    filter, milestones, profiler), placed before the user's; one the user already passed is not added twice."""
    have = {type(cb) for cb in callbacks}
    defaults = [] if any(isinstance(cb, Cadence) for cb in callbacks) else [Cadence()]
    if cfg.log.progress and ProgressBar not in have:
        defaults.append(ProgressBar())
    if cfg.early_stopping is not None and EarlyStopping not in have:
        es = cfg.early_stopping
        defaults.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta))
    if cfg.gate and Gate not in have:
        defaults.append(Gate(cfg.gate))
    grokfast = getattr(cfg, "grokfast", None)
    if grokfast is not None:
        from ..optim.grokfast import Grokfast
        if Grokfast not in have:
            lamb = grokfast.lamb.model_dump() if hasattr(grokfast.lamb, "model_dump") else grokfast.lamb
            defaults.append(Grokfast(grokfast.filter, alpha=grokfast.alpha, window=grokfast.window, lamb=lamb))
    if getattr(cfg, "milestones", None) and Milestones not in have:
        defaults.append(Milestones(cfg.milestones, cfg.stop_on_milestone))
    if cfg.log.profile_steps:
        from .monitors import ProfilerCallback
        defaults.append(ProfilerCallback(cfg.log.profile_steps))
    return defaults + list(callbacks)


__all__ = ["default_callbacks", "Cadence", "EarlyStopping", "Gate", "Milestones", "ConsoleSink", "JsonlSink",
           "RunLogger", "ProgressBar"]
