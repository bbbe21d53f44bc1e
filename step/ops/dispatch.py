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
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .availability import (  # noqa: F401  (BackendStatus, backends, check_device: re-exported)
    BACKENDS,
    BackendStatus,
    backend_status,
    backends,
    check_device,
    triton_interpreting,
)


class BackendError(RuntimeError):
    """A requested backend cannot run this op on these tensors."""


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
