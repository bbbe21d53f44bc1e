"""``step::nm_soft_threshold``: S-STE's continuous N:M pruning function.

In every group of ``m`` consecutive elements along the last dim, the ``n`` kept by
``step.nm_mask`` (largest ``|w|``, ties to the lower index, NaN ranked like +inf) are
shrunk towards zero by ``t``, the largest magnitude among the ``m - n`` pruned ones (the
``(n+1)``-th largest ``|w|`` of the group); the pruned ones become ``+0.0``:

    soft_i = sign(w_i) * (|w_i| - t)   where kept,   +0.0 elsewhere

(Hu, Zhu, Chen, "S-STE: Continuous Pruning Function for Efficient 2:4 Sparse
Pre-training", NeurIPS 2024). Unlike ``w * mask`` it is continuous in ``w``: an element
crossing the threshold enters or leaves at zero.

Exactly reproducible on every backend: ``t`` is read from the bit patterns (the sign-
cleared pattern, clamped at +inf's, that the mask ranks by: ``t`` is +inf where a pruned
element is NaN), ``|w_i| - t`` is one float32 subtraction (exact widening of fp16/bf16
inputs), the sign is copied from ``w_i`` and the result is rounded once to ``w``'s dtype
(to nearest even). Non-finite input gives NaN or inf where it makes ``|w_i| - t`` so.
"""

from __future__ import annotations

import torch

from ..kernels.float_bits import MAGNITUDE_BITS
from .checks import call_op
from .dispatch import choose, register
from .nm_mask import check_nm_mask_args, nm_mask_ref


def nm_soft_threshold_ref(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: ``w`` [..., K] (K % m == 0) -> ``(soft, mask)``: ``soft`` of ``w``'s
    dtype and shape, ``mask`` bool, ``nm_mask_ref(w, n, m)``."""
    mask = nm_mask_ref(w, n, m)
    view, abs_mask, inf_bits = MAGNITUDE_BITS[w.dtype]
    groups = w.reshape(-1, m)
    key = (groups.view(view).to(torch.int32) & abs_mask).clamp_max_(inf_bits)
    # t: the largest key among the pruned (every group prunes m - n >= 1 elements)
    t_key = torch.where(mask.reshape(-1, m), -1, key).amax(dim=1, keepdim=True)
    t = t_key.to(view).view(w.dtype).float()
    shrunk = torch.copysign(groups.float().abs() - t, groups.float())
    soft = torch.where(mask.reshape(-1, m), shrunk, 0.0).to(w.dtype)
    return soft.reshape(w.shape), mask


register("nm_soft_threshold", "reference")(nm_soft_threshold_ref)


@register("nm_soft_threshold", "triton")
def _nm_soft_threshold_triton(*args):
    from step.kernels.nm_soft_threshold import nm_soft_threshold_triton  # Triton loads here

    return nm_soft_threshold_triton(*args)


@torch.library.custom_op("step::nm_soft_threshold", mutates_args=())
def _nm_soft_threshold_op(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_nm_mask_args(w, n, m)
    w = w.contiguous()
    _, impl = choose("nm_soft_threshold", w.device, w, n, m)
    return impl(w, n, m)


@_nm_soft_threshold_op.register_fake
def _(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_nm_mask_args(w, n, m)
    return torch.empty_like(w, memory_format=torch.contiguous_format), torch.empty(
        w.shape, dtype=torch.bool, device=w.device
    )


def nm_soft_threshold(w: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """S-STE's soft threshold of ``w``: the ``n`` largest ``|w|`` of every group of ``m``
    shrunk by the largest pruned magnitude, the rest zero; and the mask.

    Args:
        w: float32/float16/bfloat16 tensor ``[..., K]``; groups of ``m`` consecutive
            elements run along the last dim, so ``K % m == 0``. Non-contiguous input is
            copied to contiguous first.
        n, m: keep ``n`` of every ``m`` (``1 <= n < m <= 32``); default 2:4.

    Returns:
        ``(soft, mask)``: ``soft`` of ``w``'s shape and dtype, ``sign(w) * (|w| - t)``
        where kept and ``+0.0`` where pruned, ``t`` the group's ``(n+1)``-th largest
        ``|w|`` (computed in float32, rounded once); ``mask`` bool, exactly
        :func:`step.nm_mask` ``(w, n, m)``. Not differentiable (the S-STE layers pass the
        gradient straight through to ``w``).

    >>> step.ops.nm_soft_threshold(torch.tensor([0.5, -3.0, 2.0, 1.0]), 2, 4)[0]
    tensor([ 0., -2.,  1.,  0.])
    """
    return call_op(torch.ops.step.nm_soft_threshold, check_nm_mask_args, w, n, m)
