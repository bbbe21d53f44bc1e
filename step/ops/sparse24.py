"""``step::sparse24_compress`` / ``step::sparse24_decompress``: 2:4 in the CUTLASS format.

A fp16/bf16 weight ``[rows, K]`` (rows % 32 == 0, K % 64 == 0, the shapes PyTorch's
``SparseSemiStructuredTensorCUTLASS`` accepts) becomes:

* ``values`` ``[rows, K/2]``, the weight's dtype: the two kept values of each group of 4,
  in index order;
* ``meta`` ``[rows, K/16]`` int16: per group the 4-bit code ``i0 | i1 << 2`` (i0 < i1,
  the kept positions), four groups per word (group q of the word in bits 4q..4q+3),
  words reordered as CUTLASS sparse GEMMs read them (see :func:`cutlass_meta_offsets_ref`).

Masking follows :func:`step.nm_mask` (2 largest ``|w|``, ties to the lower index), so a
group with fewer than two nonzeros still gets two distinct indices. PyTorch's decoder
``torch.sparse._semi_structured_conversions.sparse_semi_structured_to_dense_cutlass``
reproduces ``where(nm_mask(w), w, 0)`` exactly from this output.
"""

from __future__ import annotations

import functools

import torch

from .checks import HALF_DTYPES, call_op, check_same_device, check_tensor
from .dispatch import choose, register
from .nm_compress import nm_compress_ref, nm_decompress_ref

ROW_MULTIPLE = 32
COL_MULTIPLE = 64
_NIBBLE_SHIFTS = (0, 4, 8, 12)


