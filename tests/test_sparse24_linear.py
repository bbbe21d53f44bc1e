"""step.sparse24_linear: Triton decode kernel vs the reference, tolerance rule."""

import pytest
import torch
import torch.nn.functional as F
from helpers import HALF_DTYPES, assert_within_tolerance_rule, kernel_devices, random_weights

import step
from step.ops import from_sparse24_ref, sparse24_linear_ref


def case(n_out, k, tokens, dtype, device, bias):
    w = random_weights((n_out, k), dtype, device)
    w[0, :4] = 0.0  # an all-zero group
    values, meta = step.to_sparse24(w)
    x = random_weights((*tokens, k), dtype, device)
    b = random_weights((n_out,), dtype, device) if bias else None
    return x, values, meta, b


def fp64_result(x, values, meta, b):
    dense = from_sparse24_ref(values, meta).double()
    return F.linear(x.double(), dense, b.double() if b is not None else None)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("tokens", [(1,), (3,), (17,), (64,), (2, 5), (130,)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_out,k", [(32, 64), (64, 192)])
def test_triton_within_tolerance_rule(device, dtype, tokens, bias, n_out, k):
    x, values, meta, b = case(n_out, k, tokens, dtype, device, bias)
    with step.use_backend("triton"):
        y = step.sparse24_linear(x, values, meta, b)
    assert y.shape == (*tokens, n_out) and y.dtype == dtype
    assert torch.isfinite(y).all()
    assert_within_tolerance_rule(
        y, sparse24_linear_ref(x, values, meta, b), fp64_result(x, values, meta, b)
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("tokens", [1, 16, 128])
def test_triton_real_sizes_on_gpu(dtype, tokens):
    x, values, meta, b = case(4096, 4096, (tokens,), dtype, "cuda", True)
    with step.use_backend("triton"):
        y = step.sparse24_linear(x, values, meta, b)
    assert_within_tolerance_rule(
        y, sparse24_linear_ref(x, values, meta, b), fp64_result(x, values, meta, b)
    )


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_no_tokens(backend):
    x, values, meta, b = case(32, 64, (0,), torch.float16, "cpu", True)
    with step.use_backend(backend):
        assert step.sparse24_linear(x, values, meta, b).shape == (0, 32)


def test_non_contiguous_x():
    x, values, meta, b = case(32, 128, (64,), torch.float16, "cpu", True)
    x_t = x.t().contiguous().t()  # same values, column-major
    assert not x_t.is_contiguous()
    expected = sparse24_linear_ref(x, values, meta, b)
    with step.use_backend("triton"):
        torch.testing.assert_close(step.sparse24_linear(x_t, values, meta, b), expected,
                                   rtol=2e-3, atol=2e-3)  # fmt: skip


def test_automatic_choice_on_cpu_is_the_reference():
    from step.ops.dispatch import choose

    x, values, meta, b = case(32, 64, (1,), torch.float16, "cpu", True)
    assert choose("sparse24_linear", x.device, x, values, meta, b)[0] == "reference"
