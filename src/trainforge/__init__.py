"""trainforge: a PyTorch training engine — light as a hand-written loop, impossible to lose a step with."""

from .config import ConfigError, TrainConfig
from .events import Callback, Event, SkipBatch, StopTraining
from .gradients import NonFiniteError
from .state import IllegalTransition, Phase, TrainState
from .tasks import Classification, LanguageModel, Regression, Task
from .results import FitResult, Preempted
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = ["Trainer", "TrainConfig", "ConfigError", "Callback", "Event", "SkipBatch", "StopTraining", "NonFiniteError",
           "IllegalTransition", "Phase", "TrainState", "Task", "Classification", "LanguageModel", "Regression",
           "FitResult", "Preempted", "__version__"]
