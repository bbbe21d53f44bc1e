"""``step::nm_compress`` / ``step::nm_decompress``: the general N:M compressed format.

A weight ``[..., K]`` becomes ``values [..., K*n/m]`` (its dtype) and ``indices``
(uint8, same shape): for each group of ``m``, the ``n`` kept values and their positions
``0..m-1`` within the group, ascending. Decompression puts +0.0 everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..kernels.float_bits import bits_view
from ..kernels.shapes import as_matrix
from .checks import call_op, check_nm, check_same_device, check_tensor
from .dispatch import choose, register
from .nm_mask import check_nm_mask_args, nm_mask_ref


@dataclass(frozen=True)
class NMCompressed:
    """An N:M compressed tensor (see the module docstring for the layout).

    Attributes:
        values: ``[..., G*n]`` kept values, float32/float16/bfloat16.
        indices: ``[..., G*n]`` uint8 positions within each group, ascending.
        n, m: the pattern.
    """

    values: torch.Tensor
    indices: torch.Tensor
    n: int
    m: int

    def __post_init__(self) -> None:
        check_compressed_args(self.values, self.indices, self.n, self.m)

    @classmethod
    def of_checked(cls, values: torch.Tensor, indices: torch.Tensor, n: int, m: int):
        """The result of ``step::nm_compress``, whose op validated its input: built
        without checking the tensors it made again."""
        c = object.__new__(cls)
        for name, value in (("values", values), ("indices", indices), ("n", n), ("m", m)):
            object.__setattr__(c, name, value)
        return c

    @property
    def shape(self) -> torch.Size:
        """Shape of the dense tensor this represents."""
        *lead, kept = self.values.shape
        return torch.Size((*lead, kept // self.n * self.m))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @cached_property
    def positions(self) -> torch.Tensor:
        """The positions bit-packed for the kernels: int32 ``[rows, words]`` over the rows
        of ``indices`` viewed 2-D (:func:`step.kernels.nm_positions.pack_positions`; built
        once per object)."""
        from ..kernels.nm_positions import pack_positions

        return pack_positions(as_matrix(self.indices), self.m)

    def to(self, device: torch.device | str) -> NMCompressed:
        return NMCompressed(self.values.to(device), self.indices.to(device), self.n, self.m)

    def validate(self) -> None:
        """Check the index *data* (positions < m, strictly ascending in each group).

        Reads the tensors (a device sync on GPU); loaders call it on untrusted input.
        """
        pos = self.indices.reshape(-1, self.n).long()
        if pos.numel() and int(pos.max()) >= self.m:
            raise ValueError(f"indices hold a position >= m={self.m}; expected 0..{self.m - 1}")
        if self.n > 1 and pos.numel() and not bool((pos[:, 1:] > pos[:, :-1]).all()):
            raise ValueError("indices must be strictly ascending within each group of n")


def check_compressed_values(values: object, n: object, m: object) -> tuple[int, int]:
    """``values`` holds whole groups of ``n`` kept values; returns ``(n, m)`` checked."""
    check_tensor(values, "values")
    n, m = check_nm(n, m)
    assert isinstance(values, torch.Tensor)
    if values.dim() == 0 or values.shape[-1] % n:
        raise ValueError(
            f"values has shape {tuple(values.shape)}: its last dim must be a multiple of "
            f"n={n} (n kept values per group of m={m})"
        )
    return n, m


def check_compressed_args(values: object, indices: object, n: object, m: object) -> None:
    check_compressed_values(values, n, m)
    check_tensor(indices, "indices", dtypes=(torch.uint8,))
    assert isinstance(values, torch.Tensor) and isinstance(indices, torch.Tensor)
    if values.shape != indices.shape:
        raise ValueError(
            f"values has shape {tuple(values.shape)} but indices has {tuple(indices.shape)}; "
            "they must match (one position per kept value)"
        )
    check_same_device(values=values, indices=indices)


def nm_compress_ref(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: ``w`` [..., K] -> (values, indices) [..., K*n/m]."""
    keep = nm_mask_ref(w, n, m).reshape(-1, m)
    groups = w.reshape(-1, m)
    positions = torch.arange(m, device=w.device, dtype=torch.uint8).expand(groups.shape)
    out_shape = (*w.shape[:-1], w.shape[-1] // m * n)
    # Boolean indexing walks each row left to right, so positions come out ascending.
    return groups[keep].reshape(out_shape), positions[keep].reshape(out_shape)


def nm_decompress_ref(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Reference: (values, indices) [..., G*n] -> dense [..., G*m], +0.0 where pruned.

    The values are moved as integer bit patterns, so every value (NaN payloads and
    signs included) arrives bit for bit, as in the Triton kernel: CPU ``scatter_`` on
    bfloat16 rewrites a NaN's bits. Positions are trusted (docs/ops.md#invalid-input).
    """
    bits = bits_view(values.contiguous()).reshape(-1, n)
    dense = torch.zeros((bits.shape[0], m), dtype=bits.dtype, device=values.device)
    dense.scatter_(1, indices.reshape(-1, n).long(), bits)
    return dense.view(values.dtype).reshape(*values.shape[:-1], values.shape[-1] // n * m)


register("nm_compress", "reference")(nm_compress_ref)


@register("nm_compress", "triton")
def _nm_compress_triton(*args):
    from step.kernels.nm_compress import nm_compress_triton  # Triton loads at the first call

    return nm_compress_triton(*args)


register("nm_decompress", "reference")(nm_decompress_ref)


@register("nm_decompress", "triton")
def _nm_decompress_triton(*args):
    from step.kernels.nm_compress import nm_decompress_triton  # Triton loads at the first call

    return nm_decompress_triton(*args)


@torch.library.custom_op("step::nm_compress", mutates_args=())
def _nm_compress_op(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_nm_mask_args(w, n, m)
    w = w.contiguous()
    _, impl = choose("nm_compress", w.device, w, n, m)
    return impl(w, n, m)


@_nm_compress_op.register_fake
def _(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_nm_mask_args(w, n, m)
    shape = (*w.shape[:-1], w.shape[-1] // m * n)
    return w.new_empty(shape), w.new_empty(shape, dtype=torch.uint8)


@torch.library.custom_op("step::nm_decompress", mutates_args=())
def _nm_decompress_op(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    check_compressed_args(values, indices, n, m)
    values, indices = values.contiguous(), indices.contiguous()
    _, impl = choose("nm_decompress", values.device, values, indices, n, m)
    return impl(values, indices, n, m)


@_nm_decompress_op.register_fake
def _(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    check_compressed_args(values, indices, n, m)
    return values.new_empty((*values.shape[:-1], values.shape[-1] // n * m))


def nm_compress(w: torch.Tensor, n: int = 2, m: int = 4) -> NMCompressed:
    """Mask ``w`` to N:M (the :func:`step.nm_mask` rule) and keep only what survives.

    Args:
        w: float32/float16/bfloat16 ``[..., K]``, ``K % m == 0``.
        n, m: the pattern, ``1 <= n < m <= 32``; default 2:4.

    Returns:
        :class:`NMCompressed` with ``values``/``indices`` of shape ``[..., K*n/m]``.
    """
    values, indices = call_op(torch.ops.step.nm_compress, check_nm_mask_args, w, n, m)
    return NMCompressed.of_checked(values, indices, n, m)


def nm_decompress(c: NMCompressed) -> torch.Tensor:
    """Dense tensor of shape ``c.shape``: kept values in place, +0.0 elsewhere."""
    if not isinstance(c, NMCompressed):
        raise TypeError(f"c must be a step.NMCompressed, got {type(c).__name__}")
    return torch.ops.step.nm_decompress(c.values, c.indices, c.n, c.m)
