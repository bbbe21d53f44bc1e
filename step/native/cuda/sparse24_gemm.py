"""CUDA ``mma.sp`` implementation of ``step::sparse24_linear`` (``csrc/sparse24_gemm.cu``).

``y = x @ W.T + bias`` with W a 2:4 weight from :func:`step.to_sparse24`, on sparse
tensor cores (``mma.sp::ordered_metadata`` m16n8k32, fp16/bf16, fp32 accumulate, sm_80+).

**Layouts.** The kernel reads ``values`` [N, K/2] exactly as ``to_sparse24`` makes them.
The metadata is converted once per weight from the CUTLASS order to the kernel's "mma"
layout, int32 ``[N/16, K/64, 32]`` (:func:`sparse24_meta_to_mma`): word ``(rb, kb, lane)``
with ``lane = 4g + 2s + h`` is the metadata register that lane ``lane`` hands to
``mma.sp`` for rows ``16rb + g`` (bits 0-15) and ``16rb + g + 8`` (bits 16-31) and the
16 columns ``64kb + 32s + 16h ..`` of K, each 16 bits the CUTLASS-logical word (codes
``i0 | i1 << 2`` of four 4-groups). One coalesced 128-byte load per warp covers a
16 x 64 block: sparsity selector 0 reads the words of lanes ``4g, 4g+1`` and selector 1
those of ``4g+2, 4g+3``. :func:`sparse24_meta_from_mma` is the inverse.

**Caching.** :func:`mma_meta` converts on the meta tensor's device (plain PyTorch) and
keeps the result while the meta tensor lives: keyed on the tensor's identity (a weak
reference) and its ``_version``, so an in-place update of the meta reconverts. The cache
holds one extra int32 copy of the metadata per weight (1/8 of the fp16 values' bytes).

**Tiles.** :data:`CONFIGS` mirrors the ``Config`` typedefs of ``sparse24_gemm.cu``;
:func:`choose_config` picks one per call from the token count M and N (untuned: no GPU
has run this kernel yet).

Registered with ``auto=False``: never chosen automatically; force it with
``STEP_BACKEND=cuda`` (or ``STEP_BACKEND=sparse24_linear=cuda``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ...kernels.shapes import as_matrix
from ...ops.checks import HALF_DTYPES
from ...ops.dispatch import register
from ...ops.sparse24 import _meta_offsets
from .loader import launch

SOURCE = "sparse24_gemm.cu"
N_MULTIPLE = 64
K_MULTIPLE = 64
MAX_GRID_Y = 65535
_KERNEL_DTYPES = {torch.float16: "f16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class TileConfig:
    """One row of the tile table (the template arguments of ``Config`` in the .cu)."""

    name: str
    warp_rows: int  # 16-row MMA tiles per warp (weight rows)
    warp_toks: int  # 8-token MMA tiles per warp
    warps_n: int
    warps_m: int
    ksplit: int  # warps splitting each stage's K
    stages: int  # cp.async pipeline depth

    @property
    def threads(self) -> int:
        return 32 * self.warps_n * self.warps_m * self.ksplit

    @property
    def tile_n(self) -> int:
        """Weight rows (output features) per block."""
        return 16 * self.warp_rows * self.warps_n

    @property
    def tile_m(self) -> int:
        """Tokens per block."""
        return 8 * self.warp_toks * self.warps_m

    @property
    def stage_k(self) -> int:
        """Logical K per pipeline stage."""
        return 64 * self.ksplit

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory: the larger of the stage ring, the split-K reduction
        buffer and the staged output tile (same formula as ``Config::SMEM_BYTES``)."""
        stage = (
            self.tile_n * self.stage_k // 2 * 2  # values, 2 bytes each
            + self.tile_m * self.stage_k * 2  # x
            + self.tile_n // 16 * self.ksplit * 128  # metadata
        )
        acc = self.warp_rows * self.warp_toks * 4
        reduce = (self.ksplit - 1) * self.warps_n * self.warps_m * acc * 32 * 4
        out = self.tile_m * (self.tile_n + 8) * 2
        return max(self.stages * stage, reduce, out)

    def kernel(self, dtype: torch.dtype) -> str:
        """Name of the ``extern "C"`` kernel for ``dtype``."""
        return f"sparse24_gemm_{_KERNEL_DTYPES[dtype]}_{self.name}"


