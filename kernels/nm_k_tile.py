"""One tile of the K loop (a "step") of an N:M compressed weight and of x, and y's store:
the nm_linear kernels' parts.

A step covers groups ``g`` (``[BG]``) of rows ``rn`` (``[BN]``): the kept values
``[BN, BG, NP]`` (entry ``e = g*N + s`` of each row, zero where masked), their positions
(bit-packed, ``nm_positions.py``) and the matching ``[rows, BG, MP]`` chunk of x.
"""

import triton
import triton.language as tl


@triton.jit
def load_x_step(x, rows, rows_ok, stride_x, g, g_ok, M: tl.constexpr, MP: tl.constexpr,
                UPCAST: tl.constexpr):  # fmt: skip
    """x's columns ``g*M + lane`` for ``rows``: ``[rows, BG, MP]``, 0 past M and masked;
    float32 with ``UPCAST`` (the Triton interpreter gets bf16 dot products wrong)."""
    lane = tl.arange(0, MP)
    col = g[None, :, None] * M + lane[None, None, :]
    ok = rows_ok[:, None, None] & g_ok[None, :, None] & (lane < M)[None, None, :]
    xt = tl.load(x + rows[:, None, None] * stride_x + col, mask=ok, other=0.0)
    return xt.to(tl.float32) if UPCAST else xt


@triton.jit
def load_kept_step(values, words, rn, n_ok, kept_per_row, words_per_row, g0, g, g_ok,
                   N: tl.constexpr, NP: tl.constexpr, BITS: tl.constexpr,
                   BN: tl.constexpr, BG: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """``(values, positions)`` of the step's kept entries, ``[BN, BG, NP]`` each; ``g`` are
    the groups ``g0 + arange(BG)``. Masked entries are value 0 at position 0. Values in
    float32 with ``UPCAST``."""
    slot = tl.arange(0, NP)
    entry = g[None, :, None] * N + slot[None, None, :]
    e_ok = n_ok[:, None, None] & g_ok[None, :, None] & (slot < N)[None, None, :]
    vals = tl.load(values + rn[:, None, None] * kept_per_row + entry, mask=e_ok, other=0.0)
    pos = _step_positions(words, rn, n_ok, words_per_row, g0, entry, e_ok, N, NP, BITS, BN, BG)
    return (vals.to(tl.float32) if UPCAST else vals), pos


@triton.jit
def _step_positions(words, rn, n_ok, words_per_row, g0, entry, e_ok,
                    N: tl.constexpr, NP: tl.constexpr, BITS: tl.constexpr,
                    BN: tl.constexpr, BG: tl.constexpr):  # fmt: skip
    """Packed positions of ``entry [BN, BG, NP]`` (the step's kept entries from group
    ``g0`` on) of rows ``rn``, as int32."""
    if (32 % BITS == 0) and (N == NP) and ((BG * N * BITS) % 32 == 0):
        # whole words: the step starts on a word (BG*N*BITS is a multiple of 32), each
        # word is loaded once and unpacked with shifts known at compile time
        PER_WORD: tl.constexpr = 32 // BITS
        word = g0 * N // PER_WORD + tl.arange(0, BG * N // PER_WORD)
        w_ok = n_ok[:, None] & (word < words_per_row)[None, :]
        packed = tl.load(words + rn[:, None] * words_per_row + word[None, :], mask=w_ok, other=0)
        shift = tl.arange(0, PER_WORD) * BITS
        pos = (packed[:, :, None] >> shift[None, None, :]) & ((1 << BITS) - 1)
        return tl.reshape(pos, (BN, BG, NP))
    bit = entry * BITS
    w_ptr = words + rn[:, None, None] * words_per_row + bit // 32
    lo = tl.load(w_ptr, mask=e_ok, other=0).to(tl.uint32, bitcast=True)
    hi_ok = e_ok & (bit // 32 + 1 < words_per_row)
    hi = tl.load(w_ptr + 1, mask=hi_ok, other=0).to(tl.uint32, bitcast=True)
    shift = (bit % 32).to(tl.uint32)
    # 32-bit funnel shift: (hi << 1) << (31 - shift) is hi << (32 - shift), 0 for shift 0
    pos = ((lo >> shift) | ((hi << 1) << (31 - shift))) & ((1 << BITS) - 1)
    return pos.to(tl.int32, bitcast=True)


@triton.jit
def store_y(acc, y, bias, rn, rt, n_ok, out_ok, stride_y, HAS_BIAS: tl.constexpr):
    """y[t, r] = acc[t, r] + bias[r] (``acc [tokens, BN]`` float32), in y's dtype."""
    if HAS_BIAS:
        acc += tl.load(bias + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y + rt[:, None] * stride_y + rn[None, :]
    tl.store(out, acc.to(y.dtype.element_ty), mask=out_ok)
