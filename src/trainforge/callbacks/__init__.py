"""Built-in callbacks: progress bar, logging sinks, early stopping and gates, monitors, trackers."""

from .control import EarlyStopping, Gate
from .logging import ConsoleSink, JsonlSink, RunLogger
from .progress import ProgressBar

__all__ = ["EarlyStopping", "Gate", "ConsoleSink", "JsonlSink", "RunLogger", "ProgressBar"]
