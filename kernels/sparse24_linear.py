"""y = x @ W.T + bias with W read straight from the 2:4 compressed format.

Decode-style: each program streams a [BN, BK] slice of W as compressed values plus
metadata, expands it to dense in registers and feeds ``tl.dot``. It suits few tokens,
where the bytes of W dominate; the tensor-core ``mma.sp`` GEMM is the CUDA backend's job.
Reference: ``step.ops.sparse24_linear.sparse24_linear_ref``.
"""

import torch
import triton
import triton.language as tl

from . import INTERPRET
from .cutlass_layout import cutlass_meta_offset
from .linear_io import as_rows, linear_output, output_rows, token_tile


@triton.jit
def _sparse24_linear_kernel(
    x, values, meta, bias, y, n_tokens, n_out, k_in, stride_x, stride_y,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rn = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN)
    m_ok = rm < n_tokens
    n_ok = rn < n_out
    pos = tl.arange(0, 4)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, k_in, BK):  # k_in % BK == 0 (K is a multiple of 64)
        rk = k0 + tl.arange(0, BK)
        xt = tl.load(x + rm[:, None] * stride_x + rk[None, :], mask=m_ok[:, None], other=0.0)
        group = k0 // 4 + tl.arange(0, BK // 4)  # [BK/4] groups of 4 along K
        v_off = rn[None, :] * (k_in // 2) + group[:, None] * 2
        v0 = tl.load(values + v_off, mask=n_ok[None, :], other=0.0)
        v1 = tl.load(values + v_off + 1, mask=n_ok[None, :], other=0.0)
        m_off = cutlass_meta_offset(rn[None, :], (group // 4)[:, None], n_out)
        word = tl.load(meta + m_off, mask=n_ok[None, :], other=0).to(tl.int32) & 0xFFFF
        code = (word >> (4 * (group % 4))[:, None]) & 0xF  # [BK/4, BN]
        first = (code & 3)[:, None, :]
        second = (code >> 2)[:, None, :]
        p = pos[None, :, None]
        if UPCAST:  # the Triton interpreter gets bf16 dot products wrong
            xt = xt.to(tl.float32)
            v0 = v0.to(tl.float32)
            v1 = v1.to(tl.float32)
        w3 = tl.where(p == first, v0[:, None, :], tl.where(p == second, v1[:, None, :], 0.0))
        acc += tl.dot(xt, tl.reshape(w3, (BK, BN)))
    if HAS_BIAS:
        acc += tl.load(bias + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y + rm[:, None] * stride_y + rn[None, :]
    tl.store(out, acc.to(y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _tiles(
    n_tokens: int, k_in: int, dtype: torch.dtype, n_out: int, device: torch.device
) -> tuple[int, int, int, int]:
    """(BM, BN, BK, warps); BK must divide K, which is a multiple of 64."""
    bm, warps = token_tile(n_tokens, dtype)
    bk = 128 if bm == 16 and k_in % 128 == 0 else 64  # decode: long K strips
    return bm, output_rows(bm, n_out, device, decode_largest=32), bk, warps


def sparse24_linear_triton(
    x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [..., K] fp16/bf16; values [N, K/2]; meta [N, K/16] int16 (CUTLASS order);
    bias [N] or None -> y [..., N] of x.dtype."""
    k_in = x.shape[-1]
    n_out = values.shape[0]
    x2 = as_rows(x)
    n_tokens = x2.shape[0]
    y, done = linear_output(x2, n_out, bias)
    if not done:
        bm, bn, bk, warps = _tiles(n_tokens, k_in, x.dtype, n_out, x.device)
        grid = (triton.cdiv(n_tokens, bm), triton.cdiv(n_out, bn))
        _sparse24_linear_kernel[grid](
            x2, values, meta, bias if bias is not None else values, y,
            n_tokens, n_out, k_in, x2.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, UPCAST=INTERPRET and x.dtype == torch.bfloat16,
            BM=bm, BN=bn, BK=bk, num_warps=warps,
        )  # fmt: skip
    return y.reshape(*x.shape[:-1], n_out)
