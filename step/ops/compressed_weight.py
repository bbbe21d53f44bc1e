"""``CompressedWeight``: a 2-D N:M weight in its best storage layout.

Two layouts, named in exported files:

* ``"cutlass_2to4"``: :func:`step.to_sparse24` ``(values [rows, K/2], meta [rows, K/16]
  int16)``; 2:4 only, float16/bfloat16, ``rows % 32 == 0``, ``K % 64 == 0``. Runs on
  :func:`step.sparse24_linear` (tensor cores where available).
* ``"nm_positions"``: :func:`step.nm_compress` ``(values [rows, K*n/m], indices)``; any
  N:M and dtype. In memory the positions are bit-packed (``meta`` is int32
  ``[rows, words]``, :mod:`step.kernels.nm_positions`), which is what
  :func:`step.nm_linear` streams; files hold them as uint8 ``indices``
  (:meth:`CompressedWeight.file_tensors`, :func:`from_file_tensors`).

Layers and export use :func:`compress_weight`, which picks the first layout that fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.nm_positions import unpack_positions
from .checks import HALF_DTYPES, call_op, check_nm, check_tensor
from .dispatch import choose, forced_backend
from .nm_compress import NMCompressed, nm_compress, nm_decompress
from .nm_linear import check_nm_linear_args
from .sparse24 import COL_MULTIPLE, ROW_MULTIPLE, from_sparse24, to_sparse24
from .sparse24_linear import check_sparse24_linear_args

CUTLASS_2TO4 = "cutlass_2to4"
NM_POSITIONS = "nm_positions"
LAYOUTS = (CUTLASS_2TO4, NM_POSITIONS)


def best_layout(shape: tuple[int, ...], dtype: torch.dtype, n: int, m: int) -> str:
    """The layout :func:`compress_weight` picks for a ``[rows, K]`` weight."""
    rows, k = shape
    fits_cutlass = rows % ROW_MULTIPLE == 0 and k % COL_MULTIPLE == 0
    if (n, m) == (2, 4) and dtype in HALF_DTYPES and fits_cutlass:
        return CUTLASS_2TO4
    return NM_POSITIONS


@dataclass(frozen=True)
class CompressedWeight:
    """A ``[rows, K]`` weight, N:M along K, in ``layout``.

    ``meta`` is the CUTLASS metadata (``cutlass_2to4``) or the bit-packed int32
    positions (``nm_positions``).
    """

    layout: str
    values: torch.Tensor
    meta: torch.Tensor
    n: int
    m: int

    @property
    def shape(self) -> tuple[int, int]:
        rows, kept = self.values.shape
        return rows, kept // self.n * self.m

    def dense(self) -> torch.Tensor:
        """The weight, +0.0 at pruned entries."""
        if self.layout == CUTLASS_2TO4:
            return from_sparse24(self.values, self.meta)
        return nm_decompress(self.nm_compressed())

    def nm_compressed(self) -> NMCompressed:
        """The ``nm_positions`` weight as an :class:`NMCompressed` (positions unpacked)."""
        indices = unpack_positions(self.meta, self.m, self.values.shape[1])
        return NMCompressed(self.values, indices, self.n, self.m)

    def file_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, meta)`` as files hold them: CUTLASS metadata, or uint8 positions."""
        if self.layout == CUTLASS_2TO4:
            return self.values, self.meta
        return self.values, self.nm_compressed().indices

    def _op_args(self, x: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        if self.layout == CUTLASS_2TO4:
            return (x, self.values, self.meta, bias)
        return (x, self.values, self.meta, self.n, self.m, bias)

    def linear(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x [..., K] @ W.T + bias`` -> ``[..., rows]``.

        ``dense``: this weight dense ``[rows, K]`` where the caller keeps it (a frozen
        layer's pruned weight), multiplied instead of decoding where only the reference
        would run (the op decides).
        """
        check = check_sparse24_linear_args if self.layout == CUTLASS_2TO4 else check_nm_linear_args
        args = (*self._op_args(x, bias), dense)
        return call_op(getattr(torch.ops.step, self.op), check, *args)

    @property
    def op(self) -> str:
        """The ``step::`` op that multiplies by this weight."""
        return "sparse24_linear" if self.layout == CUTLASS_2TO4 else "nm_linear"

    def runs_sparse(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
        """Whether :meth:`linear` on ``x`` runs a kernel that reads the compressed weight
        (any backend but ``reference``, whose decode-then-matmul only costs time), or the
        reference is forced (``STEP_BACKEND``, :func:`step.use_backend`). For reports
        (benchmarks): :meth:`linear` does not ask, its op decides."""
        if forced_backend(self.op) is not None:
            return True
        return choose(self.op, x.device, *self._op_args(x, bias))[0] != "reference"

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.meta))


def compress_weight(w: torch.Tensor, n: int, m: int, layout: str | None = None) -> CompressedWeight:
    """Compress a 2-D weight ``[rows, K]`` (groups along K) to ``layout`` (default: the
    :func:`best_layout`). Entries outside the :func:`step.nm_mask` are dropped."""
    check_nm(n, m)
    check_tensor(w, "w", ndim=2)
    layout = layout or best_layout(tuple(w.shape), w.dtype, n, m)
    if layout == CUTLASS_2TO4:
        values, meta = to_sparse24(w)
    elif layout == NM_POSITIONS:
        c = nm_compress(w, n, m)
        values, meta = c.values, c.positions
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return CompressedWeight(layout, values, meta, n, m)


def from_file_tensors(
    layout: str, values: torch.Tensor, meta: torch.Tensor, n: int, m: int
) -> CompressedWeight:
    """The in-memory weight of :meth:`CompressedWeight.file_tensors` (positions packed)."""
    if layout == NM_POSITIONS:
        meta = NMCompressed(values, meta, n, m).positions
    return CompressedWeight(layout, values, meta, n, m)
