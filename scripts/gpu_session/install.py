"""The install phase: this checkout, installed editable, without its dependencies.

The GPU machines have no package registry, and their image already holds what the gpu
tests import beyond the package's own dependencies (hypothesis, sortedcontainers,
pytest-benchmark, pytest-xdist, pytest-timeout). Should one be missing, the test modules
importing it fail to collect, and the tests phase reports each as a FAIL with its error.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .budget import RESERVE_S, run_until
from .problems import Problem

if TYPE_CHECKING:
    from .session import Session

INSTALL_MAX_S = 60.0


def install_command() -> list[str]:
    """``pip install --no-deps -q --no-build-isolation -e .`` with this Python."""
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "-q"]
    return [*pip, "--no-build-isolation", "-e", "."]


def install_phase(session: Session, env: dict[str, str]) -> None:
    """:func:`install_command` within at most :data:`INSTALL_MAX_S` (not on a dry run);
    FAIL if it fails or runs out of time."""
    phase = session.phase("install", min(INSTALL_MAX_S, session.budget.left() - RESERVE_S))
    if session.args.dry_run:
        phase.status, phase.note = "skipped", "dry run: pip install not run"
        return
    cmd = install_command()
    finished = run_until(cmd, session.stage / "logs" / "install.log", phase.budget_s, env, 2.0)
    phase.used_s = finished.seconds
    if finished.returncode != 0 or finished.deadline_hit:
        phase.status = "failed"
        session.problems.append(
            Problem(
                "FAIL",
                f"pip install {' '.join(cmd[6:])} failed (exit status "
                f"{finished.returncode}): see logs/install.log",
            )
        )
    else:
        phase.status = "ok"
