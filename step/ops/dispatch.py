"""One dispatch layer: which implementation (backend) runs each ``step::`` op.

Every op is declared once with ``torch.library``; its body asks :func:`choose` for an
implementation. Three backends exist:

``reference``
    Plain PyTorch, runs on any device. Always available.
``triton``
    Triton kernels from ``step.kernels``. Available for CUDA tensors on GPUs of compute
    capability >= 8.0, and for CPU tensors when ``TRITON_INTERPRET=1`` was set before the
    kernels were imported (the Triton interpreter; used by the CPU test suite). Automatic
    choice never picks the interpreter: it is for tests, forced with ``STEP_BACKEND``.
``cuda``
    CUDA C++ from ``csrc/`` compiled at first use through CuPy. Needs a GPU of compute
    capability >= 8.0 and CuPy.
``cpu``
    C from ``csrc/`` compiled at first use with the system C compiler (ctypes). CPU
    tensors; needs a C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``).

Automatic choice takes, for the tensors' device, the first of ``cuda``, ``triton``,
``cpu``, ``reference`` that implements the op, is available, and (for automatic choice only) suits
the call (e.g. a decode-style kernel only for few tokens). ``STEP_BACKEND`` forces a
backend, globally (``STEP_BACKEND=triton``) or per op
(``STEP_BACKEND=nm_mask=triton,sparse24_linear=reference``); so does
:func:`use_backend`. A forced backend that cannot run raises :class:`BackendError`; it
never silently falls back.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.metadata
import importlib.util
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..native.cuda.loader import MIN_CAPABILITY

BACKENDS: tuple[str, ...] = ("cuda", "triton", "cpu", "reference")
"""All backends, in the order automatic choice prefers them."""


class BackendError(RuntimeError):
    """A requested backend cannot run this op on these tensors."""


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run on a device, and if not, why."""

    name: str
    available: bool
    reason: str

    def __str__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"{self.name}: {state} ({self.reason})"


@dataclass(frozen=True)
class _Impl:
    fn: Callable
    auto_if: Callable[..., bool] | None
    auto: bool


_IMPLS: dict[str, dict[str, _Impl]] = {}
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("step_backend", default=None)


