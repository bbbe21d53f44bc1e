"""In-register N:M selection shared by the mask, compress and 2:4 pack kernels.

The kernels work on the *bit patterns* of the weights (int16 for fp16/bf16, int32 for
fp32), which makes them dtype-agnostic, exact (values are moved, never computed) and
immune to the Triton interpreter's bf16 arithmetic bugs. For IEEE floats, clearing the
sign bit gives an integer whose order is the order of ``|w|``; clamping it at the bit
pattern of +inf makes NaN tie with inf, exactly like the reference's ``nan -> inf`` rule.
"""

import triton
import triton.language as tl


def group_block(mp: int, budget: int = 4096) -> int:
    """Groups per program so that the ``[groups, mp, mp]`` rank comparison stays small."""
    return max(1, triton.next_power_of_2(max(1, budget // (mp * mp))))


@triton.jit
def magnitude_key(bits, valid, ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr):
    """int32 key ordered like |w| (NaN == inf); -1 on padding lanes so they never win."""
    key = tl.minimum(bits.to(tl.int32) & ABS_MASK, INF_BITS)
    return tl.where(valid, key, -1)


@triton.jit
def keep_top_n(key, N: tl.constexpr, MP: tl.constexpr):
    """``key`` [G, MP] -> bool [G, MP]: the N largest keys of each row, ties to the lower index.

    Element i is kept when fewer than N elements j beat it, where j beats i if
    key_j > key_i, or key_j == key_i and j < i. This is a total order, so exactly N
    elements of each group are kept, whatever the ties. The comparisons run one j at a
    time: a ``[G, MP, MP]`` tensor of them would not fit in registers inside a matmul.
    """
    lane = tl.arange(0, MP)[None, :]
    rank = tl.zeros(key.shape, dtype=tl.int32)
    for j in tl.static_range(MP):
        k_j = tl.sum(tl.where(lane == j, key, 0), axis=1)[:, None]  # [G, 1]: key j of each row
        rank += ((k_j > key) | ((k_j == key) & (lane > j))).to(tl.int32)
    return rank < N


@triton.jit
def kept_slot(kept, MP: tl.constexpr):
    """``kept`` [G, MP] bool -> int32 [G, MP]: how many kept elements precede each one
    (its position in the compressed group, so indices come out ascending)."""
    count = kept.to(tl.int32)
    return tl.cumsum(count, axis=1) - count
