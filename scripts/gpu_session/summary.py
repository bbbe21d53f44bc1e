"""The text of ``summary.txt``: the verdict on line 1 (with the exit status it means),
then the problems, the preflight, the tests, the benchmarks, the phases and the files."""

from __future__ import annotations

import platform
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any

from . import REPO

if TYPE_CHECKING:
    from .bench import BenchReport
    from .junit import GpuTestReport
    from .session import Session


def verdict(session: Session, final: bool) -> tuple[str, int]:
    """Line 1 of the summary and the exit status."""
    fails = [p.text for p in session.problems if p.level == "FAIL"]
    partial = [p.text for p in session.problems if p.level == "PARTIAL"]
    if fails:
        shown = "; ".join(text[:160] for text in fails[:3])
        return "FAIL: " + shown + (" ..." if len(fails) > 3 else ""), 1
    if not final:
        done = ", ".join(p.name for p in session.phases)
        return (f"INCOMPLETE: the script stopped before its end (phases begun: {done})", 1)
    if partial:
        return "PARTIAL: " + "; ".join(text[:160] for text in partial[:3]), 3
    if session.args.dry_run:
        return "DRY-RUN OK: the pipeline works on this machine; nothing ran on a GPU", 0
    tests = session.tests
    rows = sum(len(r.rows) for r in session.bench)
    counts = f"{tests.passed} passed, {tests.skipped} skipped" if tests else "no tests"
    return f"PASS: gpu tests {counts}; {rows} benchmark comparisons", 0


def table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Plain-text columns, left-aligned, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def fmt_ms(value: float | None) -> str:
    """Milliseconds to 4 significant digits, ``-`` for none."""
    return "-" if value is None else f"{value:.4g}"


def preflight_lines(data: dict[str, Any]) -> list[str]:
    """The preflight section."""
    versions = data["versions"]
    pkgs = ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)
    missing = ", ".join(k for k, v in versions.items() if v is None)
    lines = [
        "Preflight",
        f"  python {data['python']}, {data['platform']}",
        f"  {pkgs}",
        f"  not installed: {missing or 'none'}",
    ]
    probe = data.get("probe")
    if probe:
        for dev in probe["devices"] or [{"name": "no CUDA GPU visible"}]:
            extra = (
                f", compute capability {dev['capability']}, {dev['sm_count']} SMs, "
                f"{dev['memory_gib']} GiB"
                if "capability" in dev
                else ""
            )
            lines.append(f"  device: {dev['name']}{extra}")
        info = probe["info"]
        lines.append(
            f"  torch CUDA {info.get('torch_cuda')}, cupy {info.get('cupy')}, "
            f"step imported from {probe['step_file']}"
        )
        for dev, statuses in info["backends"].items():
            parts = [
                f"{name} {'yes' if s['available'] else 'NO (' + s['reason'] + ')'}"
                for name, s in statuses.items()
            ]
            lines.append(f"  backends on {dev}: " + "; ".join(parts))
    lines += [
        f"  nvidia-smi: {data['nvidia_smi']}",
        f"  nvcc: {data['nvcc']}",
        f"  ptxas: {data['ptxas']}; Triton's ptxas: {data['triton_ptxas']}",
        "  TRITON_INTERPRET in the caller's environment: "
        f"{data['triton_interpret_in_caller_env'] or 'unset'} (removed for every command)",
    ]
    return lines


