"""Which backends can run on which device, and why not: the questions
:mod:`step.ops.dispatch` asks (cached there) and ``step.backends()`` / ``step-sparsity
info`` report. No choice of implementation is made here.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import itertools
import os
import sys
from dataclasses import dataclass

import torch

from ..native.cuda.loader import MIN_CAPABILITY

BACKENDS: tuple[str, ...] = ("cuda", "triton", "cpu", "reference")
"""All backends, in the order automatic choice prefers them."""


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run on a device, and if not, why."""

    name: str
    available: bool
    reason: str

    def __str__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"{self.name}: {state} ({self.reason})"


def triton_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _module_present(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _cuda_device_problem(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"needs a CUDA device, tensors are on {device.type}"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability_problem(index)


@functools.cache
def _capability_problem(index: int) -> str | None:
    cap = torch.cuda.get_device_capability(index)
    if cap < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(index)
        return f"{name} has compute capability {cap[0]}.{cap[1]} < 8.0 (Ampere or newer needed)"
    return None


def _release(version: str) -> tuple[int, ...]:
    """``"3.6.0+git12"`` -> ``(3, 6, 0)``: the leading numeric parts of a version."""
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@functools.cache
def _interpreter_problem() -> str | None:
    """Triton < 3.7's interpreter turns its scalars into Python ints with ``int()`` of a
    one-element array, which numpy >= 2.4 refuses: every kernel looping over a runtime
    range then fails (triton-lang/triton issue 9171, fixed in 3.7)."""
    triton_version = importlib.metadata.version("triton")
    numpy_version = importlib.metadata.version("numpy")
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (
            f"Triton {triton_version}'s interpreter cannot run with numpy {numpy_version} "
            "(numpy >= 2.4 breaks it; fixed in Triton 3.7): install triton>=3.7 or numpy<2.4 "
            "to run the kernels on CPU"
        )
    return None


def _kernels_mode_problem() -> str | None:
    """Triton decides interpreter vs compiler when the kernels are defined (imported)."""
    kernels = sys.modules.get("step.kernels")
    if kernels is not None and kernels.INTERPRET != triton_interpreting():
        return (
            "step.kernels was imported with TRITON_INTERPRET="
            f"{int(kernels.INTERPRET)}; set TRITON_INTERPRET before importing step"
        )
    return None


def backend_status(backend: str, device: torch.device | str | None = None) -> BackendStatus:
    """Whether ``backend`` can run on ``device`` (default: the current CUDA device if any,
    else the CPU), with the reason."""
    dev = _default_device() if device is None else torch.device(device)
    if backend == "reference":
        return BackendStatus(backend, True, f"plain PyTorch, runs on {dev.type}")
    if backend == "triton":
        if not _module_present("triton"):
            return BackendStatus(backend, False, "Triton is not installed (pip install triton)")
        mode_problem = _kernels_mode_problem()
        if mode_problem:
            return BackendStatus(backend, False, mode_problem)
        if dev.type == "cpu":
            if triton_interpreting():
                problem = _interpreter_problem()
                if problem:
                    return BackendStatus(backend, False, problem)
                return BackendStatus(
                    backend, True, "Triton interpreter on CPU (TRITON_INTERPRET=1)"
                )
            return BackendStatus(
                backend, False, "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1"
            )
        problem = _cuda_device_problem(dev)
        if problem:
            return BackendStatus(backend, False, problem)
        return BackendStatus(backend, True, f"Triton on {torch.cuda.get_device_name(dev)}")
    if backend == "cuda":
        problem = _cuda_device_problem(dev)
        if problem:
            return BackendStatus(backend, False, problem)
        if not _module_present("cupy"):
            return BackendStatus(
                backend, False, "CuPy is not installed (pip install 'step-sparsity[cuda]')"
            )
        return BackendStatus(backend, True, f"CUDA via CuPy on {torch.cuda.get_device_name(dev)}")
    if backend == "cpu":
        if dev.type != "cpu":
            return BackendStatus(backend, False, f"needs CPU tensors, not {dev.type}")
        from ..native.cpu.loader import library_status  # builds the C kernels once per process

        return BackendStatus(backend, *library_status("adam_update_cpu"))
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def check_device(device: object, name: str = "device") -> torch.device:
    """``device`` names a device this process can use; returns it as ``torch.device``.

    Raises ``TypeError`` (not a ``str``/``torch.device``) or ``ValueError`` (a device
    type torch does not know, or one no hardware here provides), naming ``name``. Callers
    check before they change anything, so a bad device never leaves work half done.
    """
    if not isinstance(device, str | torch.device):
        raise TypeError(f"{name} must be a str or torch.device such as 'cpu' or 'cuda:0', got "
                        f"{type(device).__name__} {device!r}")  # fmt: skip
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"{name} {str(device)!r} is not a device torch knows ({e}); use "
                         "e.g. 'cpu' or 'cuda:0'") from None  # fmt: skip
    problem = _device_problem(dev)
    if problem:
        raise ValueError(f"{name} {str(device)!r} cannot be used: {problem}; use 'cpu', or run "
                         "on a machine that has that device")  # fmt: skip
    return dev


def _device_problem(dev: torch.device) -> str | None:
    if dev.type in ("cpu", "meta"):
        return None
    accelerator = (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    )
    if accelerator is None or accelerator.type != dev.type:
        return (f"no {dev.type} device is visible to PyTorch (torch {torch.__version__}, CUDA "
                f"build {torch.version.cuda})")  # fmt: skip
    count = torch.accelerator.device_count()
    if dev.index is not None and dev.index >= count:
        return f"there are {count} {dev.type} device(s), so index {dev.index} does not exist"
    return None


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def backends(device: torch.device | str | None = None) -> dict[str, BackendStatus]:
    """Report every backend for ``device``: available or not, and why.

    >>> import step
    >>> step.backends("cpu")["reference"].available
    True
    """
    return {b: backend_status(b, device) for b in BACKENDS}
