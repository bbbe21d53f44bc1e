"""One GPU validation in one call: install, preflight, the gpu tests, the quick benchmarks.

Made for a lent GPU machine (one device call of at most 10 minutes, at most 8 files back):
everything runs within ``--budget`` seconds (default 540), each phase within its own
share of it, and what comes back is at most 4 files under ``$OUT`` (default ``gpu_out/``),
each checked to be under 16 MiB before the script exits:

* ``summary.txt``: the verdict on line 1 (``PASS``, ``PARTIAL``, ``FAIL``, or
  ``DRY-RUN OK``), the preflight, the test counts with the failing ids and skip
  reasons, the benchmark table with ratios to the baselines, the time of each phase
* ``results.tar.gz``: the junit XML, every log, the benchmarks' JSON / JSON lines /
  Markdown, ``nvidia-smi`` (never the compile caches)
* ``results.json``: the summary, machine-readable

Phases, with ``--budget 540``: ``install`` (the wheels in ``.gpu_session/wheels/`` that
are not installed, e.g. hypothesis for two gpu test modules, since the GPU machines have
no registry; then ``pip install --no-deps --no-build-isolation -e .``; at most 60 s),
``preflight`` (versions, device, compilers, backends; at most 30 s),
``tests`` (``python -m pytest -m gpu tests`` in ``--workers`` pytest-xdist workers,
``--test-timeout`` per test, ``--tests-share`` of what is left; pyproject's ``addopts``
dropped, a module that fails to import does not stop the others), ``bench`` (the five
runners of ``benchmarks/`` with ``--quick``, each given a share of what is left and
appending each finished case to its JSON lines, so a runner stopped at its deadline keeps
what it measured), then the outputs (15 s kept in reserve). A command past its deadline
gets SIGINT (pytest then still writes its junit), then SIGKILL; where no junit was
written, one is rebuilt from pytest's log.

The verdict is FAIL (exit status 1) when a test fails or errs or a test module cannot be
imported, when more than half of the gpu tests were skipped or none ran (e.g. the Triton
backend reported itself unavailable), when a log shows a CUDA error or a crashed worker,
when a benchmark runner fails or one of our implementations gives a wrong result, when
the device or a backend is missing, or when the outputs break the limits; PARTIAL (exit
status 3) when a phase was stopped at its deadline; else PASS (0). Summary and archive
are also rewritten after every phase, so a run killed from outside leaves a summary that
says how far it got (``INCOMPLETE``).

Compile caches (Triton, CuPy, the CPU kernels' ``STEP_CACHE_DIR``) live in the
git-ignored ``.gpu_session/cache/``, so a second call on the same warm machine reuses
them. ``TRITON_INTERPRET`` is removed from every command's environment.

``--dry-run`` (CPU, about half a minute) exercises all of it but the GPU work: no install, a
generated module of four tests instead of the gpu tests, the CPU-capable benchmark
runners on tiny sizes, the GPU-only ones skipped with a note; the verdict is then
``DRY-RUN OK`` or ``FAIL``. ``--study`` runs the accuracy study's ``[gpu]`` configurations
instead (resumable, see ``experiments/accuracy/``); its results are archived under
``experiments/accuracy/results/gpu/``.

Usage::

    bash scripts/gpu_session.sh                  # = python scripts/gpu_session.py
    python scripts/gpu_session.py --budget 540 --workers 8
    python scripts/gpu_session.py --dry-run      # on a CPU machine
    bash scripts/gpu_session.sh study            # = python scripts/gpu_session.py --study
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / ".gpu_session"
"""Caches and the staging folder (git-ignored)."""
OUT_NAMES = ("summary.txt", "results.tar.gz", "results.json")
MAX_OUT_FILES = 4
MAX_FILE_BYTES = 16 * 2**20
MEMBER_CAP_BYTES = 4 * 2**20
"""A file above this goes into the archive as its first and last half of this size."""
INSTALL_MAX_S, PREFLIGHT_MAX_S, RESERVE_S = 60.0, 30.0, 15.0
TESTS_GRACE_S, BENCH_GRACE_S, STUDY_GRACE_S = 20.0, 5.0, 30.0
"""Seconds between SIGINT at a command's deadline and SIGKILL."""
TOOL_TIMEOUT_S = 3.0
"""Per ``--version`` or ``nvidia-smi`` call of the preflight."""
MOSTLY_SKIPPED = 0.5
"""More than this fraction of the gpu tests skipped fails the run."""
DISTS = (
    "torch",
    "triton",
    "numpy",
    "cupy-cuda13x",
    "cupy-cuda12x",
    "cupy",
    "transformers",
    "safetensors",
    "setuptools",
    "wheel",
    "pytest",
    "pytest-xdist",
    "pytest-timeout",
    "hypothesis",
    "expecttest",
    "pytest-benchmark",
    "step-sparsity",
)
"""Distributions the preflight reports (the test extras among them: a gpu test module
importing one that is missing fails to collect)."""
CUDA_ERROR = re.compile(
    r"CUDA error|illegal memory access|device-side assert|cudaError\w+|CUDA_ERROR_\w+"
    r"|unspecified launch failure|misaligned address|worker '?gw\d+'? crashed|node down"
    r"|Fatal Python error|Segmentation fault|core dumped"
)
"""Lines of a log or junit text that mean the device (or a worker) was poisoned."""
ERROR_LINE = re.compile(r"^(E\s+)?([\w.]*(Error|Exception)\b|ERROR\b|\S+: error:)")
"""A line naming an exception or an error (see :func:`last_error_line`)."""
TEST_TIMEOUT = re.compile(r"\+{5,} Timeout \+{5,}|^Timeout \(\d+:\d\d:\d\d\)!", re.MULTILINE)
"""pytest-timeout's banner, or the stack dump of pytest's ``faulthandler_timeout``: a test
ran too long (with xdist, pytest-timeout's own output is lost with the worker it kills,
so :func:`pytest_command` also sets ``faulthandler_timeout`` below the timeout)."""
FAULTHANDLER_FRACTION = 0.75
"""``faulthandler_timeout`` as a fraction of ``--test-timeout``."""
OUTCOME_LINE = (
    re.compile(r"^\[gw\d+\] \[\s*\d+%\] (?P<outcome>[A-Z]+) (?P<id>\S+::\S+)"),  # pytest-xdist
    re.compile(r"^(?P<id>\S+::\S+) (?P<outcome>[A-Z]+)\b"),  # plain pytest -v
)
"""pytest ``-v`` lines naming a test and its outcome (for a junit rebuilt from the log)."""
LOG_OUTCOMES = {
    "PASSED": None,
    "XPASS": None,
    "FAILED": "failure",
    "ERROR": "error",
    "SKIPPED": "skipped",
    "XFAIL": "skipped",
}
DRY_RUN_TESTS = '''"""Generated by scripts/gpu_session.py --dry-run: stands in for the gpu tests."""
import pytest


@pytest.mark.parametrize("i", range(3))
def test_passes(i):
    assert i >= 0


def test_skips():
    pytest.skip("dry run: a skipped test")
'''


