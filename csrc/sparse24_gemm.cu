// 2:4 sparse tensor-core GEMM: Y[M, N] = X[M, K] @ W[N, K]^T (+ bias[N]), fp16 or bf16
// in and out, fp32 accumulate, mma.sp::ordered_metadata m16n8k32 (sm_80 and newer).
//
// The sparse operand of mma.sp is A, so the kernel computes Y^T = W_sparse @ X^T: weight
// rows are the MMA's M dimension (16 per MMA) and tokens its N dimension (8 per MMA).
//
// Operands (all contiguous; N % 64 == 0, K % 64 == 0, M >= 1, checked by the caller):
//   x     [M, K]            fp16/bf16 bits, row-major (tokens x features)
//   w     [N, K/2]          the kept values of step.to_sparse24, unchanged: row n holds
//                           the two kept values of each 4-group of W's row n, in order
//   meta  [N/16, K/64, 32]  u32, this kernel's metadata layout (the "mma" layout, made
//                           once per weight by step.ops.sparse24_gemm_cuda):
//                           word (rb, kb, lane), lane = 4g + 2s + h, holds the 16-bit
//                           CUTLASS-logical meta words (codes i0 | i1 << 2 of four
//                           4-groups) of rows 16rb+g (bits 0-15) and 16rb+g+8 (bits
//                           16-31), columns K in [64kb + 32s + 16h, +16). That is the
//                           metadata register of lane `lane` for the two k-steps
//                           s = 0, 1 (sparsity selectors 0, 1) of the 16 x 64 block.
//   bias  [N] or null, y [M, N] (written in full for rows < M, never read).
//
// Block tiling: a block computes TILE_N weight rows x TILE_M tokens; warps are arranged
// WARPS_N x WARPS_M x KSPLIT, each owning WARP_ROWS 16-row MMA tiles x WARP_TOKS 8-token
// MMA tiles. A pipeline stage holds STAGE_K = 64 * KSPLIT logical K: KSPLIT > 1 splits
// each stage's K between warps (decode shapes, few tokens) and sums their accumulators
// through shared memory at the end. Stages are filled with cp.async (16-byte chunks,
// STAGES-deep ring, one commit group per stage); X rows >= M are zero-filled without
// reading memory. Shared tiles are XOR-swizzled in 16-byte chunks so that ldmatrix is
// free of bank conflicts. The epilogue stages the output tile (bias added in fp32, then
// rounded once) in shared memory and writes it with 16-byte stores, rows < M only.
#include "sparse24_mma.cuh"