@functools.lru_cache(maxsize=64)
def _meta_offsets(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    return cutlass_meta_offsets_ref(rows, cols, device)


def cutlass_meta_offsets_ref(
    rows: int, cols: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Offsets in the reordered meta buffer of the logical words ``(r, c)``, row-major.

    Returns int64 ``[rows * cols]``: word ``(r, c)`` of the logical ``[rows, cols]``
    int16 metadata lives at ``meta.view(-1)[offsets[r * cols + c]]``. The order is
    CUTLASS's for 16-bit metadata: rows permuted within blocks of 32
    (``r -> 32*(r//32) + 4*(r%8) + (r%32)//8``), then within each 2x2 block of words the
    off-diagonal pair swapped, then column-major interleaved by 2 columns.
    """
    r = torch.arange(rows, device=device).repeat_interleave(cols)
    c = torch.arange(cols, device=device).repeat(rows)
    dst_row = r // 32 * 32 + (r % 8) * 4 + (r % 32) // 8
    swap = ((dst_row % 2 == 0) & (c % 2 == 1)).long() - ((dst_row % 2 == 1) & (c % 2 == 0)).long()
    dst_row = dst_row + swap
    dst_col = c - swap
    return (dst_col // 2) * rows * 2 + dst_row * 2 + dst_col % 2


def to_sparse24_ref(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: ``w`` [rows, K] fp16/bf16 -> (values [rows, K/2], meta [rows, K/16] int16)."""
    rows, k = w.shape
    values, positions = nm_compress_ref(w, 2, 4)
    pos = positions.view(rows, k // 4, 2).int()
    codes = (pos[..., 0] | (pos[..., 1] << 2)).view(rows, k // 16, 4)
    shifts = torch.tensor(_NIBBLE_SHIFTS, device=w.device, dtype=torch.int32)
    words = (codes << shifts).sum(-1, dtype=torch.int32)  # disjoint bits: sum == or
    words = torch.where(words >= 1 << 15, words - (1 << 16), words).to(torch.int16)
    meta = torch.empty(rows * (k // 16), dtype=torch.int16, device=w.device)
    meta[_meta_offsets(rows, k // 16, w.device)] = words.view(-1)
    return values, meta.view(rows, k // 16)


def sparse24_positions_ref(meta: torch.Tensor) -> torch.Tensor:
    """Decode CUTLASS-ordered ``meta`` [rows, K/16] to kept positions uint8 [rows, K/2]."""
    rows, cols = meta.shape
    offsets = _meta_offsets(rows, cols, meta.device)  # cached: decoded on every reference call
    words = meta.reshape(-1)[offsets].view(rows, cols).int() & 0xFFFF
    shifts = torch.tensor(_NIBBLE_SHIFTS, device=meta.device, dtype=torch.int32)
    codes = (words[..., None] >> shifts) & 0xF  # [rows, cols, 4]
    positions = torch.stack((codes & 3, codes >> 2), dim=-1)  # [rows, cols, 4, 2]
    return positions.reshape(rows, cols * 8).to(torch.uint8)


def from_sparse24_ref(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Reference: (values [rows, K/2], meta [rows, K/16]) -> dense [rows, K]."""
    return nm_decompress_ref(values, sparse24_positions_ref(meta), 2, 4)


def check_dense24_args(w: object) -> None:
    check_tensor(w, "w", dtypes=HALF_DTYPES, ndim=2)
    assert isinstance(w, torch.Tensor)
    rows, k = w.shape
    if rows % ROW_MULTIPLE or k % COL_MULTIPLE:
        raise ValueError(
            f"w has shape {(rows, k)}; the CUTLASS 2:4 format needs rows % {ROW_MULTIPLE} == 0 "
            f"and columns % {COL_MULTIPLE} == 0. Pad w to "
            f"{(rows + (-rows) % ROW_MULTIPLE, k + (-k) % COL_MULTIPLE)} with zeros, or use "
            "step.nm_compress(w, 2, 4), which takes any shape"
        )


def check_sparse24_args(values: object, meta: object) -> None:
    check_tensor(values, "values", dtypes=HALF_DTYPES, ndim=2)
    check_tensor(meta, "meta", dtypes=(torch.int16,), ndim=2)
    assert isinstance(values, torch.Tensor) and isinstance(meta, torch.Tensor)
    rows, half_k = values.shape
    if rows % ROW_MULTIPLE or half_k % (COL_MULTIPLE // 2):
        raise ValueError(
            f"values has shape {(rows, half_k)}; a 2:4 weight [rows, K] gives values "
            f"[rows, K/2] with rows % {ROW_MULTIPLE} == 0 and K % {COL_MULTIPLE} == 0. "
            "Make values and meta with step.to_sparse24"
        )
    if meta.shape != (rows, half_k // 8):
        raise ValueError(
            f"meta has shape {tuple(meta.shape)} but values {(rows, half_k)} needs meta "
            f"{(rows, half_k // 8)} (one int16 word per 16 dense columns); "
            "make both with step.to_sparse24"
        )
    check_same_device(values=values, meta=meta)


register("sparse24_compress", "reference")(to_sparse24_ref)


@register("sparse24_compress", "triton")
def _to_sparse24_triton(*args):
    from step.kernels.sparse24_pack import to_sparse24_triton  # Triton loads at the first call

    return to_sparse24_triton(*args)


register("sparse24_decompress", "reference")(from_sparse24_ref)


@register("sparse24_decompress", "triton")
def _from_sparse24_triton(*args):
    from step.kernels.sparse24_pack import from_sparse24_triton  # Triton loads at the first call

    return from_sparse24_triton(*args)


@torch.library.custom_op("step::sparse24_compress", mutates_args=())
def _sparse24_compress_op(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_dense24_args(w)
    w = w.contiguous()
    _, impl = choose("sparse24_compress", w.device, w)
    return impl(w)


@_sparse24_compress_op.register_fake
def _(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_dense24_args(w)
    rows, k = w.shape
    return w.new_empty((rows, k // 2)), w.new_empty((rows, k // 16), dtype=torch.int16)


@torch.library.custom_op("step::sparse24_decompress", mutates_args=())
def _sparse24_decompress_op(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    check_sparse24_args(values, meta)
    values, meta = values.contiguous(), meta.contiguous()
    _, impl = choose("sparse24_decompress", values.device, values, meta)
    return impl(values, meta)


@_sparse24_decompress_op.register_fake
def _(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    check_sparse24_args(values, meta)
    return values.new_empty((values.shape[0], values.shape[1] * 2))


def to_sparse24(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``w`` to 2:4 and pack it in the CUTLASS format, in one pass.

    Args:
        w: float16/bfloat16 ``[rows, K]`` with ``rows % 32 == 0`` and ``K % 64 == 0``;
            it need not be 2:4 already (the :func:`step.nm_mask` rule picks the kept pair).

    Returns:
        ``(values, meta)``: ``values`` ``[rows, K/2]`` of ``w``'s dtype, ``meta``
        ``[rows, K/16]`` int16 in CUTLASS order (module docstring).
    """
    return call_op(torch.ops.step.sparse24_compress, check_dense24_args, w)


def from_sparse24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Dense ``[rows, K]`` weight from :func:`to_sparse24` output; +0.0 where pruned."""
    return call_op(torch.ops.step.sparse24_decompress, check_sparse24_args, values, meta)