# ---------------------------------------------------------------- budget and phases


@dataclass
class Budget:
    """The total wall-time budget of one call, counted from its creation."""

    total_s: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
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
class Problem:
    """Something the verdict reports: ``FAIL`` or ``PARTIAL``, and what."""

    level: str
    text: str


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
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
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


def _signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid`` (started by :func:`run_until`), if any
    of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def last_error_line(text: str) -> str:
    """The last line of ``text`` that looks like an exception or error message (also
    pytest's ``E   SomeError: ...`` and ``ERROR ...`` lines); "" if none."""
    for line in reversed(text.splitlines()):
        if ERROR_LINE.match(line.strip()):
            return line.strip()[:300]
    return ""


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


# ---------------------------------------------------------------- preflight


def dist_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`DISTS` (None: not installed), without
    importing them."""
    found: dict[str, str | None] = {}
    for name in DISTS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def tool_text(cmd: list[str]) -> str:
    """``cmd``'s output (stdout, then stderr), ``absent`` if it is not installed, ``timed
    out`` after :data:`TOOL_TIMEOUT_S`."""
    if shutil.which(cmd[0]) is None:
        return "absent"
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    return (done.stdout + done.stderr).strip() or f"no output (exit {done.returncode})"


def tool_line(cmd: list[str]) -> str:
    """The last line of :func:`tool_text`."""
    return tool_text(cmd).splitlines()[-1].strip()


def triton_ptxas() -> str | None:
    """The ptxas that Triton ships (what compiles its kernels), if present."""
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(path) if path.is_file() else None


def probe_device() -> dict[str, Any]:
    """What ``--probe`` prints (run in a child process: it imports torch and step):
    ``step-sparsity info``'s data, each GPU's properties, where step was imported from."""
    import torch

    import step
    from step.cli import collect_info

    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "sm_count": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return {"info": collect_info(), "devices": devices, "step_file": step.__file__}


def preflight(stage: Path, env: dict[str, str], seconds: float) -> dict[str, Any]:
    """Versions, device, compilers and backends, within ``seconds``; writes
    ``preflight.json`` and ``nvidia-smi.txt`` to ``stage``."""
    start = time.monotonic()
    query = [
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,temperature.gpu,power.draw,clocks.sm",
        "--format=csv,noheader",
    ]
    ptxas = triton_ptxas()
    data: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": dist_versions(),
        "nvcc": tool_line(["nvcc", "--version"]),
        "ptxas": tool_line(["ptxas", "--version"]),
        "triton_ptxas": tool_line([ptxas, "--version"]) if ptxas else "absent",
        "nvidia_smi": tool_line(query),
        "triton_interpret_in_caller_env": os.environ.get("TRITON_INTERPRET"),
    }
    (stage / "nvidia-smi.txt").write_text(tool_text(["nvidia-smi"]) + "\n")
    probe_log = stage / "logs" / "probe.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe"]
    left = seconds - (time.monotonic() - start)
    finished = run_until(cmd, probe_log, left - 2.0, env, grace_s=2.0)
    data["probe"] = read_probe(probe_log) if finished.returncode == 0 else None
    data["probe_exit"] = finished.returncode
    data["probe_error"] = last_error_line(probe_log.read_text(errors="replace"))
    (stage / "preflight.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def read_probe(log: Path) -> dict[str, Any] | None:
    """The JSON line ``--probe`` printed last in ``log``, or None."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def preflight_problems(data: dict[str, Any], dry_run: bool) -> list[Problem]:
    """FAIL if the probe failed, no GPU is visible, step was imported from outside this
    checkout, or the cuda or triton backend is unavailable on the GPU (a dry run only
    checks the probe and where step came from)."""
    probe = data.get("probe")
    if probe is None:
        return [
            Problem(
                "FAIL",
                f"the device probe failed (exit {data['probe_exit']}): "
                f"{data['probe_error'] or 'see logs/probe.log'}",
            )
        ]
    problems = []
    if not Path(probe["step_file"]).resolve().is_relative_to(REPO):
        problems.append(
            Problem(
                "FAIL",
                f"step is imported from {probe['step_file']}, not from this checkout ({REPO})",
            )
        )
    if dry_run:
        return problems
    if not probe["devices"]:
        return [*problems, Problem("FAIL", "no CUDA GPU is visible to torch")]
    for name in ("triton", "cuda"):
        status = probe["info"]["backends"].get("cuda:0", {}).get(name)
        if status is None or not status["available"]:
            why = status["reason"] if status else "not reported"
            problems.append(Problem("FAIL", f"the {name} backend is unavailable on cuda:0: {why}"))
    return problems


