// 2:4 mask-and-pack of a fp16/bf16 weight into the CUTLASS format, and its inverse.
//
// The kernels move 16-bit patterns and never do float arithmetic, so one kernel serves
// fp16 and bf16 (inf_bits: 0x7C00 for fp16, 0x7F80 for bf16). Shapes, with
// words_per_row = K / 16 and n_words = n_rows * words_per_row:
//   w       [n_rows, K]       dense weight bits
//   values  [n_rows, K / 2]   the two kept values of each group of 4, in index order
//   meta    [n_words]         int16, CUTLASS order (sparse24_layout.cuh)
// n_rows % 32 == 0 and K % 64 == 0 (checked by the caller).
//
// Each thread handles whole meta words. Threads walk the words in *buffer* order, so
// the 2-byte meta accesses of a warp coalesce; each word's 16 dense elements (32 bytes)
// and 8 values (16 bytes) are contiguous and move as 16-byte vectors when the base
// pointers are 16-byte aligned.
#include "sparse24_layout.cuh"

namespace step {

struct alignas(16) Vec16 {
    u32 x[4];
};

// 8 consecutive u32 (16 elements) from src, as little-endian element pairs.
STEP_HD void load16(const u16* src, bool aligned, u32 (&p)[8]) {
    if (aligned) {
        const Vec16 a = reinterpret_cast<const Vec16*>(src)[0];
        const Vec16 b = reinterpret_cast<const Vec16*>(src)[1];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            p[j] = a.x[j];
            p[4 + j] = b.x[j];
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) p[j] = u32(src[2 * j]) | u32(src[2 * j + 1]) << 16;
    }
}

STEP_HD void store16(u16* dst, bool aligned, const u32 (&p)[8]) {
    if (aligned) {
        Vec16 a, b;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            a.x[j] = p[j];
            b.x[j] = p[4 + j];
        }
        reinterpret_cast<Vec16*>(dst)[0] = a;
        reinterpret_cast<Vec16*>(dst)[1] = b;
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            dst[2 * j] = u16(p[j]);
            dst[2 * j + 1] = u16(p[j] >> 16);
        }
    }
}

STEP_HD void load8(const u16* src, bool aligned, u32 (&v)[4]) {
    if (aligned) {
        const Vec16 a = *reinterpret_cast<const Vec16*>(src);
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = a.x[j];
    } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = u32(src[2 * j]) | u32(src[2 * j + 1]) << 16;
    }
}

STEP_HD void store8(u16* dst, bool aligned, const u32 (&v)[4]) {
    if (aligned) {
        Vec16 a;
#pragma unroll
        for (int j = 0; j < 4; ++j) a.x[j] = v[j];
        *reinterpret_cast<Vec16*>(dst) = a;
    } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            dst[2 * j] = u16(v[j]);
            dst[2 * j + 1] = u16(v[j] >> 16);
        }
    }
}

// Element i (0..3) of a group held as lo = e0 | e1 << 16, hi = e2 | e3 << 16.
STEP_HD u32 group_element(u32 lo, u32 hi, u32 i) {
    const u32 pair = (i & 2u) ? hi : lo;
    return (i & 1u) ? pair >> 16 : pair & 0xFFFFu;
}

// Dense element i of a group from its kept pair v = v0 | v1 << 16 and its code.
STEP_HD u32 expand_element(u32 v, u32 code, u32 i) {
    return i == (code & 3u) ? (v & 0xFFFFu) : i == (code >> 2) ? (v >> 16) : 0u;
}

// Compress the meta word at buffer offset t.
STEP_HD void compress_word(const u16* w, u16* values, i16* meta, i64 t, i64 n_rows,
                           i64 words_per_row, u32 inf_bits, bool aligned) {
    i64 row, col;
    meta_logical(t, n_rows, row, col);
    const i64 word = row * words_per_row + col;
    u32 p[8];
    load16(w + word * 16, aligned, p);
    u32 kept[4];
    u32 meta_word = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const u32 lo = p[2 * q], hi = p[2 * q + 1];
        const u32 code = keep2of4_code(
            magnitude_key(lo & 0xFFFFu, inf_bits), magnitude_key(lo >> 16, inf_bits),
            magnitude_key(hi & 0xFFFFu, inf_bits), magnitude_key(hi >> 16, inf_bits));
        kept[q] = group_element(lo, hi, code & 3u) | group_element(lo, hi, code >> 2) << 16;
        meta_word |= code << (4 * q);
    }
    store8(values + word * 8, aligned, kept);
    reinterpret_cast<u16*>(meta)[t] = u16(meta_word);
}

// Decompress the meta word at buffer offset t; +0.0 (all bits clear) where pruned.
STEP_HD void decompress_word(const u16* values, const i16* meta, u16* dense, i64 t,
                             i64 n_rows, i64 words_per_row, bool aligned) {
    i64 row, col;
    meta_logical(t, n_rows, row, col);
    const i64 word = row * words_per_row + col;
    const u32 meta_word = reinterpret_cast<const u16*>(meta)[t];
    u32 v[4];
    load8(values + word * 8, aligned, v);
    u32 p[8];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const u32 code = (meta_word >> (4 * q)) & 0xFu;
        p[2 * q] = expand_element(v[q], code, 0) | expand_element(v[q], code, 1) << 16;
        p[2 * q + 1] = expand_element(v[q], code, 2) | expand_element(v[q], code, 3) << 16;
    }
    store16(dense + word * 16, aligned, p);
}

STEP_HD bool aligned16(const void* a, const void* b) {
    return ((reinterpret_cast<u64>(a) | reinterpret_cast<u64>(b)) & 15u) == 0;
}

}  // namespace step

// w [n_rows, 16 * words_per_row] -> values [n_rows, 8 * words_per_row], meta [n_words].
extern "C" __global__ void sparse24_compress_kernel(
    const unsigned short* __restrict__ w, unsigned short* __restrict__ values,
    short* __restrict__ meta, long long n_words, int n_rows, int words_per_row,
    int inf_bits) {
    const bool aligned = step::aligned16(w, values);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n_words;
         t += stride) {
        step::compress_word(w, values, meta, t, n_rows, words_per_row, (unsigned)inf_bits,
                            aligned);
    }
}

// values [n_rows, 8 * words_per_row], meta [n_words] -> dense [n_rows, 16 * words_per_row].
extern "C" __global__ void sparse24_decompress_kernel(
    const unsigned short* __restrict__ values, const short* __restrict__ meta,
    unsigned short* __restrict__ dense, long long n_words, int n_rows, int words_per_row) {
    const bool aligned = step::aligned16(values, dense);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n_words;
         t += stride) {
        step::decompress_word(values, meta, dense, t, n_rows, words_per_row, aligned);
    }
}
