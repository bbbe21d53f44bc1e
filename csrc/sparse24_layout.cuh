// 2:4 sparsity helpers shared by the CUDA kernels: the CUTLASS metadata layout and the
// 2-of-4 selection rule, on raw fp16/bf16 bit patterns.
//
// Metadata of a 2:4 weight [rows, K] is logically int16 [rows, K/16]: word (row, col)
// holds the 4-bit codes `i0 | i1 << 2` (i0 < i1, the kept positions) of the four groups
// of columns 16*col .. 16*col + 15, group q in bits 4q..4q+3. CUTLASS sparse GEMMs (and
// PyTorch's SparseSemiStructuredTensorCUTLASS) store the words reordered; meta_offset()
// is the same formula as step.ops.sparse24.cutlass_meta_offsets_ref. Needs rows % 32 == 0
// and an even number of words per row.
//
// Everything is __host__ __device__ so the logic can be tested on a machine without GPU.
// Plain C++17, no includes: compiles with NVRTC and nvcc alike.
#pragma once

#define STEP_HD __host__ __device__ __forceinline__

namespace step {

typedef unsigned short u16;
typedef short i16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

constexpr u32 kFp16InfBits = 0x7C00u;
constexpr u32 kBf16InfBits = 0x7F80u;

// Where logical meta word (row, col) lives in the reordered buffer of a matrix with
// n_rows rows: rows permuted within blocks of 32, the off-diagonal words of each 2x2
// block swapped, then ColumnMajorInterleaved<2>.
STEP_HD i64 meta_offset(i64 row, i64 col, i64 n_rows) {
    i64 dst_row = row / 32 * 32 + (row % 8) * 4 + (row % 32) / 8;
    const i64 swap = ((dst_row & 1) == 0 && (col & 1) == 1) ? 1
                   : ((dst_row & 1) == 1 && (col & 1) == 0) ? -1 : 0;
    dst_row += swap;
    const i64 dst_col = col - swap;
    return (dst_col / 2) * n_rows * 2 + dst_row * 2 + (dst_col & 1);
}

// Inverse of meta_offset: the logical (row, col) of the word at buffer offset `offset`.
STEP_HD void meta_logical(i64 offset, i64 n_rows, i64& row, i64& col) {
    const i64 pair = offset >> 1;
    i64 dst_col = pair / n_rows * 2 + (offset & 1);
    i64 dst_row = pair % n_rows;
    // The 2x2 swap is its own inverse.
    const i64 swap = ((dst_row & 1) == 0 && (dst_col & 1) == 1) ? 1
                   : ((dst_row & 1) == 1 && (dst_col & 1) == 0) ? -1 : 0;
    dst_row += swap;
    col = dst_col - swap;
    // Undo the row permutation p = 4 * (r % 8) + (r % 32) / 8 within each block of 32.
    const i64 p = dst_row % 32;
    row = dst_row - p + (p % 4) * 8 + p / 4;
}

// Integer ordered like |w| for a fp16/bf16 bit pattern: the sign cleared, clamped at the
// pattern of +inf so that NaN ties with inf (the reference's nan -> inf rule).
STEP_HD u32 magnitude_key(u32 bits, u32 inf_bits) {
    const u32 key = bits & 0x7FFFu;
    return key < inf_bits ? key : inf_bits;
}

// The 4-bit code `i0 | i1 << 2` of the two largest keys, ties to the lower index.
// Element i is kept when fewer than two elements beat it; j beats i if k_j > k_i, or
// k_j == k_i and j < i. That order is total, so exactly two are kept.
STEP_HD u32 keep2of4_code(u32 k0, u32 k1, u32 k2, u32 k3) {
    u32 r0 = 0, r1 = 0, r2 = 0, r3 = 0;  // how many elements beat each one
    u32 b;
    b = k1 > k0; r0 += b; r1 += 1 - b;
    b = k2 > k0; r0 += b; r2 += 1 - b;
    b = k3 > k0; r0 += b; r3 += 1 - b;
    b = k2 > k1; r1 += b; r2 += 1 - b;
    b = k3 > k1; r1 += b; r3 += 1 - b;
    b = k3 > k2; r2 += b; r3 += 1 - b;
    const u32 kept = u32(r0 < 2) | u32(r1 < 2) << 1 | u32(r2 < 2) << 2 | u32(r3 < 2) << 3;
    const u32 i0 = (kept & 1u) ? 0u : (kept & 2u) ? 1u : 2u;
    const u32 i1 = (kept & 8u) ? 3u : (kept & 4u) ? 2u : 1u;
    return i0 | i1 << 2;
}

}  // namespace step
