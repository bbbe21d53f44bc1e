"""N:M mask: keep the n largest |w| of every group of m along the last dim.

Reference: ``step.ops.nm_mask.nm_mask_ref``.
"""

import torch
import triton
import triton.language as tl

from .float_bits import bits_view, magnitude_constants
from .nm_select import group_block, keep_top_n, magnitude_key


@triton.jit
def _nm_mask_kernel(
    w_bits, mask_out, n_groups,
    N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BG: tl.constexpr,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr,
):  # fmt: skip
    groups = tl.program_id(0).to(tl.int64) * BG + tl.arange(0, BG)
    lane = tl.arange(0, MP)
    offs = groups[:, None] * M + lane[None, :]
    valid = (groups[:, None] < n_groups) & (lane[None, :] < M)
    bits = tl.load(w_bits + offs, mask=valid, other=0)
    kept = keep_top_n(magnitude_key(bits, valid, ABS_MASK, INF_BITS), N, MP)
    tl.store(mask_out + offs, kept.to(tl.int8), mask=valid)


def nm_mask_triton(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``w`` contiguous [..., K] fp32/fp16/bf16, K % m == 0 -> bool mask of ``w``'s shape."""
    out = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    n_groups = w.numel() // m
    if n_groups:
        mp = triton.next_power_of_2(m)
        bg = group_block(mp)
        abs_mask, inf_bits = magnitude_constants(w.dtype)
        _nm_mask_kernel[(triton.cdiv(n_groups, bg),)](
            bits_view(w), out, n_groups,
            N=n, M=m, MP=mp, BG=bg, ABS_MASK=abs_mask, INF_BITS=inf_bits,
        )  # fmt: skip
    return out.view(torch.bool)
