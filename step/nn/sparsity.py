"""The sparsity state a sparse layer shares with the optimizer.

A sparse layer attaches a :class:`NMSparsity` to its weight (``weight.nm_sparsity``).
The optimizer finds it there, and changes ``mode`` when the recipe's phase changes; the
layer reads ``mode`` in every forward pass. So the switch from dense to masked forward
needs no user code, and survives ``DDP`` (which keeps the parameter objects).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.checks import check_nm

MODES = ("dense", "ste", "fixed")
"""``dense``: plain weight; ``ste``: mask from the current weight every forward, straight-
through gradient (STEP's mask-learning phase, SR-STE); ``fixed``: a stored mask (ASP)."""

ATTRIBUTE = "nm_sparsity"


@dataclass
class NMSparsity:
    """N:M pattern and forward mode of one weight (groups along its last dim)."""

    n: int
    m: int
    mode: str = "dense"
    mask: torch.Tensor | None = None  # the fixed mask in mode "fixed"

    def __post_init__(self) -> None:
        check_nm(self.n, self.m)
        self.set_mode(self.mode, self.mask)

    def set_mode(self, mode: str, mask: torch.Tensor | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown sparsity mode {mode!r}; expected one of {MODES}")
        if (mode == "fixed") != (mask is not None):
            raise ValueError("mode 'fixed' needs a mask, and only it takes one")
        self.mode, self.mask = mode, mask


def sparsity_of(param: torch.Tensor) -> NMSparsity | None:
    """The :class:`NMSparsity` attached to ``param``, if any."""
    return getattr(param, ATTRIBUTE, None)


def attach_sparsity(param: torch.Tensor, n: int, m: int) -> NMSparsity:
    """Attach (or return the existing) :class:`NMSparsity` of ``param``."""
    state = sparsity_of(param)
    if state is None:
        state = NMSparsity(n, m)
        setattr(param, ATTRIBUTE, state)
    elif (state.n, state.m) != (n, m):
        raise ValueError(f"parameter already has N:M {state.n}:{state.m}, not {n}:{m}")
    return state
