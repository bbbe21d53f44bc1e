"""``step::nm_mask``: which weights an N:M pattern keeps.

In every group of ``m`` consecutive elements along the last dim, keep the ``n`` with the
largest ``|w|``; ties keep the lower index; NaN ranks like +inf. Every backend gives the
bit-identical mask, ties included.
"""

from __future__ import annotations

import torch

from ..kernels.float_bits import MAGNITUDE_BITS
from .checks import call_op, check_groups, check_nm, check_tensor
from .dispatch import choose, register

_PAIRWISE_MAX_M = 8  # up to here comparing each pair once beats topk on CPU


def nm_mask_ref(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Reference: ``w`` [..., K] (K % m == 0) -> bool mask of the same shape.

    Magnitudes are compared as integers: for IEEE floats the sign-cleared bit pattern
    orders like ``|w|``, and clamping it at +inf's pattern makes NaN tie with inf.
    Element i beats element j > i when ``key_i >= key_j`` (ties go to the lower index);
    it is kept when it beats at least ``m - n`` of the others, i.e. exactly the ``n``
    largest are kept. For larger ``m`` the index is folded into the key's low bits
    (``31 - index``) so the keys are unique, and topk picks the same ``n``.
    """
    view, abs_mask, inf_bits = MAGNITUDE_BITS[w.dtype]
    groups = w.reshape(-1, m).view(view)
    if m <= _PAIRWISE_MAX_M:
        key = (groups.to(torch.int32) & abs_mask).clamp_max_(inf_bits).t().contiguous()
        wins = torch.zeros(key.shape, dtype=torch.int8, device=w.device)
        for i in range(m):
            for j in range(i + 1, m):
                i_wins = key[i] >= key[j]
                wins[i] += i_wins
                wins[j] += ~i_wins
        return (wins >= m - n).t().reshape(w.shape)
    magnitude = (groups.to(torch.int64) & abs_mask).clamp_max_(inf_bits)
    key = (magnitude << 5) | (31 - torch.arange(m, device=w.device))
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=w.device)
    mask.scatter_(1, key.topk(n, dim=-1, sorted=False).indices, True)
    return mask.view(w.shape)


def check_nm_mask_args(w: object, n: object, m: object) -> None:
    check_tensor(w, "w")
    n, m = check_nm(n, m)
    check_groups(w, "w", m)  # type: ignore[arg-type]


register("nm_mask", "reference")(nm_mask_ref)


@register("nm_mask", "triton")
def _nm_mask_triton(*args):
    from step.kernels.nm_mask import nm_mask_triton  # Triton loads at the first call

    return nm_mask_triton(*args)


@torch.library.custom_op("step::nm_mask", mutates_args=())
def _nm_mask_op(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    check_nm_mask_args(w, n, m)
    w = w.contiguous()
    _, impl = choose("nm_mask", w.device, w, n, m)
    return impl(w, n, m)


@_nm_mask_op.register_fake
def _(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    check_nm_mask_args(w, n, m)
    return torch.empty(w.shape, dtype=torch.bool, device=w.device)


def nm_mask(w: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M mask of ``w``: True where the weight is kept.

    Args:
        w: float32/float16/bfloat16 tensor ``[..., K]``; groups of ``m`` consecutive
            elements run along the last dim, so ``K % m == 0``. Non-contiguous input is
            copied to contiguous first.
        n, m: keep ``n`` of every ``m`` (``1 <= n < m <= 32``); default 2:4.

    Returns:
        bool tensor of ``w``'s shape with exactly ``n`` True per group: the ``n`` largest
        ``|w|``, ties to the lower index, NaN counted as +inf.

    >>> step.nm_mask(torch.tensor([0.1, -3.0, 2.0, 2.0]), 2, 4)
    tensor([False,  True,  True, False])
    """
    return call_op(torch.ops.step.nm_mask, check_nm_mask_args, w, n, m)