# ---------------------------------------------------------------- tests: command and junit


@dataclass
class GpuTestReport:
    """The gpu tests' outcome, from the junit XML (or one rebuilt from the log)."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[list[str]] = field(default_factory=list)
    """``[test id, first line of the message]`` of each failed or erring test."""
    skip_reasons: dict[str, int] = field(default_factory=dict)
    uncollected: list[list[str]] = field(default_factory=list)
    """``[module, its error]`` of each test module pytest could not import."""
    planned: int | None = None
    returncode: int | None = None
    deadline_hit: bool = False
    junit: str = "none"
    """``pytest`` (written by pytest), ``rebuilt from the log``, or ``none``."""
    cuda_errors: list[str] = field(default_factory=list)
    timeouts: int = 0
    command: str = ""
    seconds: float = 0.0
    error_tail: str = ""
    """The log's last error line (for an abnormal pytest exit)."""
    slowest: list[str] = field(default_factory=list)
    """pytest's ``--durations`` lines: what to size the next budget on."""

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


def pytest_command(
    selection: list[str], junit: Path, workers: int, test_timeout: float
) -> list[str]:
    """``python -m pytest`` on ``selection``, verbose (the log names each outcome), junit
    to ``junit``; in ``workers`` pytest-xdist workers and with pytest-timeout's
    ``test_timeout`` per test where those plugins are installed, and the stacks of a
    test still running at :data:`FAULTHANDLER_FRACTION` of it dumped to the log
    (pytest's ``faulthandler_timeout``). pyproject's ``addopts``
    are dropped (``--benchmark-disable`` needs pytest-benchmark, absent on the GPU
    machines), and a module that fails to import does not stop the others."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *selection,
        "-p",
        "no:cacheprovider",
        "-v",
        "-rfEs",
        "--durations=15",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit2",
        "-o",
        "addopts=",
        "--continue-on-collection-errors",
    ]
    installed = dist_versions()
    xdist = installed["pytest-xdist"]
    if workers > 0 and xdist is not None:
        major, minor = (int(v) for v in xdist.split(".")[:2])
        dist = "worksteal" if (major, minor) >= (3, 2) else "load"
        cmd += ["-n", str(workers), "--dist", dist]
    if test_timeout > 0:  # stacks of a slow test into the log, whatever the plugins
        cmd += ["-o", f"faulthandler_timeout={FAULTHANDLER_FRACTION * test_timeout:g}"]
    if test_timeout > 0 and installed["pytest-timeout"] is not None:
        # thread: also stops a test hung in C (a CUDA sync); it kills the worker
        cmd += [f"--timeout={test_timeout:g}", "--timeout-method=thread"]
    return cmd


def junit_test_id(classname: str, name: str) -> str:
    """``tests.test_x.TestC`` + ``test_y[a]`` -> ``tests/test_x.py::TestC::test_y[a]``
    (the module is the dotted prefix up to the first part named ``test_*`` or ``*_test``)."""
    parts = classname.split(".") if classname else []
    is_module = [p.startswith("test_") or p.endswith("_test") for p in parts]
    cut = is_module.index(True) + 1 if True in is_module else len(parts)
    module = "/".join(parts[:cut]) + ".py" if parts[:cut] else ""
    return "::".join(p for p in (module, *parts[cut:], name) if p)


def parse_junit(path: Path) -> GpuTestReport:
    """Counts, failing ids, modules that failed to collect, and skip reasons of a pytest
    junit XML file. Test cases without a name (placeholders of tests interrupted by
    SIGINT) are not counted."""
    report = GpuTestReport()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        if not name:
            continue
        tags = {child.tag: child for child in case}
        outcome = next((t for t in ("failure", "error", "skipped") if t in tags), None)
        if outcome is None:
            report.passed += 1
            continue
        message = (tags[outcome].get("message") or tags[outcome].text or "").strip()
        first = message.splitlines()[0][:300] if message else ""
        if outcome == "error" and first == "collection failure":
            why = last_error_line(tags[outcome].text or "") or first
            module = junit_test_id(name, "")  # pytest names the module, dotted
            report.uncollected.append([module, why])
        elif outcome == "skipped":
            report.skipped += 1
            reason = first or "no reason given"
            report.skip_reasons[reason] = report.skip_reasons.get(reason, 0) + 1
        else:
            report.failed += outcome == "failure"
            report.errors += outcome == "error"
            report.failures.append([junit_test_id(case.get("classname", ""), name), first])
    return report


def outcomes_from_log(text: str) -> dict[str, str]:
    """Test id -> pytest's outcome word (``PASSED``, ``FAILED``, ...) from ``-v`` lines."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        for pattern in OUTCOME_LINE:
            match = pattern.match(line)
            if match and match.group("outcome") in LOG_OUTCOMES:
                found[match.group("id")] = match.group("outcome")
                break
    return found


