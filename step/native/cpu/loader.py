"""Compile ``csrc/<name>.c`` with the system C compiler at first use; load it with ctypes.

No build step at install: the first call compiles the source (about a second) into
``<cache>/cpu/<name>-<digest>.so``, where the digest covers the source, the compiler's
identity and the flags, so an edit or a new compiler builds afresh and every later process
loads the cached file. The cache is ``$STEP_CACHE_DIR``, else
``$XDG_CACHE_HOME/step-sparsity``, else ``~/.cache/step-sparsity``. The compiler is
``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on ``PATH``.

The flags keep IEEE float32 semantics (no ``-ffast-math``, no FMA contraction), so the
kernels round like the PyTorch references they mirror; ``-fopenmp-simd`` only enables
the ``omp simd`` reduction pragmas, no OpenMP runtime is linked.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..sources import csrc_dir

FLAGS = (
    "-O3", "-std=c11", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=off",
    "-fopenmp-simd",
)  # fmt: skip


class CompileError(RuntimeError):
    """The C compiler failed on a ``csrc/`` source (the message holds its output)."""


def compiler() -> str | None:
    """Path of the C compiler the CPU backend uses, or ``None`` when there is none."""
    chosen = os.environ.get("CC")
    candidates = [chosen] if chosen else ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


def cache_dir() -> Path:
    """Where compiled libraries are kept (see the module docstring)."""
    root = os.environ.get("STEP_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "step-sparsity")
    return Path(root) / "cpu"


@functools.cache
def _compiler_identity(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or cc


def library_path(name: str, cc: str) -> Path:
    """The cached library of ``csrc/<name>.c`` built by ``cc``."""
    source = (csrc_dir() / f"{name}.c").read_bytes()
    digest = hashlib.sha256()
    for part in (source, _compiler_identity(cc).encode(), " ".join(FLAGS).encode(),
                 platform.machine().encode()):  # fmt: skip
        digest.update(part + b"\0")
    return cache_dir() / f"{name}-{digest.hexdigest()[:16]}.so"


def _build(source: Path, target: Path, cc: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename: concurrent processes never load a partial file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError as err:
        raise CompileError(
            f"cannot write the compiled CPU kernels to {target.parent} ({err}); set "
            "STEP_CACHE_DIR to a writable folder"
        ) from err
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, str(source), "-o", tmp, "-lm"], capture_output=True,
                              text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise CompileError(
                f"{cc} failed to compile {source} (exit {done.returncode}):\n"
                f"{done.stderr.strip()}\nUse the reference backend meanwhile "
                "(STEP_BACKEND=adam_update=reference) and report this with the output above."
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def load_library(name: str) -> ctypes.CDLL:
    """The ctypes library of ``csrc/<name>.c``, compiled on first use (see module doc).

    Raises:
        CompileError: no C compiler, or it failed on the source.
    """
    source = csrc_dir() / f"{name}.c"
    if not source.is_file():
        raise FileNotFoundError(f"no C source {source}")
    cc = compiler()
    if cc is None:
        raise CompileError(
            "step's CPU kernels are compiled at first use, but no C compiler was found "
            "(set CC, or install gcc or clang); the reference backend runs without one"
        )
    target = library_path(name, cc)
    if not target.is_file():
        _build(source, target, cc)
    return ctypes.CDLL(str(target))


@functools.cache
def library_status(name: str) -> tuple[bool, str]:
    """``(usable, reason)`` for ``csrc/<name>.c``: builds it (once per process) to know."""
    try:
        load_library(name)
    except CompileError as err:
        return False, str(err).splitlines()[0]
    return True, f"C kernels built with {compiler()}"