CONFIGS: dict[str, TileConfig] = {
    c.name: c
    for c in (
        TileConfig("m8", 1, 1, 1, 1, ksplit=4, stages=4),  # 16 x 8 tile, 4 warps split K
        TileConfig("m16", 1, 2, 1, 1, ksplit=4, stages=4),  # 16 x 16
        TileConfig("m64", 2, 4, 2, 2, ksplit=1, stages=4),  # 64 x 64
        TileConfig("large", 4, 4, 2, 4, ksplit=1, stages=4),  # 128 x 128, 8 warps
    )
}
"""The tile table, by name: weight-row tile x token tile. Decode shapes (<= 16 tokens)
use thin 16-row tiles with K split over 4 warps, so that N/16 blocks stream W."""

LARGE_MIN_TOKENS = 257
"""Below this many tokens the 128 x 128 tile would leave most SMs idle; use 64 x 64."""


def choose_config(m: int, n: int) -> TileConfig:
    """The tile configuration for ``m`` tokens and ``n`` output features (n % 64 == 0)."""
    if m <= 8:
        return CONFIGS["m8"]
    if m <= 16:
        return CONFIGS["m16"]
    if m >= LARGE_MIN_TOKENS and n % CONFIGS["large"].tile_n == 0:
        return CONFIGS["large"]
    return CONFIGS["m64"]


# ---------------------------------------------------------------- metadata layout


