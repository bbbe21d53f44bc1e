"""The fused masked matmul of the mask-learning phase, forward and input gradient.

Forward: ``y = x @ (w * mask).T + bias``. Each program owns a ``[BM, BN]`` tile of y and
walks K in chunks of ``BG`` groups of ``m``: it loads the weight chunk (as bit patterns;
MP = next power of two >= m, lanes past m masked off), ranks every group's magnitudes in
registers (``nm_select.keep_top_n``: the ``step.nm_mask`` rule, bit-exact), zeroes the
losers and feeds ``tl.dot``; no masked copy of w is ever written.
The programs of the first token block also store the mask (int8, read as bool) for the
backward pass; with a given mask the kernel loads it instead of ranking. With more than
one block of tokens the launcher ranks once, with ``nm_mask``'s kernel (one pass over w
writing the mask the backward pass needs anyway), and the matmul loads that mask: each
block of tokens would otherwise rank the same weight tiles again, and ranking costs
several times the tensor-core work of a 64-token tile.

Input gradient: ``dx = dy @ (w * mask)`` with the saved mask, again masked in registers.
(The STE weight gradient ``dw = dy.T @ x`` is a plain dense GEMM, left to cuBLAS.)
References: ``step.ops.masked_linear.masked_linear_ref`` and ``masked_linear_dx_ref``.

Tile layout: for tensor cores the x, weight and mask chunks are loaded flat,
``[rows, BG * MP]`` (``group_columns``: column ``j`` is lane ``j % MP`` of group
``j // MP``), and reach ``tl.dot`` without a reshape; only the ranking views the weight
as ``[BN * BG, MP]``. Triton 3.6.0 cannot compile a ``[rows, BG, MP]`` tile reshaped into
a wgmma operand when MP is 2 or 4 (its OptimizeDotOperands pass moves the reshape into
shared memory with a swizzled layout wider than the tile's last dimension, then rejects
it). float32 dot products on the FMA units (IEEE) keep ``[rows, BG, MP]`` chunks, which
there give the fewest registers. The input-gradient kernel works on flat tiles only.
"""

import torch
import triton
import triton.language as tl

from . import INTERPRET, dot_precision
from .float_bits import bits_view, magnitude_constants
from .linear_io import as_rows, linear_output, output_rows, token_tile
from .nm_k_tile import store_y
from .nm_mask import nm_mask_triton
from .nm_select import keep_top_n, magnitude_key


@triton.jit
def group_columns(g0, n_groups, M: tl.constexpr, MP: tl.constexpr, BG: tl.constexpr):
    """``(col, ok)``, ``[BG * MP]`` each: the columns of groups ``g0 .. g0 + BG - 1`` laid
    out flat, entry ``j`` being lane ``j % MP`` of group ``g0 + j // MP`` (the order of a
    ``[BG, MP]`` chunk), and whether that column exists."""
    j = tl.arange(0, BG * MP)
    if M == MP:  # no padding lanes: one contiguous run of columns
        col = g0 * M + j
        ok = col < n_groups * M
    else:
        group = g0 + j // MP
        lane = j % MP
        col = group * M + lane
        ok = (group < n_groups) & (lane < M)
    return col, ok


