"""The native backends of the ``step::`` ops, one folder per backend (``step.backends()``,
the public function, reports whether each can run).

``cuda/``: CUDA C++ from ``csrc/`` compiled at first use through CuPy (NVRTC): the loader
(``cuda/loader.py``) and one module per op it implements. ``cpu/``: C from ``csrc/`` built
with the system C compiler and called through ctypes, likewise. ``sources.py`` finds
``csrc/`` in every kind of install. The loaders sit below ``step.ops`` (the dispatcher asks
them whether a backend can run); the op modules register with ``step.ops.dispatch``, so they
sit above it, and :mod:`step.native.register` imports them all. Triton kernels live in
``kernels/`` (``step.kernels``) and register from their op's module in ``step.ops``.
"""
