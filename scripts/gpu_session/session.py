"""What one call did (:class:`Session`): its arguments, budget, staging folder, phases,
problems and each phase's report."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .budget import Budget, Phase
from .outputs import OUT_NAMES
from .problems import Problem

if TYPE_CHECKING:
    from .bench import BenchReport
    from .junit import GpuTestReport


@dataclass
class Session:
    """Everything one call did, for the summary and ``results.json``."""

    args: argparse.Namespace
    budget: Budget
    stage: Path
    phases: list[Phase] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    preflight: dict[str, Any] = field(default_factory=dict)
    tests: GpuTestReport | None = None
    bench: list[BenchReport] = field(default_factory=list)

    def phase(self, name: str, budget_s: float) -> Phase:
        """A new phase, recorded in order."""
        new = Phase(name, budget_s=budget_s)
        self.phases.append(new)
        return new


def prepare_stage(args: argparse.Namespace) -> Path:
    """An empty staging folder ``work/run``, and no earlier outputs of ours in ``$OUT``."""
    stage = args.work / "run"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "logs").mkdir(parents=True)
    for name in OUT_NAMES:
        (args.out / name).unlink(missing_ok=True)
    return stage