@triton.jit
def _masked_linear_kernel(
    x, w_bits, mask, bias, y, n_tokens, n_out, n_groups, stride_x, stride_y,
    N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, GIVEN: tl.constexpr,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rn = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN)
    m_ok = rm < n_tokens
    n_ok = rn < n_out
    lane = tl.arange(0, MP)
    k_in = n_groups * M
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for g0 in range(0, n_groups, BG):
        if PRECISION == "ieee":  # float32 on the FMA units: [rows, BG, MP] chunks
            g = g0 + tl.arange(0, BG)
            col = g[None, :, None] * M + lane[None, None, :]  # [1, BG, MP]
            col_ok = (g < n_groups)[None, :, None] & (lane < M)[None, None, :]
            xt = tl.load(x + rm[:, None, None] * stride_x + col,
                         mask=m_ok[:, None, None] & col_ok, other=0.0)  # fmt: skip
            w_off = rn[:, None, None] * k_in + col
            w_ok = n_ok[:, None, None] & col_ok
        else:  # tensor cores: flat [rows, BG * MP] chunks, fed to tl.dot as loaded
            col, col_ok = group_columns(g0, n_groups, M, MP, BG)
            xt = tl.load(x + rm[:, None] * stride_x + col[None, :],
                         mask=m_ok[:, None] & col_ok[None, :], other=0.0)  # fmt: skip
            w_off = rn[:, None] * k_in + col[None, :]
            w_ok = n_ok[:, None] & col_ok[None, :]
        bits = tl.load(w_bits + w_off, mask=w_ok, other=0)
        if GIVEN:
            kept = tl.load(mask + w_off, mask=w_ok, other=0) != 0
        else:  # ranked as [BN * BG, MP], a row per group
            key = tl.reshape(magnitude_key(bits, w_ok, ABS_MASK, INF_BITS), (BN * BG, MP))
            kept = tl.reshape(keep_top_n(key, N, MP), bits.shape) & w_ok
            if pid_m == 0:
                tl.store(mask + w_off, kept.to(tl.int8), mask=w_ok)
        wt = tl.where(kept, bits, 0).to(x.dtype.element_ty, bitcast=True)
        if UPCAST:  # the Triton interpreter gets bf16 dot products wrong
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        if PRECISION == "ieee":
            xt = tl.reshape(xt, (BM, BG * MP))
            wt = tl.reshape(wt, (BN, BG * MP))
        acc += tl.dot(xt, tl.trans(wt), input_precision=PRECISION)
    store_y(acc, y, bias, rn, rm, n_ok, m_ok[:, None] & n_ok[None, :], stride_y, HAS_BIAS)