def sparse24_meta_to_mma(meta: torch.Tensor) -> torch.Tensor:
    """CUTLASS-ordered ``meta`` int16 [N, K/16] -> the kernel's int32 [N/16, K/64, 32].

    Needs N % 32 == 0 (the CUTLASS order) and N % 16 == 0, K % 64 == 0. Plain PyTorch on
    ``meta``'s device. See the module docstring for the layout.
    """
    rows, cols = meta.shape
    if rows % 32 or cols % 4:
        raise ValueError(
            f"meta has shape {(rows, cols)}; the mma layout needs rows % 32 == 0 and "
            "K % 64 == 0 (meta columns % 4 == 0)"
        )
    offsets = _meta_offsets(rows, cols, meta.device)
    words = meta.reshape(-1)[offsets].view(rows, cols).to(torch.int64) & 0xFFFF
    # row = 16 rb + 8 hi + g, column = 4 kb + 2 s + h  ->  (rb, kb, g, s, h, hi)
    words = words.view(rows // 16, 2, 8, cols // 4, 2, 2).permute(0, 3, 2, 4, 5, 1)
    packed = words[..., 0] | (words[..., 1] << 16)
    packed = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)
    return packed.reshape(rows // 16, cols // 4, 32).contiguous()


def sparse24_meta_from_mma(meta_mma: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sparse24_meta_to_mma`: int32 [N/16, K/64, 32] -> int16 [N, K/16]."""
    rb, kb, lanes = meta_mma.shape
    if lanes != 32:
        raise ValueError(f"meta_mma has shape {tuple(meta_mma.shape)}; expected [N/16, K/64, 32]")
    rows, cols = rb * 16, kb * 4
    v = meta_mma.to(torch.int64) & 0xFFFFFFFF
    w = torch.stack((v & 0xFFFF, v >> 16), dim=-1).view(rb, kb, 8, 2, 2, 2)
    w = w.permute(0, 5, 2, 1, 3, 4).reshape(rows, cols)  # (rb, hi, g, kb, s, h)
    w = torch.where(w >= 1 << 15, w - (1 << 16), w).to(torch.int16)
    meta = torch.empty(rows * cols, dtype=torch.int16, device=meta_mma.device)
    meta[_meta_offsets(rows, cols, meta_mma.device)] = w.reshape(-1)
    return meta.view(rows, cols)


_MMA_META: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}


def mma_meta(meta: torch.Tensor) -> torch.Tensor:
    """:func:`sparse24_meta_to_mma` of ``meta``, converted once and cached while ``meta``
    lives and is not modified in place (its ``_version`` is part of the key)."""
    key = id(meta)
    entry = _MMA_META.get(key)
    if entry is not None and entry[0]() is meta and entry[1] == meta._version:
        return entry[2]
    converted = sparse24_meta_to_mma(meta)
    _MMA_META[key] = (weakref.ref(meta, lambda _, k=key: _MMA_META.pop(k, None)), meta._version,
                      converted)  # fmt: skip
    return converted


# ---------------------------------------------------------------- launcher


def check_sparse24_gemm_args(
    x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Refuse what the kernel cannot run, before anything touches a GPU or CuPy.

    x [..., K], values [N, K/2], meta [N, K/16] int16, bias [N] or None; fp16/bf16;
    N % 64 == 0 and K % 64 == 0.
    """
    if values.dtype not in HALF_DTYPES or x.dtype != values.dtype:
        raise TypeError(
            f"the CUDA 2:4 GEMM takes float16/bfloat16 x and values of one dtype; got x "
            f"{x.dtype}, values {values.dtype}"
        )
    if meta.dtype != torch.int16:
        raise TypeError(f"meta must be int16 (from step.to_sparse24), got {meta.dtype}")
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"bias must be {x.dtype} like x, got {bias.dtype}")
    if values.dim() != 2:
        raise ValueError(f"values must be [N, K/2], got shape {tuple(values.shape)}")
    n, k = values.shape[0], values.shape[1] * 2
    if n % N_MULTIPLE or k % K_MULTIPLE:
        raise ValueError(
            f"values has shape {tuple(values.shape)}, i.e. a weight [N, K] = [{n}, {k}]; the "
            f"CUDA 2:4 GEMM needs N % {N_MULTIPLE} == 0 and K % {K_MULTIPLE} == 0. Pad the "
            f"weight with zero rows/columns to [{n + (-n) % N_MULTIPLE}, "
            f"{k + (-k) % K_MULTIPLE}] before step.to_sparse24, or run this layer on another "
            "backend (STEP_BACKEND=sparse24_linear=triton or =reference)"
        )
    if x.shape[-1] != k:
        raise ValueError(f"x has shape {tuple(x.shape)}; its last dim must be K = {k}")
    if meta.shape != (n, k // 16):
        raise ValueError(f"meta has shape {tuple(meta.shape)}; expected {(n, k // 16)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({n},)")


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous with a 16-byte aligned start (cp.async and vector stores need it);
    copied only if it is not already."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def sparse24_linear_cuda(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x [..., K] @ W.T + bias`` -> ``[..., N]`` of x's dtype on sparse tensor cores.

    ``values`` [N, K/2] fp16/bf16 and ``meta`` [N, K/16] int16 from :func:`step.to_sparse24`
    (codes are not re-checked: ``mma.sp::ordered_metadata`` accepts only increasing index
    pairs, which every step compressor and ``step.load_sparse``'s checks guarantee),
    ``bias`` [N] or None; all on one CUDA device (sm_80+); N % 64 == 0, K % 64 == 0.
    ``out``: optional contiguous [M, N] result buffer (M = tokens), every element written.
    """
    check_sparse24_gemm_args(x, values, meta, bias)
    if x.device.type != "cuda":
        raise ValueError(f"the CUDA 2:4 GEMM needs CUDA tensors, x is on {x.device}")
    n, k = values.shape[0], values.shape[1] * 2
    x2 = _aligned(as_matrix(x))
    m = x2.shape[0]
    if out is None:
        y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        if out.shape != (m, n) or out.dtype != x.dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous {x.dtype} [{m}, {n}] tensor")
        if out.device != x.device or out.data_ptr() % 16:
            raise ValueError("out must be on x's device and 16-byte aligned")
        y = out
    if m == 0:
        return y.view(*x.shape[:-1], n)
    cfg = choose_config(m, n)
    grid = (n // cfg.tile_n, -(-m // cfg.tile_m))
    if grid[1] > MAX_GRID_Y:
        raise ValueError(
            f"x has {m} tokens; the CUDA 2:4 GEMM takes at most {MAX_GRID_Y * cfg.tile_m} "
            "per call: split x along its token dimension"
        )
    bias_arg = np.uint64(0) if bias is None else _aligned(bias)
    args = (
        x2, _aligned(values), mma_meta(meta), bias_arg, y, np.int32(m), np.int32(n), np.int32(k),
    )  # fmt: skip
    launch(
        SOURCE, cfg.kernel(x.dtype), grid, (cfg.threads,), args,
        device=x.device, shared_mem=cfg.smem_bytes,
    )  # fmt: skip
    return y.view(*x.shape[:-1], n)


register("sparse24_linear", "cuda", auto=False)(sparse24_linear_cuda)
