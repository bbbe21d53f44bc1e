/* Fused AdamW / STEP step on the CPU: the "cpu" backend of step::adam_update.
 *
 * Reference: step/ops/adam_update.py (adam_update_ref); same semantics, one pass over
 * memory instead of the reference's eight. The launcher (step/ops/adam_update_cpu.py)
 * compiles this file with the system C compiler at first use, loads it with ctypes and
 * calls step_adam_update() from one thread per range of chunks.
 *
 * Work comes as a chunk table: chunk c is elements [begin, end) of tensor t, with
 * begin a multiple of the group size m, so every N:M group lies in one chunk. Each chunk
 * is processed in blocks that stay in L1: raw bits in, magnitude keys and the kept flags
 * of the SR-STE term, then one elementwise loop in float32 with the reference's operation
 * order, then the params rounded back to their dtype (round to nearest even).
 * (sum |g^2 - v_old|, sum v_new) of each chunk go to partials[2c], partials[2c+1]; the
 * launcher adds them up in chunk order, so the result does not depend on the threads.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* x86-64: an AVX2 clone of the update beside the baseline one, picked at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

enum { KIND_F32 = 0, KIND_F16 = 1, KIND_BF16 = 2 };
enum { BLOCK = 1024 };

/* Mirrored by step/ops/adam_update_cpu.py:_Args (same order, same types). */
typedef struct {
    float lerp_w, beta2, one_minus_b2, decay, step_size, sqrt_bc2, sqrt_bc2_live, eps, srste;
    int32_t n, m, kind, masked, given, update_v, want_z, guard;
} adam_args;

static uint32_t f16_to_f32(uint32_t h) {
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1Fu) return sign | 0x7F800000u | (man << 13); /* inf, NaN (payload kept) */
    if (exp != 0) return sign | ((exp + 112u) << 23) | (man << 13);
    /* zero or subnormal: man * 2^-24, exact in float32 */
    float value = (float)man * 5.9604644775390625e-08f;
    uint32_t bits;
    memcpy(&bits, &value, 4);
    return sign | bits;
}

static uint32_t f32_to_f16(uint32_t x) {
    uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u | ((a >> 13) & 0x3FFu); /* NaN stays NaN */
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* rounds to >= 65520: inf */
    if (a >= 0x38800000u) {                        /* normal half */
        uint32_t r = a + 0x0FFFu + ((a >> 13) & 1u) - (112u << 23);
        return sign | (r >> 13);
    }
    if (a < 0x33000000u) return sign; /* below half the smallest subnormal: zero */
    /* subnormal half: shift the full significand, round to nearest even */
    uint32_t e = a >> 23, man = (a & 0x7FFFFFu) | 0x800000u, shift = 126u - e;
    uint32_t q = man >> shift, rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    q += (rem > half) | ((rem == half) & (q & 1u));
    return sign | q;
}

