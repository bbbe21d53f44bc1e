"""y = x @ W.T + bias with W read straight from the N:M compressed format, any N:M.

W ``[N, K]`` arrives as ``values [N, G*n]`` and bit-packed positions (``b`` bits each,
``nm_positions.py``). Each program owns a ``[BM, BN]`` tile of y and walks K in
chunks of ``BG`` groups: it loads the chunk's ``[BN, BG, n]`` values and their positions
(``nm_k_tile``: whole words where possible, else the two words an entry straddles), scatters them
into a dense ``[BN, BG, MP]`` tile in registers (MP = next power of two >= m; lanes
past m are zero, as are the matching x lanes) and feeds ``tl.dot``. With at most
``BM`` tokens the grid has one row of programs, so every weight byte is read once
(weight streaming); more tokens tile y and re-read W per token block. Up to 16 tokens
with m <= 8, the decode kernel (``nm_linear_decode``) runs instead.
Reference: ``step.ops.nm_linear.nm_linear_ref``.
"""

import torch
import triton
import triton.language as tl

from . import INTERPRET, dot_precision
from .linear_io import as_rows, linear_output, output_rows, token_tile
from .nm_k_tile import load_kept_step, load_x_step, store_y
from .nm_linear_decode import TOKENS, nm_linear_decode_triton


@triton.jit
def _nm_linear_kernel(
    x, values, words, bias, y, n_tokens, n_out, n_groups, stride_x, stride_y, words_per_row,
    N: tl.constexpr, M: tl.constexpr, NP: tl.constexpr, MP: tl.constexpr, BITS: tl.constexpr,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rn = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN)
    m_ok = rm < n_tokens
    n_ok = rn < n_out
    lane = tl.arange(0, MP)
    kept_per_row = n_groups * N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for g0 in range(0, n_groups, BG):
        g = g0 + tl.arange(0, BG)
        g_ok = g < n_groups
        xt = load_x_step(x, rm, m_ok, stride_x, g, g_ok, M, MP, UPCAST)  # [BM, BG, MP]
        vals, pos = load_kept_step(values, words, rn, n_ok, kept_per_row, words_per_row,
                                   g0, g, g_ok, N, NP, BITS, BN, BG, UPCAST)  # fmt: skip
        hit = pos[:, :, :, None] == lane[None, None, None, :]  # [BN, BG, NP, MP]
        dense = tl.sum(tl.where(hit, vals[:, :, :, None], 0.0), axis=2)  # 0 where masked
        w_tile = tl.reshape(dense.to(xt.dtype), (BN, BG * MP))
        acc += tl.dot(tl.reshape(xt, (BM, BG * MP)), tl.trans(w_tile), input_precision=PRECISION)
    store_y(acc, y, bias, rn, rm, n_ok, m_ok[:, None] & n_ok[None, :], stride_y, HAS_BIAS)


def nm_linear_tiles(
    n_tokens: int, n: int, m: int, dtype: torch.dtype, n_out: int, device: torch.device
) -> tuple[int, int, int, int]:
    """(BM, BN, BG, warps): token and output-row tile, groups per K step, warps.

    K steps of 64 dense columns, 128 in decode (more weight bytes in flight per program),
    at least 16 for ``tl.dot``. The ``[BN, BG, NP, MP]`` scatter of one step is kept
    near 8K elements: fewer rows, or fewer groups, for large n and m.
    """
    mp, np_ = triton.next_power_of_2(m), triton.next_power_of_2(n)
    bm, warps = token_tile(n_tokens, dtype)
    step_columns = 128 if bm == 16 else 64
    bg = max(1, min(step_columns // mp, 8192 // (16 * np_ * mp)))
    scatter_rows = triton.next_power_of_2(8192 // (bg * np_ * mp))
    bn = max(16, min(output_rows(bm, n_out, device), scatter_rows))
    return bm, bn, bg, warps


def nm_linear_triton(
    x: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    n: int,
    m: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """x [..., K]; values [N, K*n/m] of x.dtype; positions int32 [N, words] (bit-packed,
    ``nm_positions.py``); bias [N] or None -> y [..., N] of x.dtype."""
    from .nm_positions import position_bits

    k_in = x.shape[-1]
    n_out = values.shape[0]
    x2 = as_rows(x)
    n_tokens = x2.shape[0]
    if n_tokens <= TOKENS and triton.next_power_of_2(m) <= 8:
        y = nm_linear_decode_triton(x2, values, positions, n, m, bias)
        return y.reshape(*x.shape[:-1], n_out)
    y, done = linear_output(x2, n_out, bias)
    if done:
        return y.reshape(*x.shape[:-1], n_out)
    bm, bn, bg, warps = nm_linear_tiles(n_tokens, n, m, x.dtype, n_out, x.device)
    grid = (triton.cdiv(n_tokens, bm), triton.cdiv(n_out, bn))
    _nm_linear_kernel[grid](
        x2, values, positions, bias if bias is not None else values, y,
        n_tokens, n_out, k_in // m, x2.stride(0), y.stride(0), positions.shape[1],
        N=n, M=m, NP=triton.next_power_of_2(n), MP=triton.next_power_of_2(m),
        BITS=position_bits(m), HAS_BIAS=bias is not None,
        UPCAST=INTERPRET and x.dtype == torch.bfloat16, PRECISION=dot_precision(x.dtype),
        BM=bm, BN=bn, BG=bg, num_warps=warps,
    )  # fmt: skip
    return y.reshape(*x.shape[:-1], n_out)
