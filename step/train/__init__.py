"""``step-sparsity train``: a task's model, sparsified, trained with a recipe, exported."""

from .config import ConfigError, TrainConfig
from .loop import RunResult, train

__all__ = ["ConfigError", "RunResult", "TrainConfig", "train"]
