"""Functional forms of the sparse layers (autograd-aware where training needs it)."""

from __future__ import annotations

import torch

from .ops.masked_linear import masked_linear
from .ops.nm_linear import nm_linear
from .ops.sparse24_linear import sparse24_linear

__all__ = ["masked_linear", "nm_linear", "sparse24_linear", "ste_masked"]


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