def tests_lines(report: GpuTestReport | None) -> list[str]:
    """The tests section."""
    if report is None:
        return ["GPU tests: not run"]
    planned = f"{report.planned} planned: " if report.planned is not None else ""
    lines = [
        f"GPU tests: {report.command}",
        f"  {planned}{report.passed} passed, {report.failed} failed, {report.errors} "
        f"errors, {report.skipped} skipped; pytest exit {report.returncode}"
        f"{' (stopped at the deadline)' if report.deadline_hit else ''}; "
        f"junit {report.junit}",
    ]
    if report.failures:
        lines.append("  failed or erred:")
        lines += [f"    {tid}: {msg}" for tid, msg in report.failures[:50]]
        if len(report.failures) > 50:
            lines.append(f"    ... {len(report.failures) - 50} more in gpu-tests.xml")
    if report.uncollected:
        lines.append("  test modules not collected (their tests did not run):")
        lines += [f"    {module}: {why}" for module, why in report.uncollected]
    if report.skip_reasons:
        lines.append("  skip reasons:")
        ranked = sorted(report.skip_reasons.items(), key=lambda kv: -kv[1])
        lines += [f"    {n} x {reason}" for reason, n in ranked[:15]]
    lines += [f"  {line}" for line in report.cuda_errors]
    if report.slowest:
        lines += ["  slowest:", *[f"    {line}" for line in report.slowest]]
    return lines


def bench_lines(reports: list[BenchReport]) -> list[str]:
    """The benchmarks section: each runner's status, then every comparison row."""
    if not reports:
        return ["Benchmarks: not run"]
    lines = ["Benchmarks (ratio = baseline ms / ours ms; > 1: ours took less time)"]
    status = [["runner", "status", "cases", "seconds", "budget", "note"]]
    for r in reports:
        cases = f"{r.done}/{r.planned}" if r.planned is not None else "-"
        note = r.note or r.error_tail or (f"{r.bad_lines} cut line(s)" if r.bad_lines else "")
        status.append([r.name, r.status, cases, f"{r.seconds:.0f}", f"{r.budget_s:.0f}", note])
    lines += table(status)
    rows = [["benchmark", "case", "ours", "ours ms", "baseline", "base ms", "ratio", "note"]]
    for r in reports:
        for row in r.rows:
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3g}"
            note = "; ".join(n for n in (row["ours_note"], row["baseline_note"]) if n)[:80]
            rows.append(
                [
                    row["benchmark"],
                    row["case"],
                    row["ours"],
                    fmt_ms(row["ours_ms"]),
                    row["baseline"],
                    fmt_ms(row["baseline_ms"]),
                    ratio,
                    note,
                ]
            )
    if len(rows) > 1:
        lines += ["", *table(rows)]
    return lines


def phase_lines(session: Session) -> list[str]:
    """The phases section: each phase's time, budget, status and note, and the total."""
    rows = [["phase", "used s", "budget s", "status", "note"]]
    rows += [
        [p.name, f"{p.used_s:.1f}", f"{p.budget_s:.0f}", p.status, p.note] for p in session.phases
    ]
    total = f"total {session.budget.elapsed():.0f} s of the {session.budget.total_s:.0f} s budget"
    return ["Phases", *table(rows), f"  {total}"]


def summary_text(session: Session, first_line: str, files: list[str]) -> str:
    """The whole summary: verdict, header, problems, preflight, tests, benchmarks,
    phases, files."""
    args = session.args
    mode = "study" if args.study else "validation"
    head = [
        first_line,
        f"scripts/gpu_session ({mode}{', dry run' if args.dry_run else ''}) on "
        f"{platform.node()} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, commit "
        f"{git_commit()}",
    ]
    problems = ["Problems", *[f"  {p.level:8} {p.text}" for p in session.problems]]
    sections = [head, problems if session.problems else ["Problems: none"]]
    if session.preflight:
        sections.append(preflight_lines(session.preflight))
    if not args.study:
        sections += [tests_lines(session.tests), bench_lines(session.bench)]
    sections += [phase_lines(session), ["Files in $OUT", *[f"  {f}" for f in files]]]
    return "\n\n".join("\n".join(s) for s in sections) + "\n"


def git_commit() -> str:
    """HEAD's commit, with `` (modified)`` if tracked files differ; ``unknown`` without git
    or outside a git checkout (a copy of the work tree without ``.git``)."""
    if shutil.which("git") is None:
        return "unknown (no git)"
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
