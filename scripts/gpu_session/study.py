"""The study mode's one phase: the accuracy study's ``[gpu]`` configurations, instead of
the validation (see ``experiments/accuracy/``)."""

from __future__ import annotations

import shutil
import sys
from typing import TYPE_CHECKING

from . import REPO
from .budget import RESERVE_S, run_until
from .problems import Problem

if TYPE_CHECKING:
    from .session import Session

STUDY_GRACE_S = 30.0
"""Seconds between SIGINT at the study's deadline and SIGKILL."""
STUDY_RESULTS = REPO / "experiments" / "accuracy" / "results" / "gpu"
"""Where the study keeps its GPU results (archived under this path in the checkout)."""


def study_phase(session: Session, env: dict[str, str]) -> None:
    """The accuracy study's ``[gpu]`` configurations in the time left but the reserve (it
    resumes where a previous call stopped); its results stay in
    ``experiments/accuracy/results/gpu`` and are archived under that path."""
    phase = session.phase("study", session.budget.left() - RESERVE_S)
    if session.args.dry_run:
        phase.status, phase.note = "skipped", "dry run: the study is not run"
        return
    runs = session.stage / "runs"
    cmd = [
        sys.executable,
        "experiments/accuracy/study.py",
        "--scale",
        "gpu",
        "--jobs",
        "4",
        "--results",
        "experiments/accuracy/results",
        "--work",
        str(runs),
    ]
    log = session.stage / "logs" / "study.log"
    finished = run_until(cmd, log, phase.budget_s - STUDY_GRACE_S, env, STUDY_GRACE_S)
    shutil.rmtree(runs, ignore_errors=True)  # run folders: large, and not results
    phase.used_s = finished.seconds
    if finished.deadline_hit:
        phase.status, phase.note = "deadline", "call again: the study resumes"
        session.problems.append(Problem("PARTIAL", "study: stopped at its deadline"))
    elif finished.returncode != 0:
        phase.status, phase.note = "failed", f"exit status {finished.returncode}"
        session.problems.append(Problem("FAIL", f"study: {phase.note}, see logs/study.log"))
    else:
        phase.status = "ok"