namespace step {
namespace gemm {

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

struct alignas(16) Chunk {
    u32 x[4];
};

template <int WARP_ROWS_, int WARP_TOKS_, int WARPS_N_, int WARPS_M_, int KSPLIT_, int STAGES_>
struct Config {
    static constexpr int WARP_ROWS = WARP_ROWS_, WARP_TOKS = WARP_TOKS_;
    static constexpr int WARPS_N = WARPS_N_, WARPS_M = WARPS_M_, KSPLIT = KSPLIT_;
    static constexpr int STAGES = STAGES_;
    static constexpr int THREADS = 32 * WARPS_N * WARPS_M * KSPLIT;
    static constexpr int TILE_N = 16 * WARP_ROWS * WARPS_N;  // weight rows per block
    static constexpr int TILE_M = 8 * WARP_TOKS * WARPS_M;   // tokens per block
    static constexpr int STAGE_K = 64 * KSPLIT;              // logical K per stage
    static constexpr int W_CHUNKS = STAGE_K / 16;  // 16-byte chunks per weight row
    static constexpr int X_CHUNKS = STAGE_K / 8;   // 16-byte chunks per token row
    static constexpr int META_CHUNKS = 8 * KSPLIT;  // per 16-row tile (128 B per 64 K)
    static constexpr int W_BYTES = TILE_N * W_CHUNKS * 16;
    static constexpr int X_BYTES = TILE_M * X_CHUNKS * 16;
    static constexpr int META_BYTES = (TILE_N / 16) * META_CHUNKS * 16;
    static constexpr int STAGE_BYTES = W_BYTES + X_BYTES + META_BYTES;
    static constexpr int OUT_STRIDE = TILE_N + 8;  // elements per staged output row
    static constexpr int OUT_BYTES = TILE_M * OUT_STRIDE * 2;
    static constexpr int ACC = WARP_ROWS * WARP_TOKS * 4;  // accumulators per thread
    static constexpr int REDUCE_BYTES = (KSPLIT - 1) * WARPS_N * WARPS_M * ACC * 32 * 4;
    static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
    static constexpr int SMEM_BYTES = PIPE_BYTES > OUT_BYTES
                                          ? (PIPE_BYTES > REDUCE_BYTES ? PIPE_BYTES : REDUCE_BYTES)
                                          : (OUT_BYTES > REDUCE_BYTES ? OUT_BYTES : REDUCE_BYTES);
    static_assert(W_CHUNKS == 4 || W_CHUNKS % 8 == 0, "swizzle needs 4 or 8k chunks per row");
    static_assert(X_CHUNKS % 8 == 0, "swizzle needs 8k chunks per row");
    static_assert(STAGES >= 2, "cp.async pipeline needs at least 2 stages");
};

// Physical 16-byte chunk of logical chunk `chunk` in row `row` of a tile whose rows have
// `chunks` chunks: 8 consecutive rows (ldmatrix's 8 addresses) land in 8 distinct
// 16-byte bank groups. A permutation within each row (XOR of low chunk bits).
__host__ __device__ __forceinline__ int swizzle(int row, int chunk, int chunks) {
    return chunks >= 8 ? (chunk ^ (row & 7)) : (chunk ^ ((row >> 1) & 3));
}

// Every offset the kernel computes, as __host__ __device__ functions (a host program in
// the tests prints them and compares with the Python emulation of the kernel). Shared
// offsets are bytes from the start of a stage: values [0, W_BYTES), then X [.., +X_BYTES),
// then metadata. Global offsets are elements of the operand (values and x: 16-bit, meta:
// u32); -1: nothing to copy (past K).
template <class C>
struct Addr {
    // Copy i of a stage, i in [0, TILE_N * W_CHUNKS): weight row i / W_CHUNKS, chunk i % ..
    static __host__ __device__ int w_smem(int i) {
        const int r = i / C::W_CHUNKS, c = i % C::W_CHUNKS;
        return (r * C::W_CHUNKS + swizzle(r, c, C::W_CHUNKS)) * 16;
    }
    static __host__ __device__ i64 w_global(int i, int n0, int kt, int K) {
        const int r = i / C::W_CHUNKS, col = kt * C::STAGE_K / 2 + (i % C::W_CHUNKS) * 8;
        return col < K / 2 ? (i64)(n0 + r) * (K / 2) + col : -1;
    }
    // Copy i in [0, TILE_M * X_CHUNKS): token row i / X_CHUNKS. Rows >= M: 0 bytes read
    // (zero fill) from row 0, a valid address.
    static __host__ __device__ int x_smem(int i) {
        const int r = i / C::X_CHUNKS, c = i % C::X_CHUNKS;
        return C::W_BYTES + (r * C::X_CHUNKS + swizzle(r, c, C::X_CHUNKS)) * 16;
    }
    static __host__ __device__ i64 x_global(int i, int m0, int kt, int M, int K, int& bytes) {
        const int r = i / C::X_CHUNKS, k = kt * C::STAGE_K + (i % C::X_CHUNKS) * 8;
        const bool ok = m0 + r < M;
        bytes = ok ? 16 : 0;
        return k < K ? (i64)(ok ? m0 + r : 0) * K + k : -1;
    }
    // Copy i in [0, TILE_N / 16 * META_CHUNKS): 16-row tile i / META_CHUNKS, 4 words each.
    static __host__ __device__ int e_smem(int i) { return C::W_BYTES + C::X_BYTES + i * 16; }
    static __host__ __device__ i64 e_global(int i, int n0, int kt, int K) {
        const int t = i / C::META_CHUNKS, c = i % C::META_CHUNKS;
        const int kb = kt * C::KSPLIT + c / 8;
        return kb < K / 64 ? ((i64)(n0 / 16 + t) * (K / 64) + kb) * 32 + (c % 8) * 4 : -1;
    }
    // ldmatrix.x4 row address of `lane` for the A fragment of 16-row tile `tile` (in the
    // block), k-slice warp_k, k-step ks: matrices (rows 0-7 | 8-15) x (kept cols 0-7 | 8-15).
    static __host__ __device__ int a_smem(int tile, int warp_k, int ks, int lane) {
        const int r = tile * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int c = warp_k * 4 + 2 * ks + (lane >> 4);
        return (r * C::W_CHUNKS + swizzle(r, c, C::W_CHUNKS)) * 16;
    }
    // ... for the B fragment of 8-token tile `tok_tile`: matrix q = K 8q .. 8q+7.
    static __host__ __device__ int b_smem(int tok_tile, int warp_k, int ks, int lane) {
        const int r = tok_tile * 8 + (lane & 7);
        const int c = warp_k * 8 + 4 * ks + (lane >> 3);
        return C::W_BYTES + (r * C::X_CHUNKS + swizzle(r, c, C::X_CHUNKS)) * 16;
    }
    // The metadata register of `lane` for 16-row tile `tile`, k-slice warp_k.
    static __host__ __device__ int e_word(int tile, int warp_k, int lane) {
        return C::W_BYTES + C::X_BYTES + ((tile * C::KSPLIT + warp_k) * 32 + lane) * 4;
    }
};

// Issue the cp.async copies of pipeline stage `kt` into `stage`: weight values, X rows
// (zero-filled past M) and metadata. Chunks past K (the last stage when KSPLIT > 1 does
// not divide K / 64) are skipped; nobody reads them.
template <class C>
__device__ __forceinline__ void load_stage(unsigned char* stage, const u16* __restrict__ x,
                                           const u16* __restrict__ w,
                                           const u32* __restrict__ meta, int m0, int n0,
                                           int kt, int M, int K, int tid) {
    typedef Addr<C> A;
#pragma unroll 2
    for (int i = tid; i < C::TILE_N * C::W_CHUNKS; i += C::THREADS) {
        const i64 src = A::w_global(i, n0, kt, K);
        if (src >= 0) mma::cp_async16(stage + A::w_smem(i), w + src, 16);
    }
#pragma unroll 2
    for (int i = tid; i < C::TILE_M * C::X_CHUNKS; i += C::THREADS) {
        int bytes;
        const i64 src = A::x_global(i, m0, kt, M, K, bytes);
        if (src >= 0) mma::cp_async16(stage + A::x_smem(i), x + src, bytes);
    }
    for (int i = tid; i < (C::TILE_N / 16) * C::META_CHUNKS; i += C::THREADS) {
        const i64 src = A::e_global(i, n0, kt, K);
        if (src >= 0) mma::cp_async16(stage + A::e_smem(i), meta + src, 16);
    }
}

template <bool BF16, class C>
__device__ __forceinline__ void sparse24_gemm(const u16* __restrict__ x,
                                              const u16* __restrict__ w,
                                              const u32* __restrict__ meta,
                                              const u16* __restrict__ bias, u16* __restrict__ y,
                                              int M, int N, int K) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_n = warp % C::WARPS_N;
    const int warp_m = (warp / C::WARPS_N) % C::WARPS_M;
    const int warp_k = warp / (C::WARPS_N * C::WARPS_M);
    const int n0 = blockIdx.x * C::TILE_N, m0 = blockIdx.y * C::TILE_M;
    const int k_tiles = (K + C::STAGE_K - 1) / C::STAGE_K;
    const int k_blocks = K / 64;

