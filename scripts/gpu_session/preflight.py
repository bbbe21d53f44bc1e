"""The preflight phase: versions, device, compilers and backends, and what of them fails
the run. The device is probed in a child process (``python scripts/gpu_session
--probe``), so a crash there is reported, not suffered."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import PACKAGE, REPO
from .budget import run_until
from .problems import Problem, last_error_line

if TYPE_CHECKING:
    from .session import Session

PREFLIGHT_MAX_S = 30.0
TOOL_TIMEOUT_S = 3.0
"""Per ``--version`` or ``nvidia-smi`` call of the preflight."""
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
    cmd = [sys.executable, str(PACKAGE), "--probe"]
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


def preflight_phase(session: Session, env: dict[str, str]) -> None:
    """:func:`preflight` within :data:`PREFLIGHT_MAX_S`, judged by
    :func:`preflight_problems`."""
    phase = session.phase("preflight", PREFLIGHT_MAX_S)
    start = time.monotonic()
    session.preflight = preflight(session.stage, env, PREFLIGHT_MAX_S)
    phase.used_s = time.monotonic() - start
    problems = preflight_problems(session.preflight, session.args.dry_run)
    phase.status = "failed" if problems else "ok"
    session.problems += problems
