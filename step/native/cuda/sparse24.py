"""CUDA C++ launchers of ``step::sparse24_compress`` / ``step::sparse24_decompress``.

Kernels: ``csrc/sparse24_pack.cu``, compiled through CuPy at first use
(:mod:`step.native.cuda`). Same contracts as the Triton launchers in
``step.kernels.sparse24_pack``; the references are ``to_sparse24_ref`` and
``from_sparse24_ref`` in :mod:`step.ops.sparse24`.

Registered with ``auto=False``: not yet validated on a GPU, so they run only when forced
(``STEP_BACKEND=cuda`` or ``step.use_backend("cuda")``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...kernels.float_bits import magnitude_constants
from ...ops.dispatch import register
from .loader import launch

SOURCE = "sparse24_pack.cu"
THREADS = 256  # one meta word (16 dense elements) per thread per step
MAX_BLOCKS = 2**31 - 1


def _grid(n_words: int) -> tuple[int]:
    return (min(-(-n_words // THREADS), MAX_BLOCKS),)


def to_sparse24_cuda(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` contiguous CUDA [rows, K] fp16/bf16 (rows % 32 == 0, K % 64 == 0)
    -> (values [rows, K/2] of w.dtype, meta [rows, K/16] int16, CUTLASS order)."""
    rows, k = w.shape
    values = torch.empty((rows, k // 2), dtype=w.dtype, device=w.device)
    meta = torch.empty((rows, k // 16), dtype=torch.int16, device=w.device)
    n_words = rows * (k // 16)
    if n_words:
        _, inf_bits = magnitude_constants(w.dtype)
        args = (
            w, values, meta,
            np.int64(n_words), np.int32(rows), np.int32(k // 16), np.int32(inf_bits),
        )  # fmt: skip
        launch(
            SOURCE, "sparse24_compress_kernel", _grid(n_words), (THREADS,), args, device=w.device
        )
    return values, meta


def from_sparse24_cuda(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """(values [rows, K/2] fp16/bf16, meta [rows, K/16] int16), contiguous, on one CUDA
    device -> dense [rows, K] of values.dtype, +0.0 where pruned."""
    rows, half_k = values.shape
    dense = torch.empty((rows, half_k * 2), dtype=values.dtype, device=values.device)
    n_words = meta.numel()
    if n_words:
        args = (values, meta, dense, np.int64(n_words), np.int32(rows), np.int32(meta.shape[1]))
        launch(
            SOURCE, "sparse24_decompress_kernel", _grid(n_words), (THREADS,), args,
            device=values.device,
        )  # fmt: skip
    return dense


register("sparse24_compress", "cuda", auto=False)(to_sparse24_cuda)
register("sparse24_decompress", "cuda", auto=False)(from_sparse24_cuda)