    float acc[C::WARP_ROWS][C::WARP_TOKS][4];
#pragma unroll
    for (int i = 0; i < C::WARP_ROWS; ++i)
#pragma unroll
        for (int j = 0; j < C::WARP_TOKS; ++j)
#pragma unroll
            for (int v = 0; v < 4; ++v) acc[i][j][v] = 0.0f;

    // Prologue: stages 0 .. STAGES-2 in flight (one commit group each, empty past the end).
#pragma unroll
    for (int s = 0; s < C::STAGES - 1; ++s) {
        if (s < k_tiles) load_stage<C>(smem + s * C::STAGE_BYTES, x, w, meta, m0, n0, s, M, K, tid);
        mma::cp_async_commit();
    }

    for (int kt = 0; kt < k_tiles; ++kt) {
        // Stage kt has landed (at most STAGES-2 younger groups pending); the barrier also
        // tells every warp that the slot refilled below was consumed at step kt-1.
        mma::cp_async_wait<C::STAGES - 2>();
        __syncthreads();
        const int next = kt + C::STAGES - 1;
        if (next < k_tiles) {
            load_stage<C>(smem + (next % C::STAGES) * C::STAGE_BYTES, x, w, meta, m0, n0, next,
                          M, K, tid);
        }
        mma::cp_async_commit();

        if (kt * C::KSPLIT + warp_k >= k_blocks) continue;  // warp-uniform: past K
        const unsigned char* stage = smem + (kt % C::STAGES) * C::STAGE_BYTES;
        u32 e[C::WARP_ROWS];
#pragma unroll
        for (int i = 0; i < C::WARP_ROWS; ++i) {
            const int tile = warp_n * C::WARP_ROWS + i;
            e[i] = *reinterpret_cast<const u32*>(stage + Addr<C>::e_word(tile, warp_k, lane));
        }
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            u32 a[C::WARP_ROWS][4], b[C::WARP_TOKS][4];
#pragma unroll
            for (int i = 0; i < C::WARP_ROWS; ++i) {
                const int tile = warp_n * C::WARP_ROWS + i;
                mma::ldmatrix_x4(a[i], stage + Addr<C>::a_smem(tile, warp_k, ks, lane));
            }
#pragma unroll
            for (int j = 0; j < C::WARP_TOKS; ++j) {
                const int tok_tile = warp_m * C::WARP_TOKS + j;
                mma::ldmatrix_x4(b[j], stage + Addr<C>::b_smem(tok_tile, warp_k, ks, lane));
            }
#pragma unroll
            for (int i = 0; i < C::WARP_ROWS; ++i)
#pragma unroll
                for (int j = 0; j < C::WARP_TOKS; ++j) {
                    if (ks == 0) {
                        mma::mma_sp_16832<BF16, 0>(acc[i][j], a[i], b[j], e[i]);
                    } else {
                        mma::mma_sp_16832<BF16, 1>(acc[i][j], a[i], b[j], e[i]);
                    }
                }
        }
    }
    mma::cp_async_wait<0>();
    __syncthreads();  // the pipeline's shared memory is free from here on

