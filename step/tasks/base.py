"""What a training task provides to ``step-sparsity train``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class MissingDataError(RuntimeError):
    """A task's data package is not installed; the message says how to install it."""


class Task(ABC):
    """A model, its data and its metric.

    Batches are a pure function of ``(seed, step)``, so a resumed run sees exactly the
    batches an uninterrupted one would, and every recipe of a comparison the same ones.
    """

    name: str
    metric: str  # the headline validation metric
    higher_is_better: bool
    items: str  # what a batch counts: "tokens", "images", "examples"
    default_steps: int
    default_batch_size: int
    default_lr: float
    dense_layers: tuple[str, ...] = ()
    """Module-name patterns ``step.sparsify`` leaves dense beyond its defaults (e.g. a
    stem convolution whose 1 input channel cannot hold N:M groups)."""

    def __init__(self, seed: int, batch_size: int, device: torch.device) -> None:
        self.seed, self.batch_size, self.device = seed, batch_size, device

    def generator(self, step: int) -> torch.Generator:
        """The random stream of batch ``step`` (independent of every other step)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model (initialised from the global RNG, which the caller seeds)."""

    @abstractmethod
    def train_batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """Batch number ``step`` (from 1), on ``self.device``."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch``."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation ``{"val_loss": ..., self.metric: ...}`` (model in eval mode)."""

    @abstractmethod
    def items_per_batch(self) -> int:
        """How many ``items`` one training batch holds (for the throughput)."""