def write_junit_from_log(text: str, path: Path) -> None:
    """Write a junit XML file with the outcomes named in a pytest ``-v`` log (for a run
    that was killed before pytest wrote its own); messages are not in the log."""
    suite = ET.Element("testsuite", name="rebuilt from the pytest log by gpu_session.py")
    for tid, outcome in outcomes_from_log(text).items():
        module, _, name = tid.partition("::")
        classname = module.removesuffix(".py").replace("/", ".")
        case = ET.SubElement(suite, "testcase", classname=classname, name=name)
        tag = LOG_OUTCOMES[outcome]
        if tag is not None:
            ET.SubElement(case, tag, message=f"{outcome} (the message is only in the log)")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def planned_tests(text: str) -> int | None:
    """How many tests pytest selected, from its log header."""
    for pattern in (r"/ (\d+) selected", r"workers \[(\d+) items?\]", r"collected (\d+) items?"):
        match = re.search(pattern, text)
        if match:
            return int(match.group(1))
    return None


def durations(text: str) -> list[str]:
    """The lines of pytest's ``slowest N durations`` section in ``text``."""
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if "slowest" in line and "durations" in line), None
    )
    if start is None:
        return []
    section = []
    for line in lines[start + 1 :]:
        if line.startswith("="):
            break
        if line.strip():
            section.append(line.strip())
    return section


