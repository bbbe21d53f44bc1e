"""CUDA C++ kernels from ``csrc/``, compiled at first use through CuPy (NVRTC).

Importing this package never imports CuPy; the first kernel launch does. See
:mod:`step.native.cuda.loader`.
"""

from .loader import CUPY_HINT, MIN_CAPABILITY, launch, load_module, module_source, nvrtc_options

__all__ = ["CUPY_HINT", "MIN_CAPABILITY", "launch", "load_module", "module_source", "nvrtc_options"]