def register(
    op: str,
    backend: str,
    *,
    auto_if: Callable[..., bool] | None = None,
    auto: bool = True,
):
    """Decorator registering ``fn`` as ``backend``'s implementation of ``op``.

    ``auto_if(*args)`` restricts when *automatic* choice takes this implementation; a
    forced backend runs it regardless. ``auto=False`` keeps it out of automatic choice
    altogether (an implementation not yet validated on hardware: forced use only).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def wrap(fn: Callable) -> Callable:
        _IMPLS.setdefault(op, {})[backend] = _Impl(fn, auto_if, auto)
        return fn

    return wrap


def registered_ops() -> tuple[str, ...]:
    """Every op with a registered implementation, in the order registered."""
    return tuple(_IMPLS)


def implementations(op: str) -> tuple[str, ...]:
    """Backends that implement ``op``, in preference order."""
    return tuple(b for b in BACKENDS if b in _IMPLS.get(op, {}))


# ---------------------------------------------------------------- availability


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


# ---------------------------------------------------------------- forcing


@functools.lru_cache(maxsize=64)
def _parse_forced(spec: str | None) -> tuple[str | None, dict[str, str]]:
    """``"triton"`` -> global; ``"nm_mask=triton,x=reference"`` -> per op. Parsed once per
    spec string (a bad one raises each time: errors are not cached); callers never change
    the dict returned."""
    if not spec:
        return None, {}
    spec = spec.strip()
    if "=" not in spec:
        _check_backend_name(spec, "STEP_BACKEND")
        return spec, {}
    per_op: dict[str, str] = {}
    for item in spec.split(","):
        op, sep, backend = item.partition("=")
        op, backend = op.strip(), backend.strip()
        if not sep or not op:
            raise BackendError(
                f"STEP_BACKEND={spec!r}: expected 'BACKEND' or 'op=BACKEND,op=BACKEND'"
            )
        _check_backend_name(backend, f"STEP_BACKEND entry {item!r}")
        _check_op_name(op, f"STEP_BACKEND entry {item!r}")
        per_op[op] = backend
    return None, per_op


def _check_op_name(op: str, where: str) -> None:
    if op not in _IMPLS:
        raise BackendError(f"{where}: unknown op {op!r}; the ops are {', '.join(sorted(_IMPLS))}")


def _check_backend_name(name: str, where: str) -> None:
    if name not in BACKENDS:
        raise BackendError(f"{where}: unknown backend {name!r}; expected one of {BACKENDS}")


def forced_backend(op: str) -> str | None:
    """The backend forced for ``op`` by :func:`use_backend` or ``STEP_BACKEND``, if any."""
    spec = _forced.get()
    if spec is None:
        spec = os.environ.get("STEP_BACKEND")
    everywhere, per_op = _parse_forced(spec)
    return per_op.get(op, everywhere)


@contextlib.contextmanager
def use_backend(spec: str | None) -> Iterator[None]:
    """Force a backend inside a ``with`` block (same syntax as ``STEP_BACKEND``;
    ``None`` restores automatic choice, overriding the environment)."""
    _parse_forced(spec)  # validate now, not at the first op
    token = _forced.set(spec or "")
    try:
        yield
    finally:
        _forced.reset(token)


# ---------------------------------------------------------------- choice


def _available(backend: str, device: torch.device) -> bool:
    """``backend_status(backend, device).available``, decided once per configuration:
    the device, ``TRITON_INTERPRET`` and the mode the kernels were defined in. No status
    text is built on this path; :func:`backend_status` builds it to report or raise.
    The C library's state is cached where it is found out (``library_status``)."""
    if backend == "reference":
        return True
    if backend == "cpu":
        if device.type != "cpu":
            return False
        from ..native.cpu.loader import library_status  # builds the C kernels once per process

        return library_status("adam_update_cpu")[0]
    kernels = sys.modules.get("step.kernels")
    mode = getattr(kernels, "INTERPRET", None)
    return _available_in(backend, device, os.environ.get("TRITON_INTERPRET", "0"), mode)


@functools.lru_cache(maxsize=256)
def _available_in(
    backend: str, device: torch.device, _interpret: str, _kernels_mode: bool | None
) -> bool:
    return backend_status(backend, device).available


def only_reference(op: str, device: torch.device) -> bool:
    """Whether automatic choice can only pick ``op``'s reference on ``device`` (no other
    implementation available there, none forced): a caller holding the reference's
    result another way (a frozen layer's dense weight) need not call the op at all.
    Cheap: cached availability and the parsed forced backend, no arguments looked at."""
    if forced_backend(op) is not None:
        return False
    for backend, impl in _IMPLS.get(op, {}).items():
        if backend == "reference" or not impl.auto:
            continue
        if backend == "triton" and device.type == "cpu":
            continue  # never chosen automatically there (choose's rule)
        if _available(backend, device):
            return False
    return True


def choose(op: str, device: torch.device, *args) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` for tensors on ``device``.

    ``args`` are the op's arguments, passed to an implementation's ``auto_if``.
    """
    impls = _IMPLS.get(op)
    if not impls:
        raise BackendError(f"step::{op} has no registered implementation")
    forced = forced_backend(op)
    if forced is not None:
        if forced not in impls:
            raise BackendError(
                f"STEP_BACKEND forces '{forced}' for step::{op}, which has no {forced} "
                f"implementation (it has: {', '.join(implementations(op))}). Force a backend "
                f"per op instead, e.g. STEP_BACKEND={op}={implementations(op)[0]}"
            )
        if not _available(forced, device):
            reason = backend_status(forced, device).reason
            raise BackendError(f"STEP_BACKEND forces '{forced}' for step::{op}: {reason}")
        return forced, impls[forced].fn
    for backend in BACKENDS:
        impl = impls.get(backend)
        if impl is None or not impl.auto:
            continue
        if backend == "triton" and device.type == "cpu":
            continue  # the interpreter is for tests; never chosen automatically
        if not _available(backend, device):
            continue
        if impl.auto_if is not None and not impl.auto_if(*args):
            continue
        return backend, impl.fn
    raise BackendError(f"no backend can run step::{op} on {device}")  # reference always can
