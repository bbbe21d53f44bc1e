"""``step::nm_linear``: ``y = x @ W.T + bias`` with W in the general N:M compressed format.

W ``[N, K]`` is stored as :class:`~step.ops.nm_compress.NMCompressed`: ``values``
``[N, K*n/m]`` and the positions bit-packed (``NMCompressed.positions``, int32
``[N, words]``, see :mod:`step.kernels.nm_positions`); the op takes the packed form.
Backends: ``reference`` (unpack, decompress, ``F.linear``) everywhere; ``triton``
(``step.kernels.nm_linear``) reads the compressed weight directly: weight streaming for
few tokens, tiled beyond.

A caller that also holds W dense (a frozen layer keeps its pruned weight) passes it as
``dense``: where only the reference would run, it multiplies by ``dense`` instead of
decoding (same values, a dense matmul's speed; not when the reference is forced), so
the backend is decided once, here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.nm_positions import position_bits, unpack_positions, words_per_row
from ..kernels.shapes import as_matrix
from .checks import (
    call_op,
    check_dense_weight,
    check_same_device,
    check_same_dtype,
    check_tensor,
)
from .dispatch import choose, forced_backend, register
from .nm_compress import NMCompressed, check_compressed_values, nm_decompress_ref


def nm_unpack_dense(values: torch.Tensor, positions: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """values [N, G*n], packed positions [N, words] -> the dense weight [N, G*m]."""
    indices = unpack_positions(positions, m, values.shape[1])
    return nm_decompress_ref(values, indices, n, m)


def nm_linear_ref(
    x: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    n: int,
    m: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Reference: x [..., K]; values [N, K*n/m]; positions int32 [N, words] (packed);
    bias [N] -> y [..., N]."""
    return F.linear(x, nm_unpack_dense(values, positions, n, m), bias)


def check_packed_positions(positions: object, rows: int, kept: int, m: int) -> None:
    """``positions`` must be int32 ``[rows, words_per_row(kept, m)]``."""
    expected = (rows, words_per_row(kept, m))
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a torch.Tensor, got {type(positions).__name__}")
    if positions.dtype != torch.int32 or tuple(positions.shape) != expected:
        raise ValueError(
            f"positions has shape {tuple(positions.shape)} and dtype {positions.dtype}; "
            f"expected int32 {list(expected)} (step.pack_positions of the {kept} uint8 "
            f"positions per row, {position_bits(m)} bits each for m={m})"
        )


def check_nm_linear_args(x, values, positions, n, m, bias, dense=None) -> None:
    check_tensor(values, "values", ndim=2)
    n, m = check_compressed_values(values, n, m)
    check_packed_positions(positions, values.shape[0], values.shape[1], m)
    check_tensor(x, "x")
    k = values.shape[1] // n * m
    if x.shape[-1] != k:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but the weight has {k} input features "
            f"(values {tuple(values.shape)}, {n}:{m}); x's last dim must be {k}"
        )
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != values.shape[0]:
            raise ValueError(
                f"bias has shape {tuple(bias.shape)} but the weight has {values.shape[0]} "
                f"output features; bias must be [{values.shape[0]}]"
            )
    check_dense_weight(dense, values.shape[0], k)
    check_same_dtype(x=x, values=values, bias=bias, dense=dense)
    check_same_device(x=x, values=values, positions=positions, bias=bias, dense=dense)


register("nm_linear", "reference")(nm_linear_ref)


@register("nm_linear", "triton")
def _nm_linear_triton(*args):
    from step.kernels.nm_linear import nm_linear_triton  # Triton loads at the first call

    return nm_linear_triton(*args)


@torch.library.custom_op("step::nm_linear", mutates_args=())
def _nm_linear_op(
    x: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    n: int,
    m: int,
    bias: torch.Tensor | None,
    dense: torch.Tensor | None = None,
) -> torch.Tensor:
    check_nm_linear_args(x, values, positions, n, m, bias, dense)
    backend, impl = choose("nm_linear", x.device, x, values, positions, n, m, bias)
    if backend == "reference" and dense is not None and forced_backend("nm_linear") is None:
        return F.linear(x, dense, bias)  # the reference's result without its decode
    return impl(x, values.contiguous(), positions.contiguous(), n, m, bias)


@_nm_linear_op.register_fake
def _(x, values, positions, n, m, bias, dense=None):
    check_nm_linear_args(x, values, positions, n, m, bias, dense)
    return x.new_empty((*x.shape[:-1], values.shape[0]))


def _setup_context(ctx, inputs, output) -> None:
    x, values, positions, n, m, bias, _ = inputs
    ctx.save_for_backward(values, positions)
    ctx.n, ctx.m, ctx.has_bias = n, m, bias is not None


def _backward(ctx, grad_y: torch.Tensor):
    # The weight is frozen (no gradient); x and bias get theirs, e.g. for adapters
    # trained on top of a frozen sparse model.
    values, positions = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_y @ nm_unpack_dense(values, positions, ctx.n, ctx.m)
    if ctx.has_bias and ctx.needs_input_grad[5]:
        grad_bias = as_matrix(grad_y).sum(0)
    return grad_x, None, None, None, None, grad_bias, None


_nm_linear_op.register_autograd(_backward, setup_context=_setup_context)


def nm_linear(x: torch.Tensor, c: NMCompressed, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` where ``c = step.nm_compress(W, n, m)``, any N:M.

    Args:
        x: ``[..., K]``, float32/float16/bfloat16.
        c: the compressed weight, ``c.shape == [N, K]``, x's dtype.
        bias: ``[N]`` of x's dtype, or None.

    Returns:
        ``[..., N]`` of x's dtype. Gradients flow to ``x`` and ``bias``, not to ``c``.
    """
    if not isinstance(c, NMCompressed):
        raise TypeError(f"c must be a step.NMCompressed, got {type(c).__name__}")
    args = (x, c.values, c.positions, c.n, c.m, bias, None)
    return call_op(torch.ops.step.nm_linear, check_nm_linear_args, *args)
