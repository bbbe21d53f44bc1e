"""The CUDA mma.sp 2:4 GEMM (csrc/sparse24_gemm.cu, step.native.cuda.sparse24_gemm).

CPU: the metadata layout conversion (round trip; every code checked against the PTX
fragment rule, written here loop by loop), a Python emulation of the kernel's tiling,
shared-memory swizzle, ldmatrix addressing and mma.sp fragment semantics (PTX ISA) run
against the dense product, the tile table (and its agreement with the .cu's Config
constants, through an nvcc-built host program), refusals before any launch, the
registration and the conversion cache. ``gpu``: the kernel itself against a float64
reference with the tolerance rule.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import HALF_DTYPES, assert_within_tolerance_rule

import step
from step.native.cuda.sparse24_gemm import (
    CONFIGS,
    check_sparse24_gemm_args,
    choose_config,
    mma_meta,
    sparse24_linear_cuda,
    sparse24_meta_from_mma,
    sparse24_meta_to_mma,
)
from step.native.sources import csrc_dir
from step.ops.nm_compress import nm_compress_ref
from step.ops.nm_mask import nm_mask_ref
from step.ops.sparse24 import from_sparse24_ref, to_sparse24_ref


def weight_with_zero_groups(n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Random weight in which some 4-groups are all zero and some have one nonzero."""
    w = torch.randn(n * k // 4, 4)
    w[0::7] = 0.0
    w[3::7, 1:] = 0.0
    return w.reshape(n, k).to(dtype)


# ---------------------------------------------------------------- layout


@pytest.mark.parametrize("shape", [(64, 64), (64, 128), (128, 320), (192, 1024)])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_meta_round_trip(shape, dtype):
    _, meta = to_sparse24_ref(weight_with_zero_groups(*shape, dtype))
    mma = sparse24_meta_to_mma(meta)
    n, k = shape
    assert mma.shape == (n // 16, k // 64, 32) and mma.dtype == torch.int32
    assert mma.is_contiguous()
    assert torch.equal(sparse24_meta_from_mma(mma), meta)


def test_meta_placement_element_by_element():
    """Every 4-group's kept pair sits where the PTX rule says lane 4g+2s+h finds it."""
    n, k = 64, 192
    w = weight_with_zero_groups(n, k, torch.float16)
    _, positions = nm_compress_ref(w, 2, 4)  # [n, k/2], ascending within each group
    mma = sparse24_meta_to_mma(to_sparse24_ref(w)[1])
    for row in range(n):
        rb, g, hi = row // 16, row % 8, (row % 16) // 8
        for q in range(k // 4):
            col = 4 * q
            kb, s, h, nibble = col // 64, (col % 64) // 32, (col % 32) // 16, (col % 16) // 4
            word = int(mma[rb, kb, 4 * g + 2 * s + h]) & 0xFFFFFFFF
            code = (word >> (16 * hi + 4 * nibble)) & 0xF
            i0, i1 = int(positions[row, 2 * q]), int(positions[row, 2 * q + 1])
            assert (code & 3, code >> 2) == (i0, i1), (row, q)


def test_meta_from_mma_refuses_bad_shape():
    with pytest.raises(ValueError, match="N/16, K/64, 32"):
        sparse24_meta_from_mma(torch.zeros(2, 2, 16, dtype=torch.int32))


# ---------------------------------------------------------------- kernel emulation


def swizzle(row: int, chunk: int, chunks: int) -> int:
    return chunk ^ (row & 7) if chunks >= 8 else chunk ^ ((row >> 1) & 3)


class PyAddr:
    """The kernel's address arithmetic (``Addr<C>`` in sparse24_gemm.cu) in Python: byte
    offsets within a stage, element offsets in global memory (-1: past K)."""

    def __init__(self, cfg):
        self.c = cfg
        self.wc, self.xc, self.ec = cfg.stage_k // 16, cfg.stage_k // 8, 8 * cfg.ksplit
        self.w_bytes = cfg.tile_n * self.wc * 16
        self.x_bytes = cfg.tile_m * self.xc * 16
        self.stage_bytes = self.w_bytes + self.x_bytes + cfg.tile_n // 16 * self.ec * 16

    def w_smem(self, i):
        r, c = divmod(i, self.wc)
        return (r * self.wc + swizzle(r, c, self.wc)) * 16

    def w_global(self, i, n0, kt, k):
        r, c = divmod(i, self.wc)
        col = kt * self.c.stage_k // 2 + c * 8
        return (n0 + r) * (k // 2) + col if col < k // 2 else -1

    def x_smem(self, i):
        r, c = divmod(i, self.xc)
        return self.w_bytes + (r * self.xc + swizzle(r, c, self.xc)) * 16

    def x_global(self, i, m0, kt, m, k):
        r, c = divmod(i, self.xc)
        col, ok = kt * self.c.stage_k + c * 8, m0 + r < m
        return ((m0 + r if ok else 0) * k + col if col < k else -1), (16 if ok else 0)

    def e_smem(self, i):
        return self.w_bytes + self.x_bytes + i * 16

    def e_global(self, i, n0, kt, k):
        t, c = divmod(i, self.ec)
        kb = kt * self.c.ksplit + c // 8
        return ((n0 // 16 + t) * (k // 64) + kb) * 32 + (c % 8) * 4 if kb < k // 64 else -1

    def a_smem(self, tile, wk, ks, lane):
        r = tile * 16 + (lane & 7) + ((lane >> 3) & 1) * 8
        c = wk * 4 + 2 * ks + (lane >> 4)
        return (r * self.wc + swizzle(r, c, self.wc)) * 16

    def b_smem(self, tok_tile, wk, ks, lane):
        r, c = tok_tile * 8 + (lane & 7), wk * 8 + 4 * ks + (lane >> 3)
        return self.w_bytes + (r * self.xc + swizzle(r, c, self.xc)) * 16

    def e_word(self, tile, wk, lane):
        return self.w_bytes + self.x_bytes + ((tile * self.c.ksplit + wk) * 32 + lane) * 4


def ldmatrix_x4(stage: torch.Tensor, addrs: list[int], dtype) -> list[list[torch.Tensor]]:
    """ldmatrix.x4 on int16 shared memory: lane l gives the byte address of row l % 8 of
    matrix l // 8; lane t receives row t // 4, elements 2 (t % 4) and +1 of each matrix."""
    regs = [[None] * 4 for _ in range(32)]
    for lane in range(32):
        for q in range(4):
            p = addrs[8 * q + lane // 4] // 2 + 2 * (lane % 4)
            regs[lane][q] = stage[p : p + 2].view(dtype)
    return regs


def mma_sp_semantics(a, b, e, sel: int) -> torch.Tensor:
    """D (float64 16 x 8) of mma.sp m16n8k32 from per-lane registers, by the PTX ISA's
    fragment tables (not by the kernel's formulas)."""
    comp = torch.zeros(16, 16, dtype=torch.float64)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for reg in range(4):
            r, c = g + 8 * (reg % 2), 2 * t + 8 * (reg // 2)
            comp[r, c : c + 2] = a[lane][reg].double()
    dense = torch.zeros(16, 32, dtype=torch.float64)
    for r in range(16):
        g, hi = r % 8, r // 8
        for q in range(8):
            word = int(e[4 * g + 2 * sel + q // 4]) & 0xFFFFFFFF
            code = (word >> (16 * hi + 4 * (q % 4))) & 0xF
            i0, i1 = code & 3, code >> 2
            assert i0 < i1, "ordered_metadata needs i0 < i1"
            dense[r, 4 * q + i0] = comp[r, 2 * q]
            dense[r, 4 * q + i1] = comp[r, 2 * q + 1]
    bmat = torch.zeros(32, 8, dtype=torch.float64)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for q in range(4):
            bmat[8 * q + 2 * t : 8 * q + 2 * t + 2, g] = b[lane][q].double()
    return dense @ bmat


def emulate_kernel(cfg, x, values, meta_mma) -> torch.Tensor:
    """The kernel's data flow in Python with its address arithmetic (PyAddr): per block
    and stage a shared-memory image filled as load_stage fills it (bytes never written
    hold -1: NaN values, invalid metadata), per warp the ldmatrix addresses and mma.sp
    calls, the split-K sum, the accumulator-to-output mapping. float64 accumulators."""
    ad, dtype = PyAddr(cfg), x.dtype
    (m, k), n = x.shape, values.shape[0]
    xb, wb, eb = (
        x.view(torch.int16).flatten(),
        values.view(torch.int16).flatten(),
        meta_mma.flatten(),
    )
    y = torch.full((m, n), float("nan"), dtype=torch.float64)
    for n0 in range(0, n, cfg.tile_n):
        for m0 in range(0, m, cfg.tile_m):
            acc = torch.zeros(cfg.tile_m, cfg.tile_n, dtype=torch.float64)
            for kt in range(-(-k // cfg.stage_k)):
                stage = torch.full((ad.stage_bytes // 2,), -1, dtype=torch.int16)
                words = stage.view(torch.int32)
                for i in range(cfg.tile_n * ad.wc):
                    if (src := ad.w_global(i, n0, kt, k)) >= 0:
                        stage[ad.w_smem(i) // 2 :][:8] = wb[src : src + 8]
                for i in range(cfg.tile_m * ad.xc):
                    src, nbytes = ad.x_global(i, m0, kt, m, k)
                    if src >= 0:
                        stage[ad.x_smem(i) // 2 :][:8] = xb[src : src + 8] if nbytes else 0
                for i in range(cfg.tile_n // 16 * ad.ec):
                    if (src := ad.e_global(i, n0, kt, k)) >= 0:
                        words[ad.e_smem(i) // 4 :][:4] = eb[src : src + 4]
                for warp in range(cfg.threads // 32):
                    wn, wm = warp % cfg.warps_n, (warp // cfg.warps_n) % cfg.warps_m
                    wk = warp // (cfg.warps_n * cfg.warps_m)
                    if kt * cfg.ksplit + wk >= k // 64:
                        continue
                    for ks in range(2):
                        for i in range(cfg.warp_rows):
                            tile = wn * cfg.warp_rows + i
                            e = [words[ad.e_word(tile, wk, ln) // 4] for ln in range(32)]
                            a_addr = [ad.a_smem(tile, wk, ks, ln) for ln in range(32)]
                            a = ldmatrix_x4(stage, a_addr, dtype)
                            for j in range(cfg.warp_toks):
                                tt = wm * cfg.warp_toks + j
                                b_addr = [ad.b_smem(tt, wk, ks, ln) for ln in range(32)]
                                d = mma_sp_semantics(a, ldmatrix_x4(stage, b_addr, dtype), e, ks)
                                acc[tt * 8 : tt * 8 + 8, tile * 16 : tile * 16 + 16] += d.T
            rows = min(cfg.tile_m, m - m0)
            y[m0 : m0 + rows, n0 : n0 + cfg.tile_n] = acc[:rows]
    return y


EMULATED = [("m8", 3, 64, 320), ("m16", 16, 64, 256), ("m64", 37, 128, 128), ("large", 9, 128, 64)]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("name, m, n, k", EMULATED)
def test_emulated_kernel_matches_dense(name, m, n, k, dtype):
    cfg = CONFIGS[name]
    w = weight_with_zero_groups(n, k, dtype)
    values, meta = to_sparse24_ref(w)
    x = torch.randn(m, k).to(dtype)
    y = emulate_kernel(cfg, x, values, sparse24_meta_to_mma(meta))
    dense = from_sparse24_ref(values, meta).double()
    torch.testing.assert_close(y, x.double() @ dense.T, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- tile table


def test_tile_table_choice():
    assert choose_config(1, 4096).name == "m8"
    assert choose_config(8, 4096).name == "m8"
    assert choose_config(9, 4096).name == "m16"
    assert choose_config(16, 64).name == "m16"
    assert choose_config(17, 4096).name == "m64"
    assert choose_config(256, 4096).name == "m64"
    assert choose_config(257, 4096).name == "large"
    assert choose_config(8192, 4096).name == "large"
    assert choose_config(8192, 4160).name == "m64"  # N % 128 != 0


def test_tile_table_is_launchable():
    """Every config covers any N % 64 == 0 it is chosen for, fits sm_80's 163 KiB of
    shared memory, and its threads match the warp layout."""
    for n in range(64, 2049, 64):
        for m in (1, 7, 8, 9, 16, 17, 64, 256, 257, 4096):
            cfg = choose_config(m, n)
            assert n % cfg.tile_n == 0, (m, n, cfg)
    for cfg in CONFIGS.values():
        assert cfg.smem_bytes <= 163 * 1024
        assert cfg.threads <= 1024 and cfg.threads % 32 == 0
        assert cfg.kernel(torch.bfloat16) == f"sparse24_gemm_bf16_{cfg.name}"


CONSTANTS = r"""
#include "sparse24_gemm.cu"
#include <cstdio>
template <class C> void show(const char* name) {
    printf("%s %d %d %d %d %d\n", name, C::TILE_N, C::TILE_M, C::THREADS, C::STAGE_K,
           C::SMEM_BYTES);
}
int main() {
    using namespace step::gemm;
    show<ConfigM8>("m8"); show<ConfigM16>("m16"); show<ConfigM64>("m64");
    show<ConfigLarge>("large");
    for (int chunks : {4, 8, 16, 32})
        for (int r = 0; r < 64; ++r)
            for (int c = 0; c < chunks; ++c) printf("%d ", swizzle(r, c, chunks));
    printf("\n");
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_configs_match_python_table(tmp_path):
    (tmp_path / "c.cu").write_text(CONSTANTS)
    exe = tmp_path / "c"
    cmd = ["nvcc", "-std=c++17", "-arch=sm_80", f"-I{csrc_dir()}", str(tmp_path / "c.cu")]
    proc = subprocess.run([*cmd, "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    *configs, swz = lines.strip().split("\n")
    for line in configs:
        name, *numbers = line.split()
        cfg = CONFIGS[name]
        assert [int(v) for v in numbers] == [
            cfg.tile_n, cfg.tile_m, cfg.threads, cfg.stage_k, cfg.smem_bytes,
        ]  # fmt: skip
    expected = [swizzle(r, c, ch) for ch in (4, 8, 16, 32) for r in range(64) for c in range(ch)]
    assert [int(v) for v in swz.split()] == expected
    for ch in (4, 8, 16, 32):  # a permutation of each row; 8 rows hit 8 bank groups
        for r in range(64):
            assert sorted(swizzle(r, c, ch) for c in range(ch)) == list(range(ch))
        for r0 in range(0, 64, 8):
            for c in range(ch):
                banks = {(r * ch + swizzle(r, c, ch)) % 8 for r in range(r0, r0 + 8)}
                assert len(banks) == 8, (ch, r0, c)


ADDR_DUMP = r"""
#include "sparse24_gemm.cu"
#include <cstdio>
#include <cstdlib>
// Every offset of block (1, 1) of a problem M x N x K, in a fixed order.
template <class C> void dump(int M, int K) {
    typedef step::gemm::Addr<C> A;
    const int n0 = C::TILE_N, m0 = C::TILE_M;
    for (int kt = 0; kt < (K + C::STAGE_K - 1) / C::STAGE_K; ++kt) {
        for (int i = 0; i < C::TILE_N * C::W_CHUNKS; ++i)
            printf("%d %lld ", A::w_smem(i), A::w_global(i, n0, kt, K));
        for (int i = 0; i < C::TILE_M * C::X_CHUNKS; ++i) {
            int bytes;
            const long long g = A::x_global(i, m0, kt, M, K, bytes);
            printf("%d %lld %d ", A::x_smem(i), g, bytes);
        }
        for (int i = 0; i < C::TILE_N / 16 * C::META_CHUNKS; ++i)
            printf("%d %lld ", A::e_smem(i), A::e_global(i, n0, kt, K));
    }
    for (int wk = 0; wk < C::KSPLIT; ++wk)
        for (int lane = 0; lane < 32; ++lane) {
            for (int t = 0; t < C::TILE_N / 16; ++t)
                printf("%d %d %d ", A::a_smem(t, wk, 0, lane), A::a_smem(t, wk, 1, lane),
                       A::e_word(t, wk, lane));
            for (int t = 0; t < C::TILE_M / 8; ++t)
                printf("%d %d ", A::b_smem(t, wk, 0, lane), A::b_smem(t, wk, 1, lane));
        }
    printf("\n");
}
int main(int argc, char** argv) {
    using namespace step::gemm;
    const int M = atoi(argv[1]), K = atoi(argv[2]);
    dump<ConfigM8>(M, K); dump<ConfigM16>(M, K); dump<ConfigM64>(M, K); dump<ConfigLarge>(M, K);
}
"""


def py_dump(cfg, m: int, k: int) -> list[int]:
    """PyAddr's offsets in the order of ADDR_DUMP's dump<C>()."""
    ad, out = PyAddr(cfg), []
    n0, m0 = cfg.tile_n, cfg.tile_m
    for kt in range(-(-k // cfg.stage_k)):
        for i in range(cfg.tile_n * ad.wc):
            out += [ad.w_smem(i), ad.w_global(i, n0, kt, k)]
        for i in range(cfg.tile_m * ad.xc):
            out += [ad.x_smem(i), *ad.x_global(i, m0, kt, m, k)]
        for i in range(cfg.tile_n // 16 * ad.ec):
            out += [ad.e_smem(i), ad.e_global(i, n0, kt, k)]
    for wk in range(cfg.ksplit):
        for lane in range(32):
            for t in range(cfg.tile_n // 16):
                out += [ad.a_smem(t, wk, 0, lane), ad.a_smem(t, wk, 1, lane)]
                out.append(ad.e_word(t, wk, lane))
            for t in range(cfg.tile_m // 8):
                out += [ad.b_smem(t, wk, 0, lane), ad.b_smem(t, wk, 1, lane)]
    return out


@pytest.fixture(scope="module")
def addr_dump(tmp_path_factory):
    """The host program printing the .cu's offsets (built once)."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")
    root = tmp_path_factory.mktemp("addr")
    (root / "a.cu").write_text(ADDR_DUMP)
    cmd = ["nvcc", "-std=c++17", "-arch=sm_80", f"-I{csrc_dir()}", str(root / "a.cu")]
    proc = subprocess.run([*cmd, "-o", str(root / "a")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root / "a"


@pytest.mark.parametrize("m, k", [(200, 320), (9, 64), (1000, 1088)])
def test_cuda_address_arithmetic_matches_emulation(addr_dump, m, k):
    """The offsets the .cu computes (Addr<C>, run on the host) are the emulation's."""
    exe = addr_dump
    run = subprocess.run([str(exe), str(m), str(k)], capture_output=True, text=True, check=True)
    lines = run.stdout.strip().split("\n")
    assert len(lines) == 4
    for name, line in zip(("m8", "m16", "m64", "large"), lines, strict=True):
        assert [int(v) for v in line.split()] == py_dump(CONFIGS[name], m, k), name


# ---------------------------------------------------------------- refusals


def cpu_args(n: int, k: int, dtype=torch.float16, m: int = 3):
    return (
        torch.randn(m, k).to(dtype),
        torch.randn(n, k // 2).to(dtype),
        torch.zeros(n, k // 16, dtype=torch.int16),
        torch.randn(n).to(dtype),
    )


@pytest.mark.parametrize("n, k", [(32, 64), (96, 128), (64, 96), (128, 32)])
def test_bad_shapes_refused_before_launch(monkeypatch, n, k):
    monkeypatch.setitem(sys.modules, "cupy", None)  # importing CuPy would fail loudly
    with pytest.raises(ValueError, match=r"values has shape .*N % 64 == 0 and K % 64 == 0"):
        sparse24_linear_cuda(*cpu_args(n, k))
    with pytest.raises(ValueError, match="Pad the weight"):
        check_sparse24_gemm_args(*cpu_args(n, k))


def test_bad_dtypes_and_companions_refused():
    x, values, meta, bias = cpu_args(64, 128)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        check_sparse24_gemm_args(x.float(), values.float(), meta, bias)
    with pytest.raises(TypeError, match="one dtype"):
        check_sparse24_gemm_args(x.bfloat16(), values, meta, bias)
    with pytest.raises(TypeError, match="int16"):
        check_sparse24_gemm_args(x, values, meta.int(), bias)
    with pytest.raises(ValueError, match="last dim"):
        check_sparse24_gemm_args(x[:, :64], values, meta, bias)
    with pytest.raises(ValueError, match="meta has shape"):
        check_sparse24_gemm_args(x, values, meta[:, :4], bias)
    with pytest.raises(ValueError, match="bias has shape"):
        check_sparse24_gemm_args(x, values, meta, bias[:32])


def test_cpu_tensors_refused_before_launch(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ValueError, match="CUDA tensors"):
        sparse24_linear_cuda(*cpu_args(64, 128))


def test_registered_for_forced_use_only():
    from step.ops.dispatch import _IMPLS

    impl = _IMPLS["sparse24_linear"]["cuda"]
    assert impl.fn is sparse24_linear_cuda and not impl.auto
    w = torch.randn(64, 128).half()
    values, meta = step.to_sparse24(w)
    with step.use_backend("sparse24_linear=cuda"), pytest.raises(step.BackendError, match="CUDA"):
        step.sparse24_linear(torch.randn(2, 128).half(), values, meta)


def test_meta_conversion_is_cached_per_tensor_and_version():
    _, meta = to_sparse24_ref(torch.randn(64, 128).half())
    first = mma_meta(meta)
    assert mma_meta(meta) is first
    assert torch.equal(first, sparse24_meta_to_mma(meta))
    meta.copy_(to_sparse24_ref(torch.randn(64, 128).half())[1])  # in place: new _version
    second = mma_meta(meta)
    assert second is not first and torch.equal(second, sparse24_meta_to_mma(meta))
    other = meta.clone()
    assert mma_meta(other) is not second


# ---------------------------------------------------------------- GPU


def reference_outputs(x, w_dense, bias):
    """(float64 reference, the same product by PyTorch in x's dtype)."""
    ref64 = F.linear(x.double(), w_dense.double(), None if bias is None else bias.double())
    return ref64, F.linear(x, w_dense, bias)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 7, 128, 4096])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gpu_matches_reference(m, dtype, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    n = 64 * int(torch.randint(1, 40, (1,), generator=gen))
    k = 64 * int(torch.randint(1, 40, (1,), generator=gen))
    w = weight_with_zero_groups(n, k, dtype).cuda()
    values, meta = step.to_sparse24(w)
    w_dense = from_sparse24_ref(values.cpu(), meta.cpu()).cuda()
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")  # poisoned
    y = sparse24_linear_cuda(x, values, meta, bias, out=out)
    torch.cuda.synchronize()
    assert y.data_ptr() == out.data_ptr() and not torch.isnan(y).any()
    ref64, ref_lowp = reference_outputs(x, w_dense, bias)
    assert_within_tolerance_rule(y, ref_lowp, ref64, f"y m={m} n={n} k={k}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_gpu_through_the_op_with_batch_dims(dtype):
    n, k = 192, 320
    w = weight_with_zero_groups(n, k, dtype).cuda()
    values, meta = step.to_sparse24(w)
    x = torch.randn(2, 5, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype)
    with step.use_backend("sparse24_linear=cuda"):
        y = step.sparse24_linear(x, values, meta, bias)
    w_dense = torch.where(nm_mask_ref(w, 2, 4), w, torch.zeros_like(w))
    ref64, ref_lowp = reference_outputs(x, w_dense, bias)
    assert y.shape == (2, 5, n)
    assert_within_tolerance_rule(y, ref_lowp, ref64)


# ---------------------------------------------------------------- benchmark runner

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sparse24_gemm.py"


@pytest.mark.skipif(not BENCH.is_file(), reason="benchmarks/ not in this checkout")
def test_benchmark_refuses_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr
    help_text = subprocess.run(
        [sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--tokens" in help_text and "--shapes" in help_text


@pytest.mark.skipif(not BENCH.is_file(), reason="benchmarks/ not in this checkout")
def test_benchmark_counts_and_table(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import bench_sparse24_gemm as bench

    assert bench.gemm_flops(2, 64, 128) == 2 * 2 * 64 * 128
    assert bench.gemm_bytes("dense", 2, 64, 128) == 2 * 128 * 2 + 64 * 128 * 2 + 2 * 64 * 2
    assert bench.gemm_bytes("step-cuda", 2, 64, 128) == 2 * 128 * 2 + 64 * 64 * 2 + 64 * 16 + 256
    head = {"benchmark": "sparse24_gemm", "device_name": "X", "date": "d", "commit": "c",
            "dirty": False, "torch": "t", "triton": "t", "python": "p", "step": "s",
            "timer": "events", "reps": 3, "warmup": 1}  # fmt: skip
    base = {"n": 64, "k": 128, "m": 1, "dtype": "float16"}
    records = [
        {**base, "impl": "step-cuda", "median_ms": 1.0, "tflops": 2.0, "gbps": 3.0,
         "speedup_of_step_cuda": 1.0},
        {**base, "impl": "dense", "median_ms": 1.5, "tflops": 1.0, "gbps": 2.0,
         "speedup_of_step_cuda": 1.5},
        {**base, "impl": "cusparselt", "skipped": "unavailable: RuntimeError: no"},
    ]  # fmt: skip
    table = bench.markdown(head, records)
    assert "| 64x128 | 1 | float16 | 1.5 | unavailable | 1 | 2 | 3 | 1.5 | unavailable |" in table
    assert "cusparselt: unavailable: RuntimeError: no" in table
