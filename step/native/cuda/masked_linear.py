"""CUDA implementation of ``step::masked_linear`` for 2:4: the mask-learning forward pass
on sparse tensor cores.

``y = x @ (w * mask).T + bias`` with the 2:4 ``mask`` of ``w``: the masked weight is
packed with :func:`step.to_sparse24` (a pass over w writing half its bytes plus the
metadata; without a cached mask, ``step.nm_mask`` makes a second pass for the mask the
backward pass needs) and multiplied by the ``mma.sp`` GEMM of ``csrc/sparse24_gemm.cu``
(:mod:`step.native.cuda.sparse24_gemm`). The backward pass is the op's own (``dx`` through
``step::masked_linear_dx``, ``dw`` straight through the mask), unchanged.

The weight changes after every optimizer step, so it is packed on every forward pass; the
GEMM must beat dense by more than the packing costs, which pays off at training token
counts (thousands per step), not for a few tokens. Registered with ``auto=False`` like the
GEMM itself until both have run on a GPU: force it with ``STEP_BACKEND=masked_linear=cuda``
(``SparseLinear`` in the mask-learning phase then runs it).
"""

from __future__ import annotations

import torch

from ...ops.checks import HALF_DTYPES
from ...ops.dispatch import register
from ...ops.sparse24 import to_sparse24
from .sparse24_gemm import K_MULTIPLE, N_MULTIPLE, sparse24_linear_cuda


def check_masked_linear_cuda_args(w: torch.Tensor, n: int, m: int) -> None:
    """What the tensor-core path adds to ``check_masked_linear_args``: 2:4, fp16/bf16,
    a weight [N, K] with N % 64 == 0 and K % 64 == 0."""
    if (n, m) != (2, 4):
        raise ValueError(
            f"the CUDA masked_linear runs 2:4 on sparse tensor cores, not {n}:{m}; use the "
            "Triton kernel for other patterns (STEP_BACKEND=masked_linear=triton)"
        )
    if w.dtype not in HALF_DTYPES:
        raise TypeError(
            f"the CUDA masked_linear takes float16/bfloat16 x and w, got {w.dtype}; use "
            "STEP_BACKEND=masked_linear=triton for float32"
        )
    rows, k = w.shape
    if rows % N_MULTIPLE or k % K_MULTIPLE:
        raise ValueError(
            f"w has shape {tuple(w.shape)}; the CUDA masked_linear needs out_features % "
            f"{N_MULTIPLE} == 0 and in_features % {K_MULTIPLE} == 0. Pad the layer to "
            f"[{rows + (-rows) % N_MULTIPLE}, {k + (-k) % K_MULTIPLE}], or use "
            "STEP_BACKEND=masked_linear=triton"
        )


def masked_linear_cuda(
    x: torch.Tensor,
    w: torch.Tensor,
    n: int,
    m: int,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``masked_linear_ref``: x [..., K], w [N, K] fp16/bf16, bias [N] or
    None, mask [N, K] bool or None (then the 2:4 mask of w) -> (y [..., N], mask)."""
    check_masked_linear_cuda_args(w, n, m)
    if mask is None:
        mask = torch.ops.step.nm_mask(w, n, m)
        packed = w  # to_sparse24 keeps the same pair: the nm_mask rule
    else:
        packed = torch.where(mask, w, 0)  # a given mask is trusted, not re-ranked
    values, meta = to_sparse24(packed)
    return sparse24_linear_cuda(x, values, meta, bias), mask


register("masked_linear", "cuda", auto=False)(masked_linear_cuda)
