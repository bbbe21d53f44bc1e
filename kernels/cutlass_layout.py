"""Where CUTLASS keeps each 2:4 metadata word (Triton side).

The metadata of a 2:4 fp16/bf16 weight [rows, K] is logically an int16 matrix
[rows, K/16]: word (r, c) packs the 4-bit codes ``i0 | i1 << 2`` of the four groups of
columns 16c..16c+15, group q in bits 4q..4q+3. CUTLASS sparse GEMMs (and PyTorch's
``SparseSemiStructuredTensorCUTLASS``) store it reordered: rows permuted within blocks
of 32, 2x2 blocks of words transposed, then ColumnMajorInterleaved<2>. The reference
``step.ops.sparse24.cutlass_meta_offsets_ref`` computes the same offsets in PyTorch.
"""

import triton
import triton.language as tl  # noqa: F401  (the interpreter needs tl in a jit function's globals)


@triton.jit
def cutlass_meta_offset(row, col, n_rows):
    """Offset, in elements of the reordered meta buffer, of logical word (row, col)."""
    dst_row = row // 32 * 32 + (row % 8) * 4 + (row % 32) // 8
    top_right = ((dst_row % 2 == 0) & (col % 2 == 1)).to(row.dtype)
    bottom_left = ((dst_row % 2 == 1) & (col % 2 == 0)).to(row.dtype)
    dst_row = dst_row + top_right - bottom_left
    dst_col = col - top_right + bottom_left
    return (dst_col // 2) * n_rows * 2 + dst_row * 2 + dst_col % 2