static uint32_t f32_to_bf16(uint32_t x) {
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u; /* NaN, as PyTorch writes it */
    return (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
}

static inline __attribute__((always_inline)) void load_bits(const void* src, int64_t off, int len, int kind, uint32_t* raw) {
    if (kind == KIND_F32) {
        memcpy(raw, (const uint32_t*)src + off, (size_t)len * 4);
    } else {
        const uint16_t* s = (const uint16_t*)src + off;
        for (int i = 0; i < len; i++) raw[i] = s[i];
    }
}

/* raw bits -> float32 values, exactly (`wide` is scratch) */
static inline __attribute__((always_inline)) void widen(const uint32_t* raw, int len, int kind, uint32_t* wide, float* out) {
    if (kind == KIND_F32) {
        memcpy(out, raw, (size_t)len * 4);
        return;
    }
    if (kind == KIND_BF16) {
        for (int i = 0; i < len; i++) wide[i] = raw[i] << 16;
    } else {
        for (int i = 0; i < len; i++) wide[i] = f16_to_f32(raw[i]);
    }
    memcpy(out, wide, (size_t)len * 4);
}

static inline __attribute__((always_inline)) void store_params(const float* p, int len, int kind, uint32_t* wide, void* dst,
                         int64_t off) {
    if (kind == KIND_F32) {
        memcpy((float*)dst + off, p, (size_t)len * 4);
        return;
    }
    uint16_t* d = (uint16_t*)dst + off;
    memcpy(wide, p, (size_t)len * 4);
    if (kind == KIND_BF16) {
        for (int i = 0; i < len; i++) d[i] = (uint16_t)f32_to_bf16(wide[i]);
    } else {
        for (int i = 0; i < len; i++) d[i] = (uint16_t)f32_to_f16(wide[i]);
    }
}

/* kept[i] = 1 for the n largest |w| of each group of m; ties go to the lower index, NaN
 * ranks like inf (step.nm_mask's rule). `key` is the magnitude: sign cleared, clamped at
 * the bits of +inf. Inlined with constant m for the common group sizes. */
static inline __attribute__((always_inline)) void keep_top_n(
    const uint32_t* key, int len, int n, int m, uint8_t* kept) {
    for (int base = 0; base < len; base += m) {
        for (int i = 0; i < m; i++) {
            uint32_t ki = key[base + i];
            int rank = 0;
            for (int j = 0; j < m; j++) {
                uint32_t kj = key[base + j];
                rank += (kj > ki) | ((kj == ki) & (j < i));
            }
            kept[base + i] = (uint8_t)(rank < n);
        }
    }
}

static inline __attribute__((always_inline)) void mask_block(const uint32_t* raw, int len, int kind, int n, int m, uint8_t* kept) {
    uint32_t key[BLOCK];
    uint32_t abs_mask = kind == KIND_F32 ? 0x7FFFFFFFu : 0x7FFFu;
    uint32_t inf = kind == KIND_F32 ? 0x7F800000u : (kind == KIND_F16 ? 0x7C00u : 0x7F80u);
    for (int i = 0; i < len; i++) {
        uint32_t a = raw[i] & abs_mask;
        key[i] = a < inf ? a : inf;
    }
    if (m == 4) {
        keep_top_n(key, len, n, 4, kept);
    } else if (m == 2) {
        keep_top_n(key, len, n, 2, kept);
    } else if (m == 8) {
        keep_top_n(key, len, n, 8, kept);
    } else {
        keep_top_n(key, len, n, m, kept);
    }
}

VECTOR_CLONES static void update_chunk(const adam_args* a, void* p_ptr, const void* g_ptr, float* m,
                         float* v, const uint8_t* given, float floor, int64_t begin,
                         int64_t end, float* partial) {
    uint32_t raw[BLOCK], wide[BLOCK];
    float p[BLOCK], g[BLOCK];
    uint8_t kept[BLOCK];
    const int block = a->masked ? (BLOCK / a->m) * a->m : BLOCK; /* whole groups */
    const float lerp_w = a->lerp_w, keep_w = 1.0f - a->lerp_w, beta2 = a->beta2;
    const float omb2 = a->one_minus_b2, decay = a->decay, step_size = a->step_size;
    const float sqrt_bc2 = a->sqrt_bc2, eps = a->eps, srste = a->srste;
    float z = 0.0f, s = 0.0f;
    for (int64_t off = begin; off < end; off += block) {
        const int len = (int)(end - off < block ? end - off : block);
        float* mb = m + off;
        float* vb = v + off;
        load_bits(g_ptr, off, len, a->kind, raw);
        widen(raw, len, a->kind, wide, g);
        load_bits(p_ptr, off, len, a->kind, raw);
        widen(raw, len, a->kind, wide, p);
        if (a->masked) {
            if (a->given) {
                memcpy(kept, given + off, (size_t)len);
            } else {
                mask_block(raw, len, a->kind, a->n, a->m, kept);
            }
            /* g + srste * where(kept, 0, p): a kept inf contributes 0, not NaN */
            for (int i = 0; i < len; i++) g[i] = g[i] + srste * (kept[i] ? 0.0f : p[i]);
        }
        /* The reference's operation order, one simple loop per step of it: the block is in
         * L1, and loops without branches vectorize where a fused one with them did not. */
        if (lerp_w < 0.5f) { /* torch.lerp's two formulas, so exp_avg rounds alike */
            for (int i = 0; i < len; i++) mb[i] = mb[i] + lerp_w * (g[i] - mb[i]);
        } else {
            for (int i = 0; i < len; i++) mb[i] = g[i] - (g[i] - mb[i]) * keep_w;
        }
        if (a->update_v && a->want_z) {
#pragma omp simd reduction(+ : z, s)
            for (int i = 0; i < len; i++) {
                z += fabsf(g[i] * g[i] - vb[i]);
                vb[i] = vb[i] * beta2 + omb2 * g[i] * g[i];
                s += vb[i];
            }
        } else if (a->update_v) {
            for (int i = 0; i < len; i++) vb[i] = vb[i] * beta2 + omb2 * g[i] * g[i];
        }
        int any_live = 0; /* the guard: a frozen v below its tensor's floor keeps estimating */
        if (a->guard) {
#pragma omp simd reduction(| : any_live)
            for (int i = 0; i < len; i++) any_live |= vb[i] < floor;
        }
        if (any_live) { /* simple loops (they vectorize); blocks without one take the plain loop */
            const float live_bc2 = a->sqrt_bc2_live;
            /* v = v < floor ? grown : v as a bit blend (branches would not vectorize);
             * memcpy, not pointer casts, moves floats to bits (strict aliasing) */
            float grown[BLOCK], bc[BLOCK];
            uint32_t keep[BLOCK], vbits[BLOCK], gbits[BLOCK], bcbits[BLOCK];
            uint32_t live_bits, frozen_bits;
            memcpy(&live_bits, &live_bc2, 4);
            memcpy(&frozen_bits, &sqrt_bc2, 4);
            for (int i = 0; i < len; i++) grown[i] = vb[i] * beta2 + omb2 * g[i] * g[i];
            for (int i = 0; i < len; i++) keep[i] = (uint32_t)0 - (uint32_t)(vb[i] >= floor);
            memcpy(vbits, vb, (size_t)len * 4);
            memcpy(gbits, grown, (size_t)len * 4);
            for (int i = 0; i < len; i++) {
                vbits[i] = (vbits[i] & keep[i]) | (gbits[i] & ~keep[i]);
                bcbits[i] = (frozen_bits & keep[i]) | (live_bits & ~keep[i]);
            }
            memcpy(vb, vbits, (size_t)len * 4);
            memcpy(bc, bcbits, (size_t)len * 4);
            for (int i = 0; i < len; i++) {
                float denom = sqrtf(vb[i]) / bc[i] + eps;
                p[i] = p[i] * decay + step_size * mb[i] / denom;
            }
        } else {
            for (int i = 0; i < len; i++) {
                float denom = sqrtf(vb[i]) / sqrt_bc2 + eps;
                p[i] = p[i] * decay + step_size * mb[i] / denom;
            }
        }
        store_params(p, len, a->kind, wide, p_ptr, off);
    }
    partial[0] = z * omb2; /* v_new - v_old == (1-b2) * (g^2 - v_old) */
    partial[1] = s;
}

/* Chunks [c0, c1) of the table `chunks` (int64 [C, 3]: tensor, begin, end). Tensor
 * tables hold one address per tensor; `given` is only read when a->given, `floors` (one
 * float per tensor: the guard's) only when a->guard. */
void step_adam_update(const adam_args* a, void* const* params, const void* const* grads,
                      float* const* exp_avgs, float* const* exp_avg_sqs,
                      const uint8_t* const* given, const float* floors, const int64_t* chunks,
                      int64_t c0, int64_t c1, float* partials) {
    for (int64_t c = c0; c < c1; c++) {
        const int64_t t = chunks[3 * c], begin = chunks[3 * c + 1], end = chunks[3 * c + 2];
        update_chunk(a, params[t], grads[t], exp_avgs[t], exp_avg_sqs[t],
                     a->given ? given[t] : 0, a->guard ? floors[t] : 0.0f, begin, end,
                     partials + 2 * c);
    }
}
