"""C kernels from ``csrc/*.c`` for CPU tensors, compiled at first use with the system C
compiler and loaded with ctypes. See :mod:`step.native.cpu.loader`."""

from .loader import CompileError, compiler, library_status, load_library

__all__ = ["CompileError", "compiler", "library_status", "load_library"]
