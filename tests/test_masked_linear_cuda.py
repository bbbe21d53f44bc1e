"""The CUDA (``mma.sp``) forward of step::masked_linear for 2:4 (step.native.cuda.masked_linear).

On the CPU the GEMM is replaced by the reference 2:4 product, which checks everything
around it: which weights get packed (the computed mask, or a given one), the mask handed
back, and the refusals before any launch. The GPU tests run the real kernel.
"""

from __future__ import annotations

import pytest
import torch
from helpers import HALF_DTYPES, assert_within_tolerance_rule, random_weights
from test_masked_linear import fp64_masked

import step
from step.native.cuda import masked_linear as module
from step.ops import masked_linear_ref, nm_mask_ref, sparse24_linear_ref
from step.ops.dispatch import _IMPLS


@pytest.fixture
def reference_gemm(monkeypatch):
    """The mma.sp GEMM replaced by the reference product of the same packed weight."""
    monkeypatch.setattr(module, "sparse24_linear_cuda", sparse24_linear_ref)


def random_2to4_mask(rows: int, k: int) -> torch.Tensor:
    """A 2:4 mask unrelated to any weight's magnitudes: 2 random positions per group."""
    order = torch.rand(rows * k // 4, 4).argsort(dim=1)
    return (order < 2).reshape(rows, k)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_computed_mask_matches_the_reference(reference_gemm, dtype, with_bias):
    w = random_weights((64, 128), dtype, ties=True)
    x = random_weights((3, 5, 128), dtype)
    bias = random_weights((64,), dtype) if with_bias else None
    y, mask = module.masked_linear_cuda(x, w, 2, 4, bias, None)
    y_ref, mask_ref = masked_linear_ref(x, w, 2, 4, bias)
    assert torch.equal(mask, mask_ref) and torch.equal(mask, nm_mask_ref(w, 2, 4))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_given_mask_decides_what_is_packed(reference_gemm, dtype):
    w = random_weights((128, 64), dtype)
    mask = random_2to4_mask(128, 64)
    x = random_weights((7, 64), dtype)
    y, returned = module.masked_linear_cuda(x, w, 2, 4, None, mask)
    assert returned is mask
    y_ref, _ = masked_linear_ref(x, w, 2, 4, None, mask)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "n,m,dtype,shape,error,match",
    [
        (1, 4, torch.float16, (64, 64), ValueError, "2:4 on sparse tensor cores, not 1:4"),
        (2, 4, torch.float32, (64, 64), TypeError, "float16/bfloat16"),
        (2, 4, torch.float16, (96, 64), ValueError, r"out_features % 64 .*\[128, 64\]"),
        (2, 4, torch.bfloat16, (64, 96), ValueError, r"in_features % 64 .*\[64, 128\]"),
    ],
)
def test_refusals_before_any_work(monkeypatch, n, m, dtype, shape, error, match):
    monkeypatch.setattr(module, "sparse24_linear_cuda", lambda *a: pytest.fail("launched"))
    monkeypatch.setattr(module, "to_sparse24", lambda *a: pytest.fail("packed"))
    w = random_weights(shape, dtype)
    with pytest.raises(error, match=match):
        module.masked_linear_cuda(random_weights((2, shape[1]), dtype), w, n, m, None, None)


def test_registered_for_forced_use_only():
    impl = _IMPLS["masked_linear"]["cuda"]
    assert impl.fn is module.masked_linear_cuda and not impl.auto
    x, w = torch.randn(2, 64).half(), torch.randn(64, 64).half()
    with step.use_backend("masked_linear=cuda"), pytest.raises(step.BackendError, match="CUDA"):
        step.masked_linear(x, w)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 7, 128, 4096])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_gpu_forward_and_gradients(tokens, dtype):
    w = random_weights((1024, 512), dtype, "cuda").requires_grad_()
    x = random_weights((tokens, 512), dtype, "cuda").requires_grad_()
    bias = random_weights((1024,), dtype, "cuda").requires_grad_()
    with step.use_backend("masked_linear=cuda"):
        y = step.masked_linear(x, w, 2, 4, bias)
    mask = nm_mask_ref(w.detach(), 2, 4)
    y_ref, _ = masked_linear_ref(x.detach(), w.detach(), 2, 4, bias.detach(), mask)
    assert_within_tolerance_rule(y.detach(), y_ref, fp64_masked(x, w, mask, bias), "y")
    grad_y = random_weights(y.shape, dtype, "cuda")
    y.backward(grad_y)
    grads = [t.grad.clone() for t in (x, w, bias)]
    for t in (x, w, bias):
        t.grad = None
    with step.use_backend("masked_linear=triton"):
        step.masked_linear(x, w, 2, 4, bias).backward(grad_y)
    for got, t in zip(grads, (x, w, bias), strict=True):  # the same backward, same inputs
        torch.testing.assert_close(got, t.grad, rtol=0, atol=0)
