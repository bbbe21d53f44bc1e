"""CUDA C++ sources of step-sparsity, shipped as package data (``step.csrc``).

Nothing here is Python: the ``.cu``/``.cuh`` files are compiled at first use through
CuPy/NVRTC. ``step.csrc_dir()``-style access goes through :mod:`step.csrc`.
"""
