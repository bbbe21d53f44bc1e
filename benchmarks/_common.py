"""What the standalone benchmark runners (``bench_sparsify.py``, ``bench_optimizer.py``) share.

* the command line: ``--device`` (refused without a GPU), ``--out``, ``--reps``,
  ``--warmup``, ``--threads``, and the checks of comma-separated choices
* timing: :func:`time_interleaved` (round-robin; CUDA events with an L2 flush on cuda,
  ``time.perf_counter`` on cpu) and :func:`timing_stats` (median, min, max, GB/s)
* the backends: why one cannot be timed, which one ``auto`` resolves to
* the results: the run header (device, versions, date, git commit, timer), the first
  lines of the Markdown report, and writing ``<name>-<device>-<date>.json`` and ``.md``
* ``--quick`` timing (:data:`QUICK_TIMING`) and ``--jsonl``: :class:`CaseLog` appends each
  case as one JSON line the moment it is measured, with summary rows
  (:func:`compare`, :func:`summary_row`: ours against its baseline), so a run killed at a
  deadline (``scripts/gpu_session``) keeps every case it finished

Not a module of the ``step`` package: the runners import it as a sibling file (they run as
scripts from this folder, and pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import re
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import torch

import step
from step.bench.timing import (  # noqa: F401  (the runners call common.time_interleaved)
    L2_FLUSH_BYTES,
    l2_flush_buffer,
    time_interleaved,
)
from step.environment import cpu_name, dist_version
from step.ops.dispatch import BACKENDS, backend_status, choose, implementations, use_backend

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TIMING_DEFAULTS = {"cuda": {"reps": 100, "warmup": 10}, "cpu": {"reps": 20, "warmup": 3}}
"""Default ``--reps`` and ``--warmup`` per device type."""
QUICK_TIMING = {"reps": 20, "warmup": 3}
"""Default ``--reps`` and ``--warmup`` of a runner's ``--quick`` mode, on any device."""


# ---------------------------------------------------------------- command line


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--device {cuda,cpu}`` (default: resolved by :func:`resolve_device`)."""
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="default: cuda if a GPU is visible, else cpu",
    )


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--out``, ``--jsonl``, ``--reps``, ``--warmup`` and ``--threads``; ``--reps``
    and ``--warmup`` default to None, filled per device by :func:`fill_timing_defaults`."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--jsonl",
        type=Path,
        default=None,
        help="also append the header, then each case as soon as it is measured, to this "
        "JSON-lines file (a run stopped midway keeps the cases it finished)",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="timed reps (default cuda 100, cpu 20)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up calls (default cuda 10, cpu 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU only: torch.set_num_threads (default 1, for repeatable numbers; "
        "0 keeps PyTorch's default)",
    )


def resolve_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set ``args.device`` to ``cuda`` if a GPU is visible, else ``cpu``, where it was not
    given; exit with a usage error (status 2) if ``cuda`` is asked for without a GPU."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}, CUDA build: {torch.version.cuda}). "
            "Run on a GPU machine, or use --device cpu."
        )


def fill_timing_defaults(args: argparse.Namespace) -> None:
    """Fill ``args.reps`` and ``args.warmup`` left at None from :data:`QUICK_TIMING` if
    the runner has ``--quick`` and it is set, else from :data:`TIMING_DEFAULTS` for
    ``args.device``."""
    defaults = QUICK_TIMING if getattr(args, "quick", False) else TIMING_DEFAULTS[args.device]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error unless ``--reps >= 1``, ``--warmup >= 0``, ``--threads >= 0``."""
    if args.reps < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--reps must be >= 1, --warmup >= 0 and --threads >= 0")


def apply_threads(args: argparse.Namespace) -> None:
    """On cpu, ``torch.set_num_threads(args.threads)`` unless it is 0 (PyTorch's default)."""
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)


def parse_choices(
    parser: argparse.ArgumentParser, option: str, text: str, choices: tuple[str, ...]
) -> list[str]:
    """``text`` split at commas and stripped; exit with a usage error naming ``option``
    if an item is not one of ``choices``."""
    items = [item.strip() for item in text.split(",")]
    for name in items:
        if name not in choices:
            parser.error(f"{option}: {name!r} is not one of {', '.join(choices)}")
    return items


