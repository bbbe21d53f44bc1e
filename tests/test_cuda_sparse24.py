"""The CUDA backend of the 2:4 pack/unpack (csrc/sparse24_pack.cu, step.native.cuda).

CPU: imports without CuPy, sources shipped, NVRTC compile (nvcc: scripts/check_csrc.sh
in .ci/run), clear errors, and the
kernels' per-word functions (``__host__ __device__``) run on the host through a small
nvcc-built harness, bit-compared with the reference. ``gpu``: the kernels themselves,
forced with ``step.use_backend("cuda")``, bit-compared with the reference.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import HALF_DTYPES, random_weights

import step
from step.native.cuda import loader
from step.native.sources import csrc_dir, cuda_sources
from step.ops import cutlass_meta_offsets_ref, from_sparse24_ref, to_sparse24_ref

INF_BITS = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def special_weights(rows: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Random weights whose groups include all-zero groups (both zero signs), one-nonzero
    groups, ties, and inf/NaN."""
    w = torch.randn(rows * k // 4, 4)  # one row per group
    w[0::5] = 0.0
    w[1::5] = -0.0
    w[2::5] = 0.0
    w[2::5, 3] = torch.randn(w[2::5].shape[0])  # one nonzero, at the last index
    w[3::5] = torch.tensor([0.5, -0.5, 0.5, -0.5])  # ties everywhere
    w[4::10, 1] = float("inf")
    w[4::10, 2] = float("nan")
    w[9::10, 0] = float("-inf")
    return w.reshape(rows, k).to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16).cpu()


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    assert torch.equal(bits(a), bits(b))


# ---------------------------------------------------------------- CPU


def test_importing_step_does_not_import_cupy():
    code = (
        "import sys, step, step.native.cuda, step.native.cuda.sparse24\n"
        "assert 'cupy' not in sys.modules, 'importing step imported cupy'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_cupy_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    with pytest.raises(ImportError, match=r"pip install 'step-sparsity\[cuda\]'"):
        loader.load_module("sparse24_pack.cu", (8, 0))


def test_old_gpu_is_a_runtime_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla T4")
    with pytest.raises(RuntimeError, match=r"7\.5.*8\.0"):
        loader._capability(0)


def test_launch_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA"):
        loader.launch("sparse24_pack.cu", "k", (1,), (1,), (), device=torch.device("cpu"))


def test_sources_are_shipped():
    names = [p.name for p in cuda_sources()]
    assert "sparse24_pack.cu" in names
    assert (csrc_dir() / "sparse24_layout.cuh").is_file()
    # CuPy's disk cache keys on the text: header edits must change it
    assert loader.module_source("sparse24_pack.cu").startswith(
        (csrc_dir() / "sparse24_pack.cu").read_text().rstrip()
    )


@pytest.mark.parametrize("backend", ["cuda", "sparse24_compress=cuda,sparse24_decompress=cuda"])
def test_forced_cuda_on_cpu_tensors_raises(backend):
    w = torch.randn(32, 64, dtype=torch.float16)
    values, meta = to_sparse24_ref(w)
    with step.use_backend(backend):
        with pytest.raises(step.BackendError, match="CUDA"):
            step.to_sparse24(w)
        with pytest.raises(step.BackendError, match="CUDA"):
            step.from_sparse24(values, meta)


def test_cuda_backend_is_never_chosen_automatically():
    from step.ops.dispatch import _IMPLS

    for op in ("sparse24_compress", "sparse24_decompress"):
        assert not _IMPLS[op]["cuda"].auto


NVCC = shutil.which("nvcc")


def _libnvrtc() -> ctypes.CDLL | None:
    candidates = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"]
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        candidates += sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
    for name in candidates:
        if "builtins" in name or ".alt." in name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("capability", [(8, 0), (9, 0)])
@pytest.mark.parametrize("source", [p.name for p in cuda_sources()])
def test_nvrtc_compiles(source, capability):
    """What CuPy will do at first use: NVRTC, the loader's options plus CuPy's own."""
    lib = _libnvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (LD_LIBRARY_PATH or the nvidia-cuda-nvrtc wheel)")
    options = loader.nvrtc_options(capability) + ("-ftz=true",)
    options += ("--device-as-default-execution-space",)
    prog = ctypes.c_void_p()
    src = loader.module_source(source).encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"kern.cu", 0, None, None) == 0
    try:
        argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        rc = lib.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    text = log.value.decode(errors="replace")
    assert rc == 0, text
    assert "warning" not in text.lower(), text


