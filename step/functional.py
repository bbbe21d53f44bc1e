"""Functional forms of the sparse layers (autograd-aware where training needs it)."""

from __future__ import annotations

import torch

from .ops.masked_linear import masked_linear
from .ops.nm_linear import nm_linear
from .ops.sparse24_linear import sparse24_linear

__all__ = ["masked_linear", "nm_linear", "sparse24_linear", "ste_masked", "ste_soft"]


class _StraightThroughMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, w, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def ste_masked(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``where(mask, w, 0)`` whose gradient reaches every entry of ``w`` unmasked (the
    straight-through estimator), for layers other than Linear (Conv2d, Conv1D).

    Args:
        w: any floating tensor; mask: bool of ``w``'s shape (True = kept).
    """
    if mask.shape != w.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of w's shape {tuple(w.shape)}, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    return _StraightThroughMask.apply(w, mask)


class _StraightThroughSoft(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, soft: torch.Tensor, beta: float) -> torch.Tensor:
        return soft * beta

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def ste_soft(w: torch.Tensor, soft: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``beta * soft`` whose gradient reaches ``w`` unchanged: S-STE's forward weight
    with the straight-through estimator. ``soft`` is ``w``'s soft threshold
    (:func:`step.ops.nm_soft_threshold`, computed without autograd); the gradient of the
    output is passed to ``w`` as it is, not multiplied by ``beta`` (as the S-STE authors'
    code does), and ``soft`` gets none.

    Args:
        w: any floating tensor; soft: of ``w``'s shape and dtype; beta: a float.
    """
    if soft.shape != w.shape or soft.dtype != w.dtype:
        raise ValueError(
            f"soft must be a tensor of w's shape {tuple(w.shape)} and dtype {w.dtype}, got "
            f"{soft.dtype} {tuple(soft.shape)}: pass w's soft threshold"
        )
    return _StraightThroughSoft.apply(w, soft, float(beta))
