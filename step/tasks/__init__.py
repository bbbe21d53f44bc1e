"""Training tasks for ``step-sparsity train``: a model, data that installs offline, a metric."""

from __future__ import annotations

import importlib

import torch

from .base import MissingDataError, Task

TASKS = {
    "shakespeare": "step.tasks.shakespeare:Shakespeare",
    "fashion-mnist": "step.tasks.fashion_mnist:FashionMNIST",
    "minilm-sentiment": "step.tasks.minilm_sentiment:MiniLMSentiment",
}
"""Task name -> ``module:class`` (imported only when chosen)."""


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_task(name: str, seed: int, batch_size: int | None, device: torch.device) -> Task:
    """Build task ``name`` (its data loaded); ``MissingDataError`` says what to install."""
    cls = task_class(name)
    return cls(seed, batch_size or cls.default_batch_size, device)


__all__ = ["TASKS", "MissingDataError", "Task", "make_task", "task_class"]