@triton.jit
def _masked_linear_dx_kernel(
    dy, w, mask, dx, n_tokens, n_out, n_groups, stride_dy, stride_dx,
    M: tl.constexpr, MP: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    m_ok = rm < n_tokens
    col, col_ok = group_columns(tl.program_id(1) * BG, n_groups, M, MP, BG)  # [BG * MP]
    k_in = n_groups * M
    rows = tl.arange(0, BN)
    # [BN, BG * MP] tiles, flat (no reshape before tl.dot); the pointers advance BN rows a
    # step (fewer registers than recomputing the offsets), by an int64 stride
    w_ptr = w + rows[:, None] * k_in + col[None, :]
    m_ptr = mask + rows[:, None] * k_in + col[None, :]
    step = BN * tl.cast(k_in, tl.int64)
    acc = tl.zeros((BM, BG * MP), dtype=tl.float32)
    for n0 in range(0, n_out, BN):
        rn = n0 + rows
        n_ok = rn < n_out
        g_tile = tl.load(dy + rm[:, None] * stride_dy + rn[None, :],
                         mask=m_ok[:, None] & n_ok[None, :], other=0.0)  # fmt: skip
        w_ok = n_ok[:, None] & col_ok[None, :]
        kept = tl.load(m_ptr, mask=w_ok, other=0) != 0
        wt = tl.where(kept, tl.load(w_ptr, mask=w_ok, other=0.0), 0.0)
        if UPCAST:
            g_tile = g_tile.to(tl.float32)
        acc += tl.dot(g_tile, wt.to(g_tile.dtype), input_precision=PRECISION)
        w_ptr += step
        m_ptr += step
    out = dx + rm[:, None] * stride_dx + col[None, :]
    tl.store(out, acc.to(dx.dtype.element_ty), mask=m_ok[:, None] & col_ok[None, :])


def masked_linear_tiles(
    n_tokens: int, m: int, dtype: torch.dtype, n_out: int, device: torch.device
) -> tuple[int, int, int, int]:
    """(BM, BN, BG, warps) of the forward kernel: token tile, output-row tile, groups per
    K step (BG * MP columns: 64 for m <= 64, at least the 16 ``tl.dot`` needs), warps."""
    bm, warps = token_tile(n_tokens, dtype)
    return bm, output_rows(bm, n_out, device), groups_per_step(m), warps


def groups_per_step(m: int) -> int:
    """Groups of ``m`` per K step: 64 columns (the group, if m > 64; at least 16 columns)."""
    return max(1, 64 // triton.next_power_of_2(m))


def masked_linear_triton(
    x: torch.Tensor,
    w: torch.Tensor,
    n: int,
    m: int,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K]; w [N, K] contiguous, K % m == 0; bias [N] or None; mask [N, K] bool or
    None (computed in the kernel) -> (y [..., N] of x.dtype, mask [N, K] bool)."""
    k_in, n_out = w.shape[1], w.shape[0]
    x2 = as_rows(x)
    n_tokens = x2.shape[0]
    y, _ = linear_output(x2, n_out, bias)  # final if K == 0; the kernel writes it otherwise
    bm, bn, bg, warps = masked_linear_tiles(n_tokens, m, x.dtype, n_out, x.device)
    if mask is None and n_out and k_in and n_tokens > bm:
        # every block of tokens would rank the same weight tiles again: rank them once
        mask = nm_mask_triton(w.contiguous(), n, m)
    given = mask is not None
    # without a given mask, the first row of programs writes every element of this one
    if given:
        mask_i8 = mask.contiguous().view(torch.int8)
    else:
        mask_i8 = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    if n_out and k_in:
        # with no tokens one row of programs still runs, to compute the mask
        grid = (max(1, triton.cdiv(n_tokens, bm)), triton.cdiv(n_out, bn))
        abs_mask, inf_bits = magnitude_constants(w.dtype)
        _masked_linear_kernel[grid](
            x2, bits_view(w.contiguous()), mask_i8, bias if bias is not None else w, y,
            n_tokens, n_out, k_in // m, x2.stride(0), y.stride(0),
            N=n, M=m, MP=triton.next_power_of_2(m), GIVEN=given,
            ABS_MASK=abs_mask, INF_BITS=inf_bits, HAS_BIAS=bias is not None,
            UPCAST=INTERPRET and x.dtype == torch.bfloat16,
            PRECISION=dot_precision(x.dtype), BM=bm, BN=bn, BG=bg, num_warps=warps,
        )  # fmt: skip
    return y.reshape(*x.shape[:-1], n_out), mask_i8.view(torch.bool)


def masked_linear_dx_triton(
    grad_y: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, m: int
) -> torch.Tensor:
    """grad_y [..., N]; w [N, K]; mask [N, K] bool -> grad_x [..., K] = grad_y @ (w*mask)."""
    n_out, k_in = w.shape
    dy = as_rows(grad_y)
    n_tokens = dy.shape[0]
    dx = torch.empty((n_tokens, k_in), dtype=grad_y.dtype, device=grad_y.device)
    if n_tokens and k_in and n_out:
        bm, warps = token_tile(n_tokens, grad_y.dtype)
        bg = groups_per_step(m)
        bn = 32 if grad_y.dtype == torch.float32 else 64  # an FMA dot over 64 rows spills
        grid = (triton.cdiv(n_tokens, bm), triton.cdiv(k_in // m, bg))
        _masked_linear_dx_kernel[grid](
            dy, w.contiguous(), mask.contiguous().view(torch.int8), dx, n_tokens, n_out,
            k_in // m, dy.stride(0), dx.stride(0), M=m, MP=triton.next_power_of_2(m),
            UPCAST=INTERPRET and grad_y.dtype == torch.bfloat16,
            PRECISION=dot_precision(grad_y.dtype), BM=bm, BN=bn, BG=bg, num_warps=warps,
        )  # fmt: skip
    elif n_tokens:
        dx.zero_()
    return dx.reshape(*grad_y.shape[:-1], k_in)
