"""The benchmarks phase: the runners of ``benchmarks/`` with ``--quick``, each within
its share of the time left, read back from their JSON lines and judged."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import REPO
from .budget import RESERVE_S, run_until
from .problems import Problem, cuda_error_lines, last_error_line

if TYPE_CHECKING:
    from .session import Session

BENCH_GRACE_S = 5.0
"""Seconds between SIGINT at a runner's deadline and SIGKILL."""


@dataclass(frozen=True)
class Bench:
    """A runner in ``benchmarks/``: its share of the bench phase, its arguments on the
    GPU, and on a dry run (None: GPU only, not run)."""

    name: str
    weight: float
    gpu_args: tuple[str, ...]
    dry_args: tuple[str, ...] | None

    @property
    def script(self) -> Path:
        """The runner's file."""
        return REPO / "benchmarks" / f"bench_{self.name}.py"


TINY_CPU = ("--device", "cpu", "--reps", "2", "--warmup", "0")
BENCHES = (
    Bench("nm_matmul", 3, ("--quick",), None),
    Bench("sparse24_gemm", 2, ("--quick",), None),
    Bench(
        "inference",
        2,
        ("--device", "cuda", "--quick"),
        (*TINY_CPU, "--shapes", "64x64", "--tokens", "1", "--dtypes", "float32", "--ratios", "2:4"),
    ),
    Bench(
        "optimizer",
        1,
        ("--device", "cuda", "--quick"),
        (*TINY_CPU, "--width", "64", "--blocks", "1"),
    ),
    Bench(
        "sparsify",
        1,
        ("--device", "cuda", "--quick"),
        (*TINY_CPU, "--shapes", "64x64", "--dtypes", "float16"),
    ),
)
"""In run order: what matters most first."""


@dataclass
class BenchReport:
    """One runner's outcome: status, time, cases done of planned, summary rows."""

    name: str
    status: str = "not run"
    note: str = ""
    budget_s: float = 0.0
    seconds: float = 0.0
    returncode: int | None = None
    planned: int | None = None
    done: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0
    cuda_errors: list[str] = field(default_factory=list)
    error_tail: str = ""


def read_jsonl(path: Path, report: BenchReport) -> None:
    """Fill ``report``'s planned count, cases done and rows from a runner's ``--jsonl``
    file; a line that is not JSON (cut by a kill) is counted in ``bad_lines``."""
    if not path.exists():
        return
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            report.bad_lines += 1
            continue
        if entry["type"] == "header":
            report.planned = entry["planned_cases"]
        elif entry["type"] == "case":
            report.done += 1
            report.rows += [{"benchmark": report.name, **row} for row in entry["rows"]]


def run_one_bench(
    bench: Bench, args: tuple[str, ...], stage: Path, env: dict[str, str], seconds: float
) -> BenchReport:
    """Run one runner with ``args`` within ``seconds`` and read back what it finished."""
    report = BenchReport(bench.name, budget_s=seconds)
    out = stage / "bench"
    jsonl = out / f"{bench.name}.jsonl"
    cmd = [sys.executable, str(bench.script), *args, "--out", str(out), "--jsonl", str(jsonl)]
    log = stage / "logs" / f"bench_{bench.name}.log"
    finished = run_until(cmd, log, seconds - BENCH_GRACE_S, env, grace_s=BENCH_GRACE_S)
    report.seconds, report.returncode = finished.seconds, finished.returncode
    read_jsonl(jsonl, report)
    text = log.read_text(errors="replace")
    report.cuda_errors = cuda_error_lines(log.name, text)
    if finished.deadline_hit:
        report.status = "deadline"
    elif finished.returncode == 0:
        report.status = "ok"
    else:
        report.status, report.error_tail = "failed", last_error_line(text)
    return report


def bench_problems(report: BenchReport) -> list[Problem]:
    """FAIL for a failed runner, a CUDA error, or one of ours wrong or raising; PARTIAL
    for a runner stopped at its deadline."""
    name = f"bench {report.name}"
    problems = [Problem("FAIL", f"{name}: {line}") for line in report.cuda_errors[:1]]
    if report.status == "failed":
        why = report.error_tail or "see its log"
        problems.append(Problem("FAIL", f"{name} exited with status {report.returncode}: {why}"))
    if report.status == "deadline":
        problems.append(
            Problem(
                "PARTIAL",
                f"{name} stopped at its deadline ({report.done} of {report.planned} cases)",
            )
        )
    for row in report.rows:
        if row["ours_note"].startswith(("wrong", "error")):
            problems.append(
                Problem("FAIL", f"{name} {row['case']} {row['ours']}: {row['ours_note'][:200]}")
            )
    return problems


def run_benches(
    stage: Path, env: dict[str, str], seconds: float, dry_run: bool
) -> list[BenchReport]:
    """Every runner in :data:`BENCHES` order (on a dry run, those with CPU arguments; the
    others are reported skipped); each gets its weight's share of the time left when it
    starts, so time a runner leaves unused goes to the ones after it."""
    end = time.monotonic() + seconds
    runs = [(b, b.dry_args if dry_run else b.gpu_args) for b in BENCHES]
    weights_left = sum(b.weight for b, args in runs if args is not None)
    reports = []
    for bench, args in runs:
        if args is None:
            reports.append(BenchReport(bench.name, status="skipped", note="dry run: GPU only"))
            continue
        seconds_now = (end - time.monotonic()) * bench.weight / weights_left
        weights_left -= bench.weight
        if seconds_now < 2 * BENCH_GRACE_S:
            reports.append(BenchReport(bench.name, status="skipped", note="no time left"))
            continue
        reports.append(run_one_bench(bench, args, stage, env, seconds_now))
    return reports


def bench_phase(session: Session, env: dict[str, str]) -> None:
    """The benchmark runners (:func:`run_benches`) in the time left but the reserve."""
    seconds = session.budget.left() - RESERVE_S
    phase = session.phase("bench", seconds)
    start = time.monotonic()
    session.bench = run_benches(session.stage, env, seconds, session.args.dry_run)
    phase.used_s = time.monotonic() - start
    problems = [p for report in session.bench for p in bench_problems(report)]
    session.problems += problems
    phase.status = (
        "failed" if any(p.level == "FAIL" for p in problems) else ("deadline" if problems else "ok")
    )
