"""Decode: y = x @ W.T + bias for 1-16 tokens, W streamed once from the N:M format (m <= 8).

At a few tokens the time is the weight's bytes, so every weight byte is read exactly
once and, as the compiled kernels showed, the limit to watch is instructions per kept
weight (benchmarks/NOTES.md). Each program owns ``BN`` output rows for all tokens and
walks K in steps of ``BG`` groups: it loads the step's ``[BN, BG, n]`` values and
their positions, builds the dense ``[BN, BG*MP]`` step lane by lane (each thread
holding whole groups, so one compare and one select per weight), and feeds ``tl.dot``
with x's ``[16, BG*MP]`` tile (1 to 16 tokens share one 16-row tile). Where the width
divides 32 bits (m = 2, 4) each position word is loaded once and unpacked with shifts
fixed at compile time; m = 8's 3-bit positions may straddle two words.

With few rows (N / BN programs short of two per SM) the K range is split over ``SPLIT``
programs per row block: each writes its float32 partial sums, and the last of them to
finish (an atomic counter per row block, which that program resets) adds the partials
in split order, so the result does not depend on which program finished last.
Reference: ``step.ops.nm_linear.nm_linear_ref``.
"""

import torch
import triton
import triton.language as tl

from . import INTERPRET, dot_precision
from .linear_io import linear_output
from .nm_k_tile import load_kept_step, load_x_step, store_y

TOKENS = 16  # tl.dot's smallest dimension: 1 to 16 tokens share one [16, K] tile of x


@triton.jit
def _lane(vals, pos, lane: tl.constexpr):
    """[BN, BG]: each group's weight at ``lane`` (0 where no kept entry sits there)."""
    return tl.sum(tl.where(pos == lane, vals, 0.0), axis=2)


@triton.jit
def _scatter(vals, pos, MP: tl.constexpr,
             BN: tl.constexpr, BG: tl.constexpr):  # fmt: skip
    """Dense weights ``[BN, BG*MP]`` (MP <= 8) from kept ``vals`` and ``pos`` ``[BN, BG, NP]``.

    The lanes are built one by one and joined, so that each thread holds whole groups:
    one compare and select per weight, and the tile goes to shared memory in wide
    vectors. (Comparing a ``[BN, BG, NP, MP]`` broadcast instead spreads a group's lanes
    over threads, each recomputing the position: 3x the instructions.)"""
    if MP == 2:
        dense = tl.join(_lane(vals, pos, 0), _lane(vals, pos, 1))
    elif MP == 4:
        even = tl.join(_lane(vals, pos, 0), _lane(vals, pos, 2))
        odd = tl.join(_lane(vals, pos, 1), _lane(vals, pos, 3))
        dense = tl.join(even, odd)
    elif MP == 8:
        l0 = tl.join(tl.join(_lane(vals, pos, 0), _lane(vals, pos, 4)),
                     tl.join(_lane(vals, pos, 2), _lane(vals, pos, 6)))  # fmt: skip
        l1 = tl.join(tl.join(_lane(vals, pos, 1), _lane(vals, pos, 5)),
                     tl.join(_lane(vals, pos, 3), _lane(vals, pos, 7)))  # fmt: skip
        dense = tl.join(l0, l1)
    else:
        tl.static_assert(False, "decode builds groups of at most 8 lanes")
    return tl.reshape(dense, (BN, BG * MP))


