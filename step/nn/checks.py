"""Argument checks of the model-level API (``sparsify``, ``freeze``, ``export``,
``load_sparse``): a ``TypeError`` naming the argument, what it got and the fix, raised
before the model is touched."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from torch import nn


def check_module(model: object, name: str = "model") -> nn.Module:
    """``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{name} must be a torch.nn.Module (the model itself), got "
            f"{type(model).__name__} {_short(model)}"
        )
    return model


def check_patterns(patterns: object, name: str) -> list[str] | None:
    """``patterns`` is None or an iterable of ``fnmatch`` pattern strings; a list of them.

    A single string is refused: iterating it would give one pattern per character.
    """
    if patterns is None:
        return None
    if isinstance(patterns, str) or not isinstance(patterns, Iterable):
        raise TypeError(f"{name} must be a list of name patterns, e.g. [{_short(patterns)}], "
                        f"got {type(patterns).__name__} {_short(patterns)}")  # fmt: skip
    found = list(patterns)
    bad = [p for p in found if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name} patterns must be strings, got {bad[:3]!r}")
    return found


def check_path(path: object, name: str = "path") -> Path:
    """``path`` is a ``str`` or ``os.PathLike``; returned as a ``Path``."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a str or pathlib.Path (a directory), got "
                        f"{type(path).__name__} {_short(path)}")  # fmt: skip
    return Path(path)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
