"""Argument checks of the optimizers, the recipes and AutoSwitch: run before anything
changes, each raising ``TypeError`` (wrong kind of thing: a ``str`` is not a float, a
``bool`` is not an int) or ``ValueError`` (right kind, bad value: NaN, inf, out of range)
with a message naming the argument, what it got and what it expects."""

from __future__ import annotations

import math
import numbers


def describe(value: object) -> str:
    """``value`` as an error message shows it: its type and repr."""
    return f"{type(value).__name__} {value!r}"


def is_int(value: object) -> bool:
    """``value`` is an integer and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """``value`` is a real number and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(
    value: object, name: str, *, low: float = 0.0, high: float | None = None,
    low_open: bool = False, example: str = "1e-3",
) -> float:  # fmt: skip
    """``value`` is a finite real number in ``[low, high)`` (``(low, high)`` with
    ``low_open``); returned as a float."""
    bounds = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and < {high:g}")
    expected = f"{bounds} (a finite float, e.g. {example})"
    if not is_real(value):
        raise TypeError(f"{name} must be {expected}; got {describe(value)}")
    number = float(value)  # type: ignore[arg-type]
    too_low = number <= low if low_open else number < low
    if not math.isfinite(number) or too_low or (high is not None and number >= high):
        raise ValueError(f"{name} must be {expected}; got {number!r}")
    return number


def check_int(value: object, name: str, *, low: int = 1, hint: str = "") -> int:
    """``value`` is an int (not a bool) ``>= low``; returned as an int."""
    expected = ("a positive int" if low == 1 else f"an int >= {low}") + hint
    if not is_int(value):
        raise TypeError(f"{name} must be {expected}; got {describe(value)}")
    if value < low:  # type: ignore[operator]
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """``value`` is one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices} (a str); got {describe(value)}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")
    return value