def parse_backends(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``--backends``: comma-separated from ``auto`` and the dispatcher's backends."""
    return parse_choices(parser, "--backends", text, ("auto", *BACKENDS))


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"4096x11008,8192x8192"`` -> ``[(4096, 11008), (8192, 8192)]`` (rows x K, each >= 1)."""
    shapes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", item)
        if not match or min(int(match.group(1)), int(match.group(2))) < 1:
            raise argparse.ArgumentTypeError(f"shape {item!r}: expected NxK, e.g. 4096x11008")
        shapes.append((int(match.group(1)), int(match.group(2))))
    return shapes


def parse_tokens(text: str) -> list[int]:
    """``"1,16,4096"`` -> ``[1, 16, 4096]`` (each >= 1)."""
    try:
        tokens = [int(t) for t in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--tokens {text!r}: expected integers") from err
    if min(tokens) < 1:
        raise argparse.ArgumentTypeError("--tokens: every count must be >= 1")
    return tokens


# ---------------------------------------------------------------- timing


def timing_stats(times: list[float], nbytes: int) -> dict[str, float | int]:
    """``median_ms``, ``min_ms``, ``max_ms``, ``reps`` of ``times`` (ms) and ``gbps``:
    ``nbytes`` over the median time, in 1e9 B/s."""
    median = statistics.median(times)
    return {
        "median_ms": median,
        "min_ms": min(times),
        "max_ms": max(times),
        "reps": len(times),
        "gbps": nbytes / (median * 1e-3) / 1e9,
    }


# ---------------------------------------------------------------- backends


def backend_context(backend: str) -> contextlib.AbstractContextManager[None]:
    """``use_backend`` forcing ``backend``; ``auto`` (the automatic choice, whatever
    ``STEP_BACKEND`` says) and ``torch`` (a plain-PyTorch baseline) force none."""
    return use_backend(None if backend in ("auto", "torch") else backend)


def backend_skip_reason(backend: str, op: str, device: torch.device) -> str | None:
    """Why dispatcher op ``step::<op>`` cannot (or should not) be timed with ``backend``
    on ``device``; None if it can (``auto`` always can)."""
    if backend == "auto":
        return None
    if backend not in implementations(op):
        return f"no {backend} implementation of step::{op}"
    if backend == "triton" and device.type == "cpu":
        return "Triton on CPU is the interpreter, a functional emulator: not timed"
    status = backend_status(backend, device)
    return None if status.available else status.reason


def resolve_backend(backend: str, op: str, device: torch.device, *inputs: Any) -> str:
    """The backend that runs ``step::<op>`` on ``inputs`` when ``backend`` is requested
    (for ``auto``, the dispatcher's choice ignoring ``STEP_BACKEND``)."""
    if backend != "auto":
        return backend
    with use_backend(None):
        return choose(op, device, *inputs)[0]


# ---------------------------------------------------------------- environment


def git_state() -> dict[str, object]:
    """The repository's HEAD commit and whether the work tree has changes (None if unknown:
    no git, or a copy of the work tree without ``.git``)."""
    if shutil.which("git") is None:
        return {"commit": None, "dirty": None}
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def local_now() -> datetime.datetime:
    """The current time in the local time zone, with its UTC offset."""
    return datetime.datetime.now(datetime.timezone.utc).astimezone()


# ---------------------------------------------------------------- results


def header(
    benchmark: str,
    device: torch.device,
    args: argparse.Namespace,
    now: datetime.datetime,
    *,
    turns: str,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run metadata: benchmark name, device, versions, date, git commit, reps, then
    ``fields`` (the benchmark's own), then the device's details and the timer, whose
    text says that ``turns`` (``ops``, ``cases``) run round-robin."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        extra = {
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda_runtime": torch.version.cuda,
            "timer": f"CUDA events, L2 flushed before each call, {turns} round-robin",
            "l2_flush_bytes": L2_FLUSH_BYTES,
        }
    else:
        name = cpu_name()
        extra = {
            "torch_threads": torch.get_num_threads(),
            "timer": f"time.perf_counter, {turns} round-robin",
        }
    return {
        "benchmark": benchmark,
        "device_type": device.type,
        "device_name": name,
        "date": now.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": dist_version("triton"),
        "step": step.__version__,
        **git_state(),
        "platform": platform.platform(),
        "reps": args.reps,
        "warmup": args.warmup,
        "statistic": "median",
        "units": {"time": "ms", "bandwidth": "GB/s (1e9 B/s)", "bytes": "B"},
        **(fields or {}),
        **extra,
    }


def markdown_intro(head: dict[str, Any], *, threads: bool = False) -> list[str]:
    """The report's first lines: title, date and commit, versions (with the CPU thread
    count if ``threads`` and the header has one)."""
    versions = (
        f"- torch {head['torch']}, triton {head['triton']}, Python {head['python']}, "
        f"step {head['step']}"
    )
    if threads and "torch_threads" in head:
        versions += f", {head['torch_threads']} CPU thread(s)"
    return [
        f"# {head['benchmark']} benchmark: {head['device_name']}",
        "",
        f"- date: {head['date']}; commit: {head['commit']}"
        + (" (work tree modified)" if head["dirty"] else ""),
        versions,
    ]


def markdown_timer(head: dict[str, Any]) -> str:
    """The report's line on the timer, the statistic, reps and warm-up."""
    return f"- timer: {head['timer']}; median of {head['reps']} reps after {head['warmup']} warm-up"


def backend_label(record: dict[str, Any]) -> str:
    """A record's backend as the report's tables show it: ``auto (<resolved>)`` for a
    measured ``auto``, else the backend's name."""
    if record["backend"] == "auto" and "resolved_backend" in record:
        return f"auto ({record['resolved_backend']})"
    return str(record["backend"])


def device_slug(head: dict[str, Any]) -> str:
    """``cpu``, or ``cuda-`` plus the GPU name in lowercase with dashes."""
    if head["device_type"] == "cpu":
        return "cpu"
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", str(head["device_name"]).lower()).strip("-")


def write_results(out: Path, head: dict[str, Any], payload: dict[str, Any], table: str) -> Path:
    """Write ``payload`` as JSON and ``table`` as Markdown to
    ``out/<benchmark>-<device>-<date>.json`` and ``.md``, say so, return the stem."""
    out.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.fromisoformat(head["date"]).date().isoformat()
    stem = out / f"{head['benchmark']}-{device_slug(head)}-{date}"
    Path(f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    Path(f"{stem}.md").write_text(table)
    print(f"wrote {stem}.json and {stem}.md")
    return stem


def publish(out: Path, head: dict[str, Any], records: list[dict[str, Any]], table: str) -> int:
    """Print ``table``, write ``{"header", "records"}`` and the table (:func:`write_results`);
    returns 0, the runner's exit status."""
    print(table)
    write_results(out, head, {"header": head, "records": records}, table)
    return 0


# ---------------------------------------------------------------- case by case (--jsonl)


class CaseLog:
    """Appends a run to a JSON-lines file as it goes (``--jsonl``; no file: does nothing).

    Line 1: ``{"benchmark", "type": "header", "planned_cases", "header"}``; then one line
    per finished case: ``{"benchmark", "type": "case", "records", "rows"}`` (``rows``:
    :func:`summary_row` dicts). Each line is written and flushed on its own, so a run
    killed at a deadline leaves every case it finished readable.
    """

    def __init__(self, path: Path | None, head: dict[str, Any], planned_cases: int) -> None:
        self.path = path
        self.benchmark = str(head["benchmark"])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._append({"type": "header", "planned_cases": planned_cases, "header": head})

    def case(self, records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        """Append one finished case: its records and its summary rows."""
        self._append({"type": "case", "records": records, "rows": rows})

    def _append(self, payload: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"benchmark": self.benchmark, **payload}) + "\n")
            f.flush()


def summary_row(
    case: str,
    ours: str,
    ours_ms: float | None,
    baseline: str,
    baseline_ms: float | None,
    *,
    ours_note: str = "",
    baseline_note: str = "",
) -> dict[str, Any]:
    """One line of a session summary: ``ours`` against ``baseline`` on ``case``, with
    ``ratio`` = baseline ms / ours ms (> 1: ours took less time), None where either was
    not timed; the notes say why not (``wrong result``, ``error: ...``, unavailable)."""
    ratio = baseline_ms / ours_ms if ours_ms and baseline_ms else None
    return {
        "case": case,
        "ours": ours,
        "ours_ms": ours_ms,
        "baseline": baseline,
        "baseline_ms": baseline_ms,
        "ratio": ratio,
        "ours_note": ours_note,
        "baseline_note": baseline_note,
    }


def _median_or_note(record: dict[str, Any] | None) -> tuple[float | None, str]:
    """A record's ``median_ms`` and "", or None and why it has none."""
    if record is None:
        return None, "not run"
    if "skipped" in record:
        return None, str(record["skipped"])
    return float(record["median_ms"]), ""


def compare(
    case: str,
    ours: str,
    baseline: str,
    ours_record: dict[str, Any] | None,
    baseline_record: dict[str, Any] | None,
) -> dict[str, Any]:
    """:func:`summary_row` from two records with ``median_ms`` (or ``skipped``)."""
    ours_ms, ours_note = _median_or_note(ours_record)
    base_ms, base_note = _median_or_note(baseline_record)
    return summary_row(
        case, ours, ours_ms, baseline, base_ms, ours_note=ours_note, baseline_note=base_note
    )