    if constexpr (C::KSPLIT > 1) {
        // Warps of k-slice > 0 hand their partial sums to the warps of slice 0.
        float* red = reinterpret_cast<float*>(smem);
        const int nm = warp % (C::WARPS_N * C::WARPS_M);
        if (warp_k > 0) {
            float* dst = red + ((warp_k - 1) * C::WARPS_N * C::WARPS_M + nm) * C::ACC * 32;
#pragma unroll
            for (int i = 0; i < C::WARP_ROWS; ++i)
#pragma unroll
                for (int j = 0; j < C::WARP_TOKS; ++j)
#pragma unroll
                    for (int v = 0; v < 4; ++v)
                        dst[((i * C::WARP_TOKS + j) * 4 + v) * 32 + lane] = acc[i][j][v];
        }
        __syncthreads();
        if (warp_k == 0) {
            for (int s = 1; s < C::KSPLIT; ++s) {
                const float* src = red + ((s - 1) * C::WARPS_N * C::WARPS_M + nm) * C::ACC * 32;
#pragma unroll
                for (int i = 0; i < C::WARP_ROWS; ++i)
#pragma unroll
                    for (int j = 0; j < C::WARP_TOKS; ++j)
#pragma unroll
                        for (int v = 0; v < 4; ++v)
                            acc[i][j][v] += src[((i * C::WARP_TOKS + j) * 4 + v) * 32 + lane];
            }
        }
        __syncthreads();
    }

