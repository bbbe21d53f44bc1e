"""The time budget of one call, and running one command within its share of it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import REPO

RESERVE_S = 15.0
"""Seconds kept for writing the outputs at the end."""


@dataclass
class Budget:
    """The total wall-time budget of one call, counted from its creation."""

    total_s: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds left of the budget (negative once past it)."""
        return self.total_s - self.elapsed()


@dataclass
class Phase:
    """One phase's budget, time used, status (``ok``, ``failed``, ``deadline``,
    ``skipped``, ``not run``) and a note."""

    name: str
    budget_s: float = 0.0
    used_s: float = 0.0
    status: str = "not run"
    note: str = ""


@dataclass
class Finished:
    """How a command ended: its exit status (negative: killed by that signal), its wall
    time, and whether it was stopped at its deadline."""

    returncode: int
    seconds: float
    deadline_hit: bool


def run_until(
    cmd: list[str], log: Path, seconds: float, env: dict[str, str], grace_s: float
) -> Finished:
    """Run ``cmd`` in the checkout in its own process group, stdout and stderr to ``log``.

    At ``seconds`` the group gets SIGINT (pytest and the runners stop cleanly and write
    what they have); if it is still running ``grace_s`` later, SIGKILL. Whatever the
    command leaves running in its group at the end is killed too.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_hear_sigint,
        )  # fmt: skip
        deadline_hit = False
        try:
            proc.wait(timeout=max(seconds, 0.0))
        except subprocess.TimeoutExpired:
            deadline_hit = True
            _signal_group(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of the group (pytest workers)
        if deadline_hit:
            out.write(f"\n[gpu_session] deadline: stopped after {seconds:.0f} s\n".encode())
    return Finished(proc.returncode, time.monotonic() - start, deadline_hit)


def _hear_sigint() -> None:
    """In the child before exec: SIGINT back to its default disposition. A shell without
    job control starts background commands with SIGINT ignored, and an ignored signal
    stays ignored across exec (Python then installs no KeyboardInterrupt handler), so the
    deadline's SIGINT would go unheard and pytest write no junit before the SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid`` (started by :func:`run_until`), if any
    of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def child_env(work: Path) -> dict[str, str]:
    """The environment of every command: compile caches under ``work/cache``, unbuffered
    Python output (logs complete up to a kill), and no ``TRITON_INTERPRET`` (Triton 3.6's
    interpreter breaks with numpy >= 2.4, and the GPU must run the compiled kernels)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cache = work / "cache"
    for var, sub in (
        ("TRITON_CACHE_DIR", "triton"),
        ("CUPY_CACHE_DIR", "cupy"),
        ("STEP_CACHE_DIR", "step"),
    ):
        env[var] = str(cache / sub)
        (cache / sub).mkdir(parents=True, exist_ok=True)
    env["PYTHONUNBUFFERED"] = "1"
    return env
