"""``step::sparse24_linear``: ``y = x @ W.T + bias`` with W in the 2:4 CUTLASS format.

Backends: ``reference`` (decode W, then ``F.linear``) everywhere; ``triton`` reads the
compressed weight directly (decode-style; chosen automatically for at most
``TRITON_MAX_TOKENS`` tokens); ``cuda`` is the slot of the ``mma.sp`` tensor-core GEMM.
As in ``step::nm_linear``, a caller holding W dense passes it as ``dense`` for the
reference to multiply by instead of decoding (unless the reference is forced).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.shapes import as_matrix
from .checks import (
    HALF_DTYPES,
    call_op,
    check_dense_weight,
    check_same_device,
    check_same_dtype,
    check_tensor,
)
from .dispatch import choose, forced_backend, register
from .sparse24 import check_sparse24_args, from_sparse24_ref

TRITON_MAX_TOKENS = 16
"""Automatic choice uses the Triton decode kernel up to this many tokens (rows of x)."""


def sparse24_linear_ref(
    x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Reference: x [..., K]; values [N, K/2]; meta [N, K/16]; bias [N] -> y [..., N]."""
    return F.linear(x, from_sparse24_ref(values, meta), bias)


def check_sparse24_linear_args(
    x: object, values: object, meta: object, bias: object, dense: object = None
) -> None:
    check_sparse24_args(values, meta)
    check_tensor(x, "x", dtypes=HALF_DTYPES)
    assert isinstance(x, torch.Tensor) and isinstance(values, torch.Tensor)
    k = values.shape[1] * 2
    if x.shape[-1] != k:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but the weight has {k} input features "
            f"(values {tuple(values.shape)}); x's last dim must be {k}"
        )
    if bias is not None:
        check_tensor(bias, "bias", dtypes=HALF_DTYPES, ndim=1)
        assert isinstance(bias, torch.Tensor)
        if bias.shape[0] != values.shape[0]:
            raise ValueError(
                f"bias has shape {tuple(bias.shape)} but the weight has {values.shape[0]} "
                f"output features; bias must be [{values.shape[0]}]"
            )
    check_dense_weight(dense, values.shape[0], k)
    check_same_dtype(x=x, values=values, bias=bias, dense=dense)  # type: ignore[arg-type]
    check_same_device(x=x, values=values, bias=bias, dense=dense)  # type: ignore[arg-type]


def _few_tokens(x: torch.Tensor, *_) -> bool:
    return x.numel() <= TRITON_MAX_TOKENS * x.shape[-1]


register("sparse24_linear", "reference")(sparse24_linear_ref)


@register("sparse24_linear", "triton", auto_if=_few_tokens)
def _sparse24_linear_triton(*args):
    from step.kernels.sparse24_linear import sparse24_linear_triton  # Triton: at first call

    return sparse24_linear_triton(*args)


@torch.library.custom_op("step::sparse24_linear", mutates_args=())
def _sparse24_linear_op(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    dense: torch.Tensor | None = None,
) -> torch.Tensor:
    check_sparse24_linear_args(x, values, meta, bias, dense)
    values, meta = values.contiguous(), meta.contiguous()
    bias = bias.contiguous() if bias is not None else None
    backend, impl = choose("sparse24_linear", x.device, x, values, meta, bias)
    if backend == "reference" and dense is not None and forced_backend("sparse24_linear") is None:
        return F.linear(x, dense, bias)  # the reference's result without its decode
    return impl(x, values, meta, bias)


@_sparse24_linear_op.register_fake
def _(x, values, meta, bias, dense=None):
    check_sparse24_linear_args(x, values, meta, bias, dense)
    return x.new_empty((*x.shape[:-1], values.shape[0]))


def _setup_context(ctx, inputs, output) -> None:
    x, values, meta, bias, _ = inputs
    ctx.save_for_backward(values, meta)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_y: torch.Tensor):
    # The compressed weight is frozen; x and bias get gradients (adapters on top).
    values, meta = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_y @ torch.ops.step.sparse24_decompress(values, meta)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = as_matrix(grad_y).sum(0)
    return grad_x, None, None, grad_bias, None


_sparse24_linear_op.register_autograd(_backward, setup_context=_setup_context)


def sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` where ``(values, meta) = step.to_sparse24(W)``.

    Args:
        x: float16/bfloat16 ``[..., K]``.
        values, meta: ``[N, K/2]`` (x's dtype) and ``[N, K/16]`` int16, from
            :func:`step.to_sparse24`.
        bias: ``[N]`` of x's dtype, or None.

    Returns:
        ``[..., N]`` of x's dtype. Gradients flow to ``x`` and ``bias``, not to the
        compressed weight.
    """
    return call_op(
        torch.ops.step.sparse24_linear, check_sparse24_linear_args, x, values, meta, bias, None
    )