@triton.jit
def _nm_linear_decode_kernel(
    x, values, words, bias, y, partial, arrivals, n_tokens, n_out, n_groups, groups_per_split,
    stride_x, stride_y, words_per_row,
    N: tl.constexpr, M: tl.constexpr, NP: tl.constexpr, MP: tl.constexpr, BITS: tl.constexpr,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BT: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    split = tl.program_id(1)
    rn = block.to(tl.int64) * BN + tl.arange(0, BN)
    rt = tl.arange(0, BT)
    n_ok = rn < n_out
    t_ok = rt < n_tokens
    kept_per_row = n_groups * N
    g_begin = split * groups_per_split
    g_end = tl.minimum(g_begin + groups_per_split, n_groups)
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for g0 in range(g_begin, g_end, BG):
        g = g0 + tl.arange(0, BG)
        g_ok = g < g_end
        xt = load_x_step(x, rt, t_ok, stride_x, g, g_ok, M, MP, UPCAST)  # [BT, BG, MP]
        vals, pos = load_kept_step(values, words, rn, n_ok, kept_per_row, words_per_row,
                                   g0, g, g_ok, N, NP, BITS, BN, BG, UPCAST)  # fmt: skip
        w_step = _scatter(vals, pos, MP, BN, BG).to(xt.dtype)
        acc += tl.dot(tl.reshape(xt, (BT, BG * MP)), tl.trans(w_step), input_precision=PRECISION)
    out_ok = t_ok[:, None] & n_ok[None, :]
    if SPLIT == 1:
        store_y(acc, y, bias, rn, rt, n_ok, out_ok, stride_y, HAS_BIAS)
    else:
        mine = partial + (split * BT + rt[:, None]) * n_out + rn[None, :]
        tl.store(mine, acc, mask=out_ok)
        tl.debug_barrier()  # every thread's partial is written before the release below
        # release our partial, acquire the others': the last to arrive sums them all
        arrived = tl.atomic_add(arrivals + block, 1, sem="acq_rel")
        if arrived == SPLIT - 1:
            total = tl.zeros((BT, BN), dtype=tl.float32)
            for s in range(SPLIT):  # in split order, whoever arrived last
                theirs = partial + (s * BT + rt[:, None]) * n_out + rn[None, :]
                total += tl.load(theirs, mask=out_ok, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(arrivals + block, 0)  # ready for the next launch on this stream
            store_y(total, y, bias, rn, rt, n_ok, out_ok, stride_y, HAS_BIAS)


# one arrival counter per row block, per (device, stream): launches on one stream run in
# order, and every launch leaves its counters at zero. Buffers outgrown stay referenced,
# since a captured CUDA graph may still point at them.
_arrival_buffers: dict[tuple, list[torch.Tensor]] = {}


def _arrival_counters(device: torch.device, count: int) -> torch.Tensor:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    buffers = _arrival_buffers.setdefault((str(device), stream), [])
    if not buffers or buffers[-1].numel() < count:
        buffers.append(torch.zeros(max(count, 1024), dtype=torch.int32, device=device))
    return buffers[-1]


def nm_linear_decode_tiles(
    n_out: int, n_groups: int, n: int, m: int, dtype: torch.dtype, sm_count: int
) -> tuple[int, int, int, int]:
    """(BN, BG, SPLIT, warps) for decode (m <= 8): output rows, groups per K step, K
    splits, warps.

    64 rows and K steps of 256 dense columns for n = 1, 128 for n > 1 (as few
    instructions per kept weight, without spilling), halved for float32 (shared memory),
    chosen from the compiled kernels (benchmarks/NOTES.md). The K range is then split
    until the grid gives every SM two programs, each keeping at least two K steps.
    """
    columns = (256 if n == 1 else 128) // (2 if dtype == torch.float32 else 1)
    bg = max(1, columns // triton.next_power_of_2(m))
    blocks = triton.cdiv(n_out, 64)
    split = 1
    while blocks * split < 2 * sm_count and n_groups // (2 * split * bg) >= 2:
        split *= 2
    return 64, bg, split, 4


def nm_linear_decode_triton(
    x: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    n: int,
    m: int,
    bias: torch.Tensor | None,
    tiles: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """x [T, K] with T <= 16, unit stride along K; values [N, K*n/m] of x.dtype; positions
    int32 [N, words] (bit-packed, ``nm_positions.py``); bias [N] or None ->
    y [T, N] of x.dtype. ``tiles`` overrides ``nm_linear_decode_tiles``."""
    from .linear_io import _sm_count
    from .nm_positions import position_bits

    n_tokens, k_in = x.shape
    n_out = values.shape[0]
    y, done = linear_output(x, n_out, bias)
    if done:
        return y
    n_groups = k_in // m
    bn, bg, split, warps = tiles or nm_linear_decode_tiles(
        n_out, n_groups, n, m, x.dtype, _sm_count(x.device)
    )
    blocks = triton.cdiv(n_out, bn)
    groups_per_split = triton.cdiv(triton.cdiv(n_groups, split), bg) * bg
    split = triton.cdiv(n_groups, groups_per_split)
    partial = arrivals = y  # unused with one split
    if split > 1:
        partial = torch.empty((split, TOKENS, n_out), dtype=torch.float32, device=x.device)
        arrivals = _arrival_counters(x.device, blocks)
    _nm_linear_decode_kernel[(blocks, split)](
        x, values, positions, bias if bias is not None else values, y, partial, arrivals,
        n_tokens, n_out, n_groups, groups_per_split, x.stride(0), y.stride(0),
        positions.shape[1],
        N=n, M=m, NP=triton.next_power_of_2(n), MP=triton.next_power_of_2(m),
        BITS=position_bits(m), HAS_BIAS=bias is not None,
        UPCAST=INTERPRET and x.dtype == torch.bfloat16, PRECISION=dot_precision(x.dtype),
        BT=TOKENS, BN=bn, BG=bg, SPLIT=split, num_warps=warps,
    )  # fmt: skip
    return y
