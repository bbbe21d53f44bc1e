"""What a training run gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    run_dir: Path
    recipe: str
    final: dict[str, float]  # validation metrics of the model as shipped (frozen)
    switch_step: int | None
    steps: int
    seconds: float
    exports: dict[str, Any] = field(default_factory=dict)
