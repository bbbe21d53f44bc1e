"""S-STE's soft threshold: in every group of m along the last dim, the n largest |w| shrunk
by the largest pruned magnitude, the rest +0.0; and the N:M mask.

Reference: ``step.ops.nm_soft_threshold.nm_soft_threshold_ref``. The mask is ranked like
``nm_mask``'s (``nm_select.py``, on the bit patterns: bit-identical); the threshold is the
largest pruned key, read back as a float; the one subtraction runs in float32 on exactly
widened values and is rounded back to nearest even with integer operations (the Triton
interpreter truncates on ``.to(tl.bfloat16)``), then the sign bit of ``w`` is copied.
"""

import torch
import triton
import triton.language as tl

from .float_bits import DTYPE_CODES, bits_view
from .float_jit import narrow, widen
from .nm_select import group_launch, keep_top_n, magnitude_key


@triton.jit
def _nm_soft_threshold_kernel(
    w_bits, soft_out, mask_out, n_groups,
    N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BG: tl.constexpr,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, KIND: tl.constexpr,
):  # fmt: skip
    groups = tl.program_id(0).to(tl.int64) * BG + tl.arange(0, BG)
    lane = tl.arange(0, MP)
    offs = groups[:, None] * M + lane[None, :]
    valid = (groups[:, None] < n_groups) & (lane[None, :] < M)
    bits = tl.load(w_bits + offs, mask=valid, other=0)
    key = magnitude_key(bits, valid, ABS_MASK, INF_BITS)
    kept = keep_top_n(key, N, MP)
    # the threshold: the largest key of the pruned (padding lanes have key -1)
    t_key = tl.max(tl.where(kept, -1, key), axis=1)
    t = widen(t_key.to(bits.dtype), KIND)
    magnitude = (bits & ABS_MASK).to(bits.dtype)
    shrunk = narrow(widen(magnitude, KIND) - t[:, None], KIND)
    sign = bits ^ magnitude
    signed = ((shrunk & ABS_MASK).to(bits.dtype) | sign).to(bits.dtype)
    out = tl.where(kept, signed, tl.zeros_like(signed))
    tl.store(soft_out + offs, out, mask=valid)
    tl.store(mask_out + offs, kept.to(tl.int8), mask=valid)


def nm_soft_threshold_triton(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` contiguous [..., K] fp32/fp16/bf16, K % m == 0 -> ``(soft, mask)``: soft of
    ``w``'s dtype, mask bool, both of ``w``'s shape."""
    soft = torch.empty_like(w, memory_format=torch.contiguous_format)
    mask = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    launch = group_launch(w, m)
    if launch is not None:
        grid, layout = launch
        _nm_soft_threshold_kernel[grid](bits_view(w), bits_view(soft), mask, N=n, **layout,
                                        KIND=DTYPE_CODES[w.dtype])  # fmt: skip
    return soft, mask.view(torch.bool)
