"""``step::masked_linear``: ``y = x @ (w * nm_mask(w)).T + bias`` with the
straight-through estimator (STE) in the backward pass.

Backward: ``dx = dy @ (w * mask)``, ``dw = dy.T @ x`` (the STE: the gradient of the
masked weight flows to the dense ``w`` unmasked), ``dbias = dy.sum``. The op also returns
the mask it computed, saved for the backward pass so it is never recomputed, and accepts
a mask computed earlier (a layer's cached mask of the same weight) instead of computing
one; then it saves that one and returns an empty mask (no copy). The input gradient is
its own op, ``step::masked_linear_dx``, so a kernel can mask w in registers there too.

Backends: ``reference`` composes ``step::nm_mask`` (its mask comes from the best backend)
with ``F.linear``; ``triton`` (``step.kernels.masked_linear``) ranks each group in
registers while the weight tile is loaded, so no masked copy of w is written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.shapes import as_matrix
from .checks import call_op, check_same_device, check_same_dtype, check_tensor
from .dispatch import choose, register
from .nm_mask import check_nm_mask_args


def masked_linear_ref(
    x: torch.Tensor,
    w: torch.Tensor,
    n: int,
    m: int,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference forward: x [..., K], w [N, K], bias [N], mask [N, K] bool or None
    (computed from w) -> (y [..., N], mask [N, K] bool)."""
    if mask is None:
        mask = torch.ops.step.nm_mask(w, n, m)
    return F.linear(x, torch.where(mask, w, 0), bias), mask


def check_masked_linear_args(
    x: object, w: object, n: object, m: object, bias: object, mask: object = None
) -> None:
    check_nm_mask_args(w, n, m)
    check_tensor(w, "w", ndim=2)
    check_tensor(x, "x")
    assert isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but w has shape {tuple(w.shape)}: x's last dim must "
            f"equal w's in_features {w.shape[1]}"
        )
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        assert isinstance(bias, torch.Tensor)
        if bias.shape[0] != w.shape[0]:
            raise ValueError(f"bias has shape {tuple(bias.shape)}; expected [{w.shape[0]}]")
    if mask is not None:
        check_tensor(mask, "mask", dtypes=(torch.bool,), ndim=2)
        assert isinstance(mask, torch.Tensor)
        if mask.shape != w.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected w's {tuple(w.shape)}")
    check_same_dtype(x=x, w=w, bias=bias)  # type: ignore[arg-type]
    check_same_device(x=x, w=w, bias=bias, mask=mask)  # type: ignore[arg-type]


def masked_linear_dx_ref(
    grad_y: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, m: int
) -> torch.Tensor:
    """Reference input gradient: grad_y [..., N], w [N, K], mask [N, K] bool -> [..., K]."""
    return grad_y @ torch.where(mask, w, 0)


register("masked_linear", "reference")(masked_linear_ref)


@register("masked_linear", "triton")
def _masked_linear_triton(*args):
    from step.kernels.masked_linear import masked_linear_triton  # Triton loads at the first call

    return masked_linear_triton(*args)


register("masked_linear_dx", "reference")(masked_linear_dx_ref)


@register("masked_linear_dx", "triton")
def _masked_linear_dx_triton(*args):
    from step.kernels.masked_linear import masked_linear_dx_triton  # Triton loads at the first call

    return masked_linear_dx_triton(*args)


@torch.library.custom_op("step::masked_linear", mutates_args=())
def _masked_linear_op(
    x: torch.Tensor,
    w: torch.Tensor,
    n: int,
    m: int,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_masked_linear_args(x, w, n, m, bias, mask)
    _, impl = choose("masked_linear", x.device, x, w, n, m, bias, mask)
    y, mask_used = impl(x, w.contiguous(), n, m, bias, mask)
    # An output may not alias an input of a custom op, and a given mask is already the
    # caller's: return an empty mask then (the backward saves the given one).
    return y, (mask_used if mask is None else mask.new_empty(0))


@_masked_linear_op.register_fake
def _(x, w, n, m, bias, mask):
    check_masked_linear_args(x, w, n, m, bias, mask)
    mask_shape = w.shape if mask is None else (0,)
    return x.new_empty((*x.shape[:-1], w.shape[0])), w.new_empty(mask_shape, dtype=torch.bool)


@torch.library.custom_op("step::masked_linear_dx", mutates_args=())
def _masked_linear_dx_op(
    grad_y: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, m: int
) -> torch.Tensor:
    _, impl = choose("masked_linear_dx", grad_y.device, grad_y, w, mask, m)
    return impl(grad_y, w, mask, m)


@_masked_linear_dx_op.register_fake
def _(grad_y, w, mask, m):
    return grad_y.new_empty((*grad_y.shape[:-1], w.shape[1]))


def _setup_context(ctx, inputs, output) -> None:
    x, w, _n, m, bias, given = inputs
    _y, computed = output
    ctx.save_for_backward(x, w, computed if given is None else given)
    ctx.has_bias, ctx.m = bias is not None, m


def _backward(ctx, grad_y: torch.Tensor, _grad_mask):
    x, w, mask = ctx.saved_tensors
    grad_x = grad_w = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.step.masked_linear_dx(grad_y, w, mask, ctx.m)
    dy = as_matrix(grad_y)
    if ctx.needs_input_grad[1]:
        grad_w = dy.t() @ as_matrix(x)  # STE: dense w gets dL/d(w*mask)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = dy.sum(0)
    return grad_x, grad_w, None, None, grad_bias, None


_masked_linear_op.register_autograd(_backward, setup_context=_setup_context)


def masked_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    n: int = 2,
    m: int = 4,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ (w * nm_mask(w, n, m)).T + bias``, differentiable with the STE.

    Args:
        x: ``[..., K]``, float32/float16/bfloat16.
        w: dense weight ``[N, K]`` of x's dtype, ``K % m == 0``; the mask is its
            :func:`step.nm_mask` unless ``mask`` is given.
        n, m: the pattern; default 2:4.
        bias: ``[N]`` or None.
        mask: bool ``[N, K]``, the N:M mask of ``w`` computed earlier (e.g. a layer's
            cached mask); None computes it. It is trusted, not re-checked against ``w``.

    Returns:
        ``[..., N]``. Gradients: ``dx = dy @ (w*mask)``, ``dw = dy.T @ x`` (straight
        through the mask), ``dbias = dy.sum``.
    """
    args = (x, w, n, m, bias, mask)
    y, _mask = call_op(torch.ops.step.masked_linear, check_masked_linear_args, *args)
    return y
