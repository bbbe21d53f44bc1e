"""``step-sparsity train``: a task's model, sparsified, trained with a recipe, exported."""

from .config import ConfigError, TrainConfig
from .loop import train
from .result import RunResult

__all__ = ["ConfigError", "RunResult", "TrainConfig", "train"]