HARNESS = r"""
// Runs the kernels' per-word functions over every word on the host.
#include "sparse24_pack.cu"
#include <cstdio>
#include <cstdlib>
#include <vector>

static step::u16* buffer(std::vector<step::Vec16>& store, long long n, int shift) {
    store.resize((n + shift) / 8 + 2);
    return reinterpret_cast<step::u16*>(store.data()) + shift;
}
static void io(const char* path, step::u16* p, long long n, bool write) {
    FILE* f = fopen(path, write ? "wb" : "rb");
    if (!f || (write ? fwrite(p, 2, n, f) : fread(p, 2, n, f)) != size_t(n)) exit(2);
    fclose(f);
}
int main(int argc, char** argv) {
    // compress|decompress shift n_rows words_per_row inf_bits in0 in1 out0 out1
    // offsets 0 n_rows words_per_row 0 out0
    const bool compress = argv[1][0] == 'c';
    const int shift = atoi(argv[2]), rows = atoi(argv[3]), wpr = atoi(argv[4]);
    const unsigned inf_bits = unsigned(atoi(argv[5]));
    const long long n_words = (long long)rows * wpr;
    if (argv[1][0] == 'o') {
        std::vector<long long> offsets;
        for (long long r = 0; r < rows; ++r)
            for (long long c = 0; c < wpr; ++c) {
                long long r2, c2;
                offsets.push_back(step::meta_offset(r, c, rows));
                step::meta_logical(offsets.back(), rows, r2, c2);
                if (r2 != r || c2 != c) return 3;
            }
        FILE* f = fopen(argv[6], "wb");
        if (!f || fwrite(offsets.data(), 8, n_words, f) != size_t(n_words)) return 2;
        fclose(f);
        return 0;
    }
    std::vector<step::Vec16> s0, s1, s2;
    step::u16* dense = buffer(s0, n_words * 16, shift);
    step::u16* values = buffer(s1, n_words * 8, shift);
    step::i16* meta = reinterpret_cast<step::i16*>(buffer(s2, n_words, shift));
    if (compress) {
        io(argv[6], dense, n_words * 16, false);
        const bool aligned = step::aligned16(dense, values);
        for (long long t = 0; t < n_words; ++t)
            step::compress_word(dense, values, meta, t, rows, wpr, inf_bits, aligned);
        io(argv[8], values, n_words * 8, true);
        io(argv[9], reinterpret_cast<step::u16*>(meta), n_words, true);
    } else {
        io(argv[6], values, n_words * 8, false);
        io(argv[7], reinterpret_cast<step::u16*>(meta), n_words, false);
        const bool aligned = step::aligned16(values, dense);
        for (long long t = 0; t < n_words; ++t)
            step::decompress_word(values, meta, dense, t, rows, wpr, aligned);
        io(argv[8], dense, n_words * 16, true);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if NVCC is None or not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("nvcc and a host C++ compiler are needed to build the host harness")
    root = tmp_path_factory.mktemp("harness")
    (root / "harness.cu").write_text(HARNESS)
    cmd = [NVCC, "-std=c++17", f"-I{csrc_dir()}", "-Xcompiler", "-fno-strict-aliasing"]
    cmd += ["-O2", str(root / "harness.cu"), "-o", str(root / "harness")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root


def run_harness(root, compress: bool, shift: int, rows: int, k: int, inf_bits: int, inputs):
    paths = [root / f"in{i}.bin" for i in range(2)] + [root / f"out{i}.bin" for i in range(2)]
    for path, t in zip(paths, inputs, strict=False):
        bits(t).numpy().tofile(path)
    args = ["c" if compress else "d", shift, rows, k // 16, inf_bits, *paths]
    subprocess.run([str(root / "harness"), *map(str, args)], check=True)
    outputs = paths[2:4] if compress else paths[2:3]
    return [torch.from_numpy(np.fromfile(p, dtype=np.int16)) for p in outputs]


HOST_SHAPES = [(32, 64), (64, 128), (96, 320), (256, 512)]


@pytest.mark.parametrize("shape", [*HOST_SHAPES, (4096, 4096)])
def test_meta_offsets_on_host_match_reference(harness, shape):
    """meta_offset() is cutlass_meta_offsets_ref, and meta_logical() its inverse."""
    rows, k = shape
    out = harness / "offsets.bin"
    subprocess.run(
        [str(harness / "harness"), "o", "0", str(rows), str(k // 16), "0", str(out)], check=True
    )
    got = torch.from_numpy(np.fromfile(out, dtype=np.int64))
    assert torch.equal(got, cutlass_meta_offsets_ref(rows, k // 16))


def weights_of_kind(shape, dtype, kind):
    """``kind``: "random", "ties" (few distinct values) or "special" (zeros, inf, NaN...)."""
    if kind == "special":
        return special_weights(*shape, dtype)
    return random_weights(shape, dtype, ties=kind == "ties")


@pytest.mark.parametrize("shift", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", HOST_SHAPES)
def test_kernel_words_on_host_match_reference(harness, shape, dtype, kind, shift):
    rows, k = shape
    w = weights_of_kind(shape, dtype, kind)
    values, meta = to_sparse24_ref(w)
    got_values, got_meta = run_harness(harness, True, shift, rows, k, INF_BITS[dtype], [w])
    assert torch.equal(got_values, bits(values).reshape(-1))
    assert torch.equal(got_meta, bits(meta).reshape(-1))

    (dense,) = run_harness(harness, False, shift, rows, k, 0, [values, meta])
    assert torch.equal(dense, bits(from_sparse24_ref(values, meta)).reshape(-1))


# ---------------------------------------------------------------- GPU

GPU_SHAPES = [(32, 64), (64, 128), (96, 320), (4096, 4096)]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_cuda_matches_reference(shape, dtype, kind):
    rows, k = shape
    w = weights_of_kind(shape, dtype, kind)
    values, meta = to_sparse24_ref(w)
    with step.use_backend("cuda"):
        got_values, got_meta = step.to_sparse24(w.cuda())
        dense = step.from_sparse24(got_values, got_meta)
    torch.cuda.synchronize()
    assert got_values.is_cuda and got_meta.is_cuda and dense.is_cuda
    assert_bits_equal(got_values, values)
    assert torch.equal(got_meta.cpu(), meta)
    assert_bits_equal(dense, from_sparse24_ref(values, meta))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cuda_misaligned_inputs(dtype):
    """Views starting 2 bytes into their storage take the kernels' scalar path."""
    rows, k = 64, 192
    w_storage = random_weights((rows * k + 1,), dtype, device="cuda")
    w = w_storage[1:].view(rows, k)
    values, meta = to_sparse24_ref(w.cpu())
    v_storage = torch.empty(rows * k // 2 + 1, dtype=dtype, device="cuda")
    v = v_storage[1:].view(rows, k // 2)
    v.copy_(values)
    with step.use_backend("cuda"):
        got_values, got_meta = step.to_sparse24(w)
        dense = step.from_sparse24(v, meta.cuda())
    assert_bits_equal(got_values, values)
    assert torch.equal(got_meta.cpu(), meta)
    assert_bits_equal(dense, from_sparse24_ref(values, meta))


@pytest.mark.gpu
def test_cuda_runs_on_the_current_stream():
    w = random_weights((128, 256), torch.float16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), step.use_backend("cuda"):
        values, meta = step.to_sparse24(w)
        dense = step.from_sparse24(values, meta)
    side.synchronize()
    ref_values, ref_meta = to_sparse24_ref(w.cpu())
    assert_bits_equal(values, ref_values)
    assert torch.equal(meta.cpu(), ref_meta)
    assert_bits_equal(dense, from_sparse24_ref(ref_values, ref_meta))
