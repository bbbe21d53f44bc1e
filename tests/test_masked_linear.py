"""step.masked_linear: forward and the straight-through-estimator backward."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, RATIOS

import step
from step.ops import nm_mask_ref


def ste_autograd(x, w, n, m, bias):
    """The STE written with plain autograd: forward sees w*mask, backward sees identity."""
    masked = torch.where(nm_mask_ref(w.detach(), n, m), w, 0)
    w_ste = w + (masked - w).detach()
    return F.linear(x, w_ste, bias)


@pytest.mark.parametrize("n,m", RATIOS)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_plain_autograd(n, m, bias):
    x = torch.randn(3, 5, 4 * m, requires_grad=True)
    w = torch.randn(6, 4 * m, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    grad = torch.randn(3, 5, 6)

    y = step.masked_linear(x, w, n, m, b)
    got = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], grad)
    y_ref = ste_autograd(x, w, n, m, b)
    want = torch.autograd.grad(y_ref, [t for t in (x, w, b) if t is not None], grad)

    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(got, want, strict=True):
        torch.testing.assert_close(g, g_ref)


def test_weight_gradient_is_dense():
    # STE: pruned weights receive the gradient of the masked weight, not zero
    x = torch.randn(8, 16)
    w = torch.randn(4, 16, requires_grad=True)
    step.masked_linear(x, w, 2, 4).sum().backward()
    mask = nm_mask_ref(w.detach(), 2, 4)
    assert (w.grad[~mask] != 0).any()
    torch.testing.assert_close(w.grad, torch.ones(8, 4).t() @ x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_low_precision_dtypes(dtype):
    x = torch.randn(4, 32, dtype=dtype, requires_grad=True)
    w = torch.randn(8, 32, dtype=dtype, requires_grad=True)
    y = step.masked_linear(x, w, 2, 4)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


def test_only_x_requires_grad():
    x = torch.randn(4, 16, requires_grad=True)
    w = torch.randn(8, 16)
    step.masked_linear(x, w, 1, 4).sum().backward()
    assert x.grad is not None and w.grad is None


def test_torch_compile_traces_the_op():
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    compiled = torch.compile(
        lambda a, b: step.masked_linear(a, b, 2, 4), backend="eager", fullgraph=True
    )
    torch.testing.assert_close(compiled(x, w), step.masked_linear(x, w, 2, 4))