def cuda_error_lines(name: str, text: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` lines of ``text`` matching :data:`CUDA_ERROR`, prefixed by ``name``."""
    hits = [line.strip()[:240] for line in text.splitlines() if CUDA_ERROR.search(line)]
    return [f"{name}: {line}" for line in hits[:limit]]


def read_test_report(
    junit: Path, log: Path, finished: Finished, command: list[str]
) -> GpuTestReport:
    """The tests phase's report: pytest's junit if it wrote one, else one rebuilt from
    the log (and written to ``junit``); the planned count, CUDA errors and timeouts from
    the log and the junit."""
    text = log.read_text(errors="replace") if log.exists() else ""
    try:
        report = parse_junit(junit)
        report.junit = "pytest"
    except (FileNotFoundError, ET.ParseError):  # none, or cut short by a kill
        write_junit_from_log(text, junit)
        report = parse_junit(junit)
        report.junit = "rebuilt from the log"
    report.planned = planned_tests(text)
    report.returncode = finished.returncode
    report.deadline_hit = finished.deadline_hit
    report.timeouts = len(TEST_TIMEOUT.findall(text))
    report.error_tail = last_error_line(text)
    report.slowest = durations(text)
    report.cuda_errors = cuda_error_lines(log.name, text) + cuda_error_lines(
        junit.name, junit.read_text(errors="replace")
    )
    report.command = " ".join(Path(c).name if c == sys.executable else c for c in command)
    return report


def tests_problems(report: GpuTestReport) -> list[Problem]:
    """FAIL for failures, errors, CUDA errors, per-test timeouts, no tests, mostly skipped
    tests or an abnormal pytest exit; PARTIAL when the deadline stopped pytest."""
    problems = []
    if report.failed or report.errors:
        problems.append(
            Problem("FAIL", f"{report.failed} gpu tests failed, {report.errors} had errors")
        )
    if report.uncollected:
        module, why = report.uncollected[0]
        problems.append(
            Problem(
                "FAIL",
                f"{len(report.uncollected)} test modules could not be collected ({module}: {why})",
            )
        )
    if report.cuda_errors:
        problems.append(Problem("FAIL", f"CUDA error or crashed worker: {report.cuda_errors[0]}"))
    if report.timeouts:
        problems.append(
            Problem(
                "FAIL",
                f"{report.timeouts} tests ran too long (stacks in logs/gpu-tests.log; past "
                "--test-timeout a test's worker is killed)",
            )
        )
    if report.total == 0:
        problems.append(Problem("FAIL", "no gpu test ran"))
    elif report.skipped > MOSTLY_SKIPPED * report.total:
        top = max(report.skip_reasons.items(), key=lambda kv: kv[1])
        problems.append(
            Problem(
                "FAIL",
                f"{report.skipped} of {report.total} gpu tests skipped ({top[1]} x {top[0]!r})",
            )
        )
    if report.deadline_hit:
        left = f"{report.planned - report.total} of {report.planned}" if report.planned else "some"
        problems.append(
            Problem("PARTIAL", f"the gpu tests were stopped at their deadline ({left} not run)")
        )
    elif report.returncode not in (0, 1):
        why = f": {report.error_tail}" if report.error_tail else ""
        problems.append(Problem("FAIL", f"pytest exited with status {report.returncode}{why}"))
    return problems


# ---------------------------------------------------------------- benchmarks


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


# ---------------------------------------------------------------- the session


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


def missing_wheels(folder: Path) -> list[Path]:
    """The wheels in ``folder`` whose distribution is not installed here."""
    missing = []
    for wheel in sorted(folder.glob("*.whl")):
        try:
            importlib.metadata.version(wheel.name.split("-")[0])
        except importlib.metadata.PackageNotFoundError:
            missing.append(wheel)
    return missing


def install_phase(session: Session, env: dict[str, str]) -> None:
    """The wheels of ``work/wheels`` that are not installed (test extras such as
    hypothesis; the GPU machines have no package registry), then ``pip install
    --no-deps --no-build-isolation -e .``; FAIL if either fails."""
    phase = session.phase("install", min(INSTALL_MAX_S, session.budget.left() - RESERVE_S))
    wheels = missing_wheels(session.args.work / "wheels")
    names = ", ".join(w.name for w in wheels) or "none"
    if session.args.dry_run:
        phase.status = "skipped"
        phase.note = f"dry run: pip install not run (wheels to install first: {names})"
        return
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "-q"]
    commands = [[*pip, "--no-index", *map(str, wheels)]] if wheels else []
    commands.append([*pip, "--no-build-isolation", "-e", "."])
    phase.note = f"wheels installed first: {names}"
    phase.status = "ok"
    start = time.monotonic()
    for cmd in commands:  # a failed wheel does not stop the package's own install
        left = phase.budget_s - (time.monotonic() - start)
        finished = run_until(cmd, session.stage / "logs" / "install.log", left, env, 2.0)
        if finished.returncode != 0 or finished.deadline_hit:
            phase.status = "failed"
            what = " ".join(Path(c).name for c in cmd[6:])
            session.problems.append(
                Problem(
                    "FAIL",
                    f"pip install {what} failed (exit status "
                    f"{finished.returncode}): see logs/install.log",
                )
            )
    phase.used_s = time.monotonic() - start


def preflight_phase(session: Session, env: dict[str, str]) -> None:
    phase = session.phase("preflight", PREFLIGHT_MAX_S)
    start = time.monotonic()
    session.preflight = preflight(session.stage, env, PREFLIGHT_MAX_S)
    phase.used_s = time.monotonic() - start
    problems = preflight_problems(session.preflight, session.args.dry_run)
    phase.status = "failed" if problems else "ok"
    session.problems += problems


@dataclass(frozen=True)
class GpuTestPlan:
    """What the tests phase runs: pytest arguments naming the tests, workers, the
    per-test timeout, and the seconds between SIGINT at the deadline and SIGKILL."""

    selection: tuple[str, ...]
    workers: int
    test_timeout: float
    grace_s: float = TESTS_GRACE_S


def run_tests(plan: GpuTestPlan, stage: Path, env: dict[str, str], seconds: float) -> GpuTestReport:
    """Run ``plan`` within ``seconds`` (SIGINT ``plan.grace_s`` before the end); the junit
    goes to ``stage/gpu-tests.xml`` (rebuilt from the log if pytest wrote none), the log
    to ``stage/logs/gpu-tests.log``."""
    junit = stage / "gpu-tests.xml"
    cmd = pytest_command(list(plan.selection), junit, plan.workers, plan.test_timeout)
    log = stage / "logs" / "gpu-tests.log"
    finished = run_until(cmd, log, seconds - plan.grace_s, env, grace_s=plan.grace_s)
    report = read_test_report(junit, log, finished, cmd)
    report.seconds = finished.seconds
    return report


def dry_run_module(stage: Path) -> Path:
    """Write :data:`DRY_RUN_TESTS` to a module in ``stage``; return its path."""
    module = stage / "dry_run_tests" / "test_dry_run.py"
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_text(DRY_RUN_TESTS)
    return module


def tests_phase(session: Session, env: dict[str, str]) -> None:
    """The gpu tests (on a dry run: a generated stand-in module, at most 2 workers)
    within their share of the time left."""
    args = session.args
    seconds = (session.budget.left() - RESERVE_S) * args.tests_share
    phase = session.phase("tests", seconds)
    if args.dry_run:
        plan = GpuTestPlan((str(dry_run_module(session.stage)),), min(args.workers, 2), 60.0)
        phase.note = "dry run: 4 generated tests stand in for the gpu tests"
    else:
        plan = GpuTestPlan(("-m", "gpu", "tests"), args.workers, args.test_timeout)
    session.tests = run_tests(plan, session.stage, env, seconds)
    phase.used_s = session.tests.seconds
    problems = tests_problems(session.tests)
    session.problems += problems
    if session.tests.deadline_hit:
        phase.status = "deadline"
    else:
        phase.status = "failed" if any(p.level == "FAIL" for p in problems) else "ok"


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


# ---------------------------------------------------------------- outputs


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
        f"scripts/gpu_session.py ({mode}{', dry run' if args.dry_run else ''}) on "
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


def archive_members(session: Session) -> Iterable[tuple[Path, str]]:
    """(file, name in the archive): the staging folder, and in study mode the study's
    GPU results under their path in the checkout."""
    for path in sorted(session.stage.rglob("*")):
        if path.is_file():
            yield path, path.relative_to(session.stage).as_posix()
    if session.args.study:
        results = REPO / "experiments" / "accuracy" / "results" / "gpu"
        for path in sorted(results.rglob("*")) if results.exists() else []:
            if path.is_file():
                yield path, path.relative_to(REPO).as_posix()


def write_archive(session: Session, target: Path) -> list[str]:
    """``results.tar.gz`` of :func:`archive_members`; a file above
    :data:`MEMBER_CAP_BYTES` keeps its head and tail. Returns the names, with notes."""
    names = []
    with tarfile.open(target, "w:gz") as tar:
        for path, name in archive_members(session):
            size = path.stat().st_size
            if size <= MEMBER_CAP_BYTES:
                tar.add(path, arcname=name)
                names.append(name)
                continue
            half = MEMBER_CAP_BYTES // 2
            with path.open("rb") as f:
                head = f.read(half)
                f.seek(size - half)
                data = head + b"\n[... cut by gpu_session.py ...]\n" + f.read()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
            names.append(f"{name} (cut: {size} B, head and tail kept)")
    return names


def out_files(out: Path) -> list[tuple[str, int]]:
    """Every file under ``out`` (relative name, bytes)."""
    return [
        (p.relative_to(out).as_posix(), p.stat().st_size)
        for p in sorted(out.rglob("*"))
        if p.is_file()
    ]


def limit_problems(files: list[tuple[str, int]]) -> list[Problem]:
    """FAIL if ``$OUT`` holds more than :data:`MAX_OUT_FILES` files or one of
    :data:`MAX_FILE_BYTES` or more."""
    problems = []
    if len(files) > MAX_OUT_FILES:
        problems.append(Problem("FAIL", f"$OUT holds {len(files)} files (limit {MAX_OUT_FILES})"))
    problems += [
        Problem("FAIL", f"$OUT/{name} is {size} B (limit < {MAX_FILE_BYTES} B)")
        for name, size in files
        if size >= MAX_FILE_BYTES
    ]
    return problems


def write_once(session: Session, final: bool) -> int:
    """Write the archive, then ``results.json``, then ``summary.txt`` (which lists the
    other two with their sizes) to ``$OUT``; returns the exit status of the verdict."""
    out = session.args.out
    out.mkdir(parents=True, exist_ok=True)
    members = write_archive(session, out / "results.tar.gz")
    line, status = verdict(session, final)
    payload = {
        "verdict": line,
        "exit_status": status,
        "final": final,
        "problems": [asdict(p) for p in session.problems],
        "phases": [asdict(p) for p in session.phases],
        "preflight": session.preflight,
        "tests": asdict(session.tests) if session.tests else None,
        "bench": [asdict(r) for r in session.bench],
        "archive": members,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    files = [f"{name}: {size} B" for name, size in out_files(out) if name != "summary.txt"]
    files += ["summary.txt: this file", "results.tar.gz holds:", *[f"  {m}" for m in members]]
    (out / "summary.txt").write_text(summary_text(session, line, files))
    return status


def write_outputs(session: Session, final: bool) -> int:
    """:func:`write_once`; when ``final``, then check the count and sizes of the files in
    ``$OUT``, and on a breach add it as a FAIL and write both files again. Returns the
    exit status."""
    status = write_once(session, final)
    if final:
        breaches = limit_problems(out_files(session.args.out))
        if breaches:
            session.problems += breaches
            status = write_once(session, final)
    return status


def report_files(out: Path) -> None:
    """Print the count and size of every file under ``out``, against the limits."""
    files = out_files(out)
    print(f"{len(files)} file(s) in {out} (limit {MAX_OUT_FILES}, each < {MAX_FILE_BYTES} B):")
    for name, size in files:
        flag = "" if size < MAX_FILE_BYTES else "  <-- over the limit"
        print(f"  {name}: {size} B{flag}")


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
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


def prepare_stage(args: argparse.Namespace) -> Path:
    """An empty staging folder ``work/run``, and no earlier outputs of ours in ``$OUT``."""
    stage = args.work / "run"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "logs").mkdir(parents=True)
    for name in OUT_NAMES:
        (args.out / name).unlink(missing_ok=True)
    return stage


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe_device()))
        return 0
    args.out, args.work = args.out.resolve(), args.work.resolve()
    session = Session(args, Budget(args.budget), prepare_stage(args))
    env = child_env(args.work)
    steps = [install_phase, preflight_phase]
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


if __name__ == "__main__":
    sys.exit(main())
