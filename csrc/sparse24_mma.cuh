// PTX wrappers for the 2:4 sparse tensor-core GEMM (sparse24_gemm.cu): cp.async,
// ldmatrix, mma.sp::ordered_metadata m16n8k32 (f16/bf16 in, f32 accumulate) and the
// fp16/bf16 <-> fp32 conversions. sm_80 or newer. Plain C++17 and inline PTX, no
// includes, so NVRTC (through CuPy) and nvcc compile it alike.
//
// Fragment layouts used by the GEMM (PTX ISA, "Matrix fragments for mma.m16n8k16" and
// "sparse mma.m16n8k32 with .f16/.bf16"; g = lane >> 2, t = lane & 3):
//   A (sparse, 16 rows x 32 logical K = 16 kept values per row), 4 x b32:
//       a[0] = row g,   kept values 2t, 2t+1      (the pair of 4-group t)
//       a[1] = row g+8, kept values 2t, 2t+1
//       a[2] = row g,   kept values 2t+8, 2t+9    (4-group t+4)
//       a[3] = row g+8, kept values 2t+8, 2t+9
//     i.e. what ldmatrix.x4 returns for the four 8x8 blocks (rows 0-7 | 8-15) x
//     (kept columns 0-7 | 8-15) of a row-major [16, 16] tile of compressed values.
//   B (dense, 32 K x 8 columns, "col": each column's K contiguous), 4 x b32:
//       b[q] = column g, K 8q + 2t, 8q + 2t + 1
//     i.e. ldmatrix.x4 of four 8x8 blocks of a [8 columns, 32 K] row-major tile.
//   C/D (f32, 16 x 8): c[0], c[1] = row g, columns 2t, 2t+1; c[2], c[3] = row g+8.
//   E (metadata, one b32 per thread): with sparsity selector s, the threads 4g+2s and
//     4g+2s+1 supply it; thread 4g+2s+h holds the 4-bit codes (i0 | i1 << 2, i0 < i1) of
//     K 16h .. 16h+15: row g in bits 0-15 and row g+8 in bits 16-31, 4-group q of the
//     16 in bits 4q .. 4q+3. The other two threads' registers are ignored, so one b32
//     per thread covers two k-steps of 32 (selector 0, then 1): see sparse24_gemm.cu.
#pragma once

#define STEP_DEV __device__ __forceinline__

namespace step {
namespace mma {

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// Shared-memory address (32-bit, .shared window) of a generic pointer into shared memory.
STEP_DEV u32 smem_addr(const void* p) {
    u32 addr;
    asm("{\n\t.reg .u64 a;\n\tcvta.to.shared.u64 a, %1;\n\tcvt.u32.u64 %0, a;\n\t}\n"
        : "=r"(addr)
        : "l"(p));
    return addr;
}

// 16-byte asynchronous copy global -> shared; src_bytes < 16 zero-fills the rest (0: no
// global read at all, the 16 bytes become zeros).
STEP_DEV void cp_async16(void* smem, const void* gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes)
                 : "memory");
}

STEP_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
STEP_DEV void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8, and
// thread t receives row t / 4, elements 2 * (t % 4) and +1 of each matrix in r[0..3].
STEP_DEV void ldmatrix_x4(u32 (&r)[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem_row)));
}

// d += A_sparse (16 x 32, 2:4) * B (32 x 8), f32 accumulate. SEL: sparsity selector.
template <bool BF16, int SEL>
STEP_DEV void mma_sp_16832(float (&d)[4], const u32 (&a)[4], const u32 (&b)[4], u32 e) {
    if constexpr (BF16) {
        asm volatile(
            "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, "
            "{%0, %1, %2, %3}, %12, %13;\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]),
              "r"(b[3]), "r"(e), "n"(SEL));
    } else {
        asm volatile(
            "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, "
            "{%0, %1, %2, %3}, %12, %13;\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]),
              "r"(b[3]), "r"(e), "n"(SEL));
    }
}

// fp16/bf16 bit pattern -> float.
template <bool BF16>
STEP_DEV float to_float(u16 bits) {
    if constexpr (BF16) {
        return __uint_as_float(u32(bits) << 16);
    } else {
        float f;
        asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(bits));
        return f;
    }
}

// float -> fp16/bf16 bit pattern, round to nearest even.
template <bool BF16>
STEP_DEV u16 from_float(float f) {
    u16 bits;
    if constexpr (BF16) {
        asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(bits) : "f"(f));
    } else {
        asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(bits) : "f"(f));
    }
    return bits;
}

}  // namespace mma
}  // namespace step
