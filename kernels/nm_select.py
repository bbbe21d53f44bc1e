"""In-register N:M selection shared by the mask, compress and 2:4 pack kernels.

The kernels work on the *bit patterns* of the weights (int16 for fp16/bf16, int32 for
fp32), which makes them dtype-agnostic, exact (values are moved, never computed) and
immune to the Triton interpreter's bf16 arithmetic bugs. For IEEE floats, clearing the
sign bit gives an integer whose order is the order of ``|w|``; clamping it at the bit
pattern of +inf makes NaN tie with inf, exactly like the reference's ``nan -> inf`` rule.
"""

import torch
import triton
import triton.language as tl

from .float_bits import magnitude_constants


def group_block(mp: int, budget: int = 2048) -> int:
    """Groups per program: ``budget`` elements of ``[groups, mp]`` per program of 4 warps
    (``mp``: elements per group, a power of two)."""
    return max(1, budget // mp)


def group_launch(w: torch.Tensor, m: int) -> tuple[tuple[int], dict] | None:
    """The grid and layout constants of a kernel ranking the groups of ``m`` along the
    last dim of ``w`` (``M``, ``MP``, ``BG``, ``ABS_MASK``, ``INF_BITS``, and the group
    count as ``n_groups``), or None for an empty ``w``."""
    n_groups = w.numel() // m
    if not n_groups:
        return None
    mp = triton.next_power_of_2(m)
    bg = group_block(mp)
    abs_mask, inf_bits = magnitude_constants(w.dtype)
    layout = dict(M=m, MP=mp, BG=bg, ABS_MASK=abs_mask, INF_BITS=inf_bits)
    return (triton.cdiv(n_groups, bg),), {"n_groups": n_groups, **layout}


@triton.jit
def magnitude_key(bits, valid, ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr):
    """Integer key ordered like |w| (NaN == inf); -1 on padding lanes so they never win.

    int32 for 16-bit floats, int64 for float32, so that ``keep_top_n`` can append the
    lane index to every key without overflow.
    """
    if INF_BITS > 0xFFFF:
        key = tl.minimum(bits.to(tl.int64) & ABS_MASK, INF_BITS)
    else:
        key = tl.minimum(bits.to(tl.int32) & ABS_MASK, INF_BITS)
    return tl.where(valid, key, -1)


@triton.jit
def keep_top_n(key, N: tl.constexpr, MP: tl.constexpr):
    """``key`` [G, MP] -> bool [G, MP]: the N largest keys of each row, ties to the lower index.

    Appending the reversed lane index makes the scores of a row distinct and orders
    equal keys lower lane first, so exactly N elements are kept whatever the ties (the
    ``step.nm_mask`` rule). The N-th largest score is the threshold, found by taking the
    row maximum out N - 1 times (or, when N > MP / 2, the largest dropped score, taking
    the row minimum out MP - N - 1 times): a few row reductions, no ``[G, MP, MP]`` comparison
    tensor (which would not fit in registers inside a matmul).
    """
    lane = tl.arange(0, MP)[None, :]
    score = key * MP + (MP - 1 - lane)  # padding lanes (key -1) score below every real one
    rest = score
    if 2 * N <= MP:
        for _ in tl.static_range(N - 1):
            rest = tl.where(rest == tl.max(rest, axis=1)[:, None], -2 * MP, rest)
        kept = score >= tl.max(rest, axis=1)[:, None]
    else:
        top = tl.max(score, axis=1)[:, None]  # taken-out minima become the (unique) maximum
        for _ in tl.static_range(MP - N - 1):
            rest = tl.where(rest == tl.min(rest, axis=1)[:, None], top, rest)
        kept = score > tl.min(rest, axis=1)[:, None]
    return kept


@triton.jit
def kept_slot(kept, MP: tl.constexpr):
    """``kept`` [G, MP] bool -> int32 [G, MP]: how many kept elements precede each one
    (its position in the compressed group, so indices come out ascending)."""
    count = kept.to(tl.int32)
    return tl.cumsum(count, axis=1) - count
