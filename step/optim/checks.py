"""Argument checks of the optimizers, the recipes and AutoSwitch: run before anything
changes, each raising ``TypeError`` (wrong kind of thing: a ``str`` is not a float, a
``bool`` is not an int) or ``ValueError`` (right kind, bad value: NaN, inf, out of range)
with a message naming the argument, what it got and what it expects."""

from __future__ import annotations

import math
import numbers

from ..ops.checks import check_nm


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


def check_betas(betas: object, name: str = "betas") -> tuple[float, float]:
    """``betas`` is a pair of finite floats in [0, 1)."""
    expected = f"{name} must be two floats in [0, 1), e.g. (0.9, 0.999)"
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise TypeError(f"{expected}; got {describe(betas)}")
    for i, b in enumerate(betas):
        if not is_real(b):
            raise TypeError(f"{expected}; got {betas!r} ({name}[{i}] is {describe(b)})")
        if not (math.isfinite(b) and 0.0 <= b < 1.0):
            raise ValueError(f"{expected}; got {betas!r} ({name}[{i}] is {b!r})")
    return float(betas[0]), float(betas[1])


def check_hyperparameters(group: dict, prefix: str = "") -> dict:
    """The hyperparameters of a param group (or of the defaults), checked; returned as
    floats. ``prefix`` names where they come from in messages (``param_groups[1]``)."""
    name = (lambda key: f"{prefix}[{key!r}]") if prefix else (lambda key: key)
    return {
        "lr": check_real(group["lr"], name("lr")),
        "betas": check_betas(group["betas"], name("betas")),
        "eps": check_real(group["eps"], name("eps"), example="1e-8"),
        "weight_decay": check_real(group["weight_decay"], name("weight_decay"), example="0.01"),
        "srste_decay": check_real(group["srste_decay"], name("srste_decay"), example="2e-4"),
    }


def check_group_nm(nm: object, name: str) -> tuple[int, int] | None:
    """A param group's ``nm``: None or a pair ``(n, m)`` of ints, ``1 <= n < m <= 32``."""
    if nm is None:
        return None
    if not isinstance(nm, tuple | list) or len(nm) != 2:
        raise TypeError(f"{name} must be None or a pair (n, m), e.g. (2, 4); got {describe(nm)}")
    try:
        return check_nm(*nm)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None
