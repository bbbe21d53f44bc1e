"""N:M mask: keep the n largest |w| of every group of m along the last dim.

Reference: ``step.ops.nm_mask.nm_mask_ref``.
"""

import torch
import triton
import triton.language as tl

from .float_bits import bits_view
from .nm_select import group_launch, keep_top_n, magnitude_key


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
    launch = group_launch(w, m)
    if launch is not None:
        grid, layout = launch
        _nm_mask_kernel[grid](bits_view(w), out, N=n, **layout)
    return out.view(torch.bool)
