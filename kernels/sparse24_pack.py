"""2:4 mask-and-pack into the CUTLASS format, and its inverse.

``to_sparse24``: one pass reads the dense fp16/bf16 weight, picks the 2 largest |w| of
every group of 4 (the ``nm_mask`` rule), writes the kept values [rows, K/2] and the
reordered int16 metadata [rows, K/16]. References: ``step.ops.sparse24``.
"""

import torch
import triton
import triton.language as tl

from .cutlass_layout import cutlass_meta_offset
from .float_bits import bits_view, magnitude_constants
from .nm_select import keep_top_n, kept_slot, magnitude_key

WORDS_PER_PROGRAM = 128  # 128 words = 512 groups = 2048 weights per program


@triton.jit
def _to_sparse24_kernel(
    w_bits, values_out, meta_out, n_words, n_rows, words_per_row,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    groups = pid * BW * 4 + tl.arange(0, BW * 4)  # each meta word covers 4 groups of 4
    lane = tl.arange(0, 4)
    valid = (groups < n_words * 4)[:, None] & (lane[None, :] < 4)
    bits = tl.load(w_bits + groups[:, None] * 4 + lane[None, :], mask=valid, other=0)
    kept = keep_top_n(magnitude_key(bits, valid, ABS_MASK, INF_BITS), 2, 4)
    slot = kept_slot(kept, 4)
    tl.store(values_out + groups[:, None] * 2 + slot, bits, mask=valid & kept)

    # code of a group: i0 | i1 << 2 == sum over kept lanes of lane << (2 * slot)
    code = tl.sum(tl.where(kept, lane[None, :] << (2 * slot), 0), axis=1)
    code = tl.reshape(code, (BW, 4))
    word = tl.sum(code << (4 * lane)[None, :], axis=1)
    words = pid * BW + tl.arange(0, BW)
    dst = cutlass_meta_offset(words // words_per_row, words % words_per_row, n_rows)
    tl.store(meta_out + dst, word.to(tl.int16), mask=words < n_words)


@triton.jit
def _from_sparse24_kernel(
    values_bits, meta, dense_out, n_words, n_rows, words_per_row, BW: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    words = pid * BW + tl.arange(0, BW)
    lane = tl.arange(0, 4)
    src = cutlass_meta_offset(words // words_per_row, words % words_per_row, n_rows)
    word = tl.load(meta + src, mask=words < n_words, other=0).to(tl.int32) & 0xFFFF
    code = tl.reshape((word[:, None] >> (4 * lane)[None, :]) & 0xF, (BW * 4,))
    first = (code & 3)[:, None]
    second = (code >> 2)[:, None]

    groups = pid * BW * 4 + tl.arange(0, BW * 4)
    in_range = groups < n_words * 4
    v0 = tl.load(values_bits + groups * 2, mask=in_range, other=0)[:, None]
    v1 = tl.load(values_bits + groups * 2 + 1, mask=in_range, other=0)[:, None]
    pos = lane[None, :]
    out = tl.where(pos == first, v0, tl.where(pos == second, v1, 0))
    dst_valid = in_range[:, None] & (pos < 4)
    tl.store(dense_out + groups[:, None] * 4 + pos, out, mask=dst_valid)


def to_sparse24_triton(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` contiguous [rows, K] fp16/bf16 (rows % 32 == 0, K % 64 == 0)
    -> (values [rows, K/2] of w.dtype, meta [rows, K/16] int16, CUTLASS order)."""
    rows, k = w.shape
    values = torch.empty((rows, k // 2), dtype=w.dtype, device=w.device)
    meta = torch.empty((rows, k // 16), dtype=torch.int16, device=w.device)
    n_words = rows * (k // 16)
    if n_words:
        abs_mask, inf_bits = magnitude_constants(w.dtype)
        grid = (triton.cdiv(n_words, WORDS_PER_PROGRAM),)
        _to_sparse24_kernel[grid](
            bits_view(w), bits_view(values), meta, n_words, rows, k // 16,
            ABS_MASK=abs_mask, INF_BITS=inf_bits, BW=WORDS_PER_PROGRAM,
        )  # fmt: skip
    return values, meta


def from_sparse24_triton(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """(values [rows, K/2], meta [rows, K/16] int16) -> dense [rows, K], +0.0 where pruned."""
    rows, half_k = values.shape
    dense = torch.empty((rows, half_k * 2), dtype=values.dtype, device=values.device)
    n_words = meta.numel()
    if n_words:
        grid = (triton.cdiv(n_words, WORDS_PER_PROGRAM),)
        _from_sparse24_kernel[grid](
            bits_view(values), meta, bits_view(dense), n_words, rows, meta.shape[1],
            BW=WORDS_PER_PROGRAM,
        )  # fmt: skip
    return dense
