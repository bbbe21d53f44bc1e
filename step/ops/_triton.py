"""Lazy access to the Triton launchers: ``step.kernels`` (and Triton) load on first use."""

from __future__ import annotations

from collections.abc import Callable


def triton_launcher(name: str) -> Callable:
    """A function calling ``step.kernels.<name>``, importing the kernels only when called."""

    def launch(*args):
        from step import kernels

        return getattr(kernels, name)(*args)

    launch.__name__ = name
    launch.__qualname__ = name
    return launch