    // Epilogue: out[token][row] in shared memory, bias added in fp32, one rounding.
    u16* out = reinterpret_cast<u16*>(smem);
    if (warp_k == 0) {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int i = 0; i < C::WARP_ROWS; ++i) {
            const int row = (warp_n * C::WARP_ROWS + i) * 16 + g;
            const float b0 = bias ? mma::to_float<BF16>(bias[n0 + row]) : 0.0f;
            const float b1 = bias ? mma::to_float<BF16>(bias[n0 + row + 8]) : 0.0f;
#pragma unroll
            for (int j = 0; j < C::WARP_TOKS; ++j) {
                const int tok = (warp_m * C::WARP_TOKS + j) * 8 + 2 * t;
                out[tok * C::OUT_STRIDE + row] = mma::from_float<BF16>(acc[i][j][0] + b0);
                out[(tok + 1) * C::OUT_STRIDE + row] = mma::from_float<BF16>(acc[i][j][1] + b0);
                out[tok * C::OUT_STRIDE + row + 8] = mma::from_float<BF16>(acc[i][j][2] + b1);
                out[(tok + 1) * C::OUT_STRIDE + row + 8] =
                    mma::from_float<BF16>(acc[i][j][3] + b1);
            }
        }
    }
    __syncthreads();
    constexpr int ROW_CHUNKS = C::TILE_N / 8;
    for (int i = tid; i < C::TILE_M * ROW_CHUNKS; i += C::THREADS) {
        const int r = i / ROW_CHUNKS, c = i % ROW_CHUNKS;
        if (m0 + r < M) {
            *reinterpret_cast<Chunk*>(y + (i64)(m0 + r) * N + n0 + c * 8) =
                *reinterpret_cast<const Chunk*>(out + r * C::OUT_STRIDE + c * 8);
        }
    }
}

// The tile table; its Python twin is step.ops.sparse24_gemm_cuda.CONFIGS (same numbers).
//                      WARP_ROWS WARP_TOKS WARPS_N WARPS_M KSPLIT STAGES
typedef Config<1, 1, 1, 1, 4, 4> ConfigM8;     // TILE 16 x 8,    K 256/stage, 4 warps
typedef Config<1, 2, 1, 1, 4, 4> ConfigM16;    // TILE 16 x 16,   K 256/stage, 4 warps
typedef Config<2, 4, 2, 2, 1, 4> ConfigM64;    // TILE 64 x 64,   K 64/stage,  4 warps
typedef Config<4, 4, 2, 4, 1, 4> ConfigLarge;  // TILE 128 x 128, K 64/stage,  8 warps

}  // namespace gemm
}  // namespace step

#define STEP_SPARSE24_GEMM_KERNEL(NAME, BF16, CFG)                                          \
    extern "C" __global__ void __launch_bounds__(CFG::THREADS)                              \
        NAME(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,    \
             const unsigned int* __restrict__ meta, const unsigned short* __restrict__ bias, \
             unsigned short* __restrict__ y, int M, int N, int K) {                         \
        step::gemm::sparse24_gemm<BF16, CFG>(x, w, meta, bias, y, M, N, K);                 \
    }

// y [M, N] = x [M, K] @ W^T (+ bias); grid (N / TILE_N, ceil(M / TILE_M)), block THREADS,
// dynamic shared memory SMEM_BYTES of the config.
STEP_SPARSE24_GEMM_KERNEL(sparse24_gemm_f16_m8, false, step::gemm::ConfigM8)
STEP_SPARSE24_GEMM_KERNEL(sparse24_gemm_f16_m16, false, step::gemm::ConfigM16)
STEP_SPARSE24_GEMM_KERNEL(sparse24_gemm_f16_m64, false, step::gemm::ConfigM64)
STEP_SPARSE24_GEMM_KERNEL(sparse24_gemm_f16_large, false, step::gemm::ConfigLarge)
STEP_SPARSE24_GEMM_KERNEL(sparse24_gemm_bf16_m8, true, step::gemm::ConfigM8)
STEP_SPARSE24_GEMM_KERNEL(sparse24_gemm_bf16_m16, true, step::gemm::ConfigM16)
STEP_SPARSE24_GEMM_KERNEL(sparse24_gemm_bf16_m64, true, step::gemm::ConfigM64)
STEP_SPARSE24_GEMM_KERNEL(sparse24_gemm_bf16_large, true, step::gemm::ConfigLarge)
