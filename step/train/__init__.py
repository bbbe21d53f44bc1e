"""``step-sparsity train``: a task's model, sparsified, trained with a recipe, exported;
:func:`load_run` loads what a run shipped."""

from .config import ConfigError, TrainConfig
from .loop import train
from .result import RunResult
from .runs import load_run

__all__ = ["ConfigError", "RunResult", "TrainConfig", "load_run", "train"]
