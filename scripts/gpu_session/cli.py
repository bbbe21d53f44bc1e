"""The command line: the arguments, the phase sequence, the outputs after every phase,
and the exit status (0 PASS or DRY-RUN OK, 1 FAIL, 2 usage error, 3 PARTIAL)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from . import REPO
from . import __doc__ as OVERVIEW
from .bench import bench_phase
from .budget import RESERVE_S, Budget, child_env
from .gpu_tests import tests_phase
from .install import install_phase
from .outputs import report_files, write_outputs
from .preflight import preflight_phase, probe_device
from .session import Session, prepare_stage
from .study import study_phase

DEFAULT_WORK = REPO / ".gpu_session"
"""Caches and the staging folder (git-ignored)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments; a usage error exits with status 2."""
    parser = argparse.ArgumentParser(
        prog="python scripts/gpu_session",
        description=(OVERVIEW or "").split("\n\n")[0],
        epilog="Exit status: 0 PASS (or DRY-RUN OK), 1 FAIL, 2 usage, 3 PARTIAL.",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="total wall-time seconds, every phase included (default 540)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or "gpu_out"),
        help="output folder (default $OUT, else gpu_out/)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help="caches and staging (default .gpu_session/, git-ignored)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=8,
        help="pytest-xdist workers for the gpu tests (default 8; 0: none)",
    )
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=120.0,
        help="pytest-timeout seconds per test (default 120; 0: none)",
    )
    parser.add_argument(
        "--tests-share",
        type=float,
        default=0.6,
        help="fraction of the time left after the preflight given to the "
        "tests; the benchmarks get the rest (default 0.6)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU work: stand-in tests, tiny CPU benchmarks (seconds)",
    )
    parser.add_argument(
        "--study",
        action="store_true",
        help="the accuracy study's [gpu] configurations instead of the "
        "validation (resumable; call again until complete)",
    )
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget < 4 * RESERVE_S:
        parser.error(f"--budget must be at least {4 * RESERVE_S:g} seconds")
    if args.workers < 0 or args.test_timeout < 0 or not 0 < args.tests_share < 1:
        parser.error("--workers and --test-timeout must be >= 0, 0 < --tests-share < 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the phases in order, writing the outputs after each (what a kill from outside
    would leave), then pack them for good; returns the verdict's exit status."""
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe_device()))
        return 0
    args.out, args.work = args.out.resolve(), args.work.resolve()
    session = Session(args, Budget(args.budget), prepare_stage(args))
    env = child_env(args.work)
    steps: list[Callable[[Session, dict[str, str]], None]] = [install_phase, preflight_phase]
    steps += [study_phase] if args.study else [tests_phase, bench_phase]
    for step in steps:
        step(session, env)
        print(
            f"[gpu_session] {session.phases[-1].name}: {session.phases[-1].status} "
            f"({session.budget.elapsed():.0f} s)",
            flush=True,
        )
        write_outputs(session, final=False)  # what a kill from outside would leave
    pack = session.phase("pack", RESERVE_S)
    start = time.monotonic()
    write_outputs(session, final=True)
    pack.used_s, pack.status = time.monotonic() - start, "ok"
    status = write_outputs(session, final=True)  # again, with the pack phase's time
    print((args.out / "summary.txt").read_text().splitlines()[0])
    report_files(args.out)
    return status
