"""Bad input: a clear TypeError/ValueError naming the problem, before any launch."""

import pytest
import torch

import step


@pytest.fixture(params=["reference", "triton"], autouse=True)
def backend(request):
    # errors must come first whatever the backend (and never from inside a kernel)
    with step.use_backend(request.param):
        yield request.param


W = torch.randn(8, 16)


@pytest.mark.parametrize(
    "call,error,pattern",
    [
        (lambda: step.nm_mask(W.numpy(), 2, 4), TypeError, "w must be a torch.Tensor"),
        (lambda: step.nm_mask(W.double(), 2, 4), TypeError, "w has dtype torch.float64"),
        (lambda: step.nm_mask(W.int(), 2, 4), TypeError, "supported: float32, float16, bfloat16"),
        (lambda: step.nm_mask(torch.tensor(1.0), 2, 4), ValueError, "at least 1 dimension"),
        (
            lambda: step.nm_mask(torch.randn(8, 10), 2, 4),
            ValueError,
            r"last dim 10 is not divisible by m=4.*pad it to a multiple of 4 \(e.g. 12\)",
        ),
        (lambda: step.nm_mask(W, 4, 4), ValueError, "1 <= n < m <= 32"),
        (lambda: step.nm_mask(W, 0, 4), ValueError, "out of range"),
        (lambda: step.nm_mask(torch.randn(2, 64), 1, 64), ValueError, "m <= 32"),
        (lambda: step.nm_mask(W, 2.0, 4), TypeError, "n must be an int"),
        (lambda: step.nm_mask(W, 2, True), TypeError, "m must be an int"),
        (lambda: step.nm_compress(torch.randn(3, 6), 2, 4), ValueError, r"shape \(3, 6\)"),
        (lambda: step.to_sparse24(torch.randn(32, 64)), TypeError, "float16, bfloat16"),
        (lambda: step.to_sparse24(torch.randn(32, 64, 2).half()), ValueError, "must be 2-D"),
        (
            lambda: step.to_sparse24(torch.randn(30, 64).half()),
            ValueError,
            r"rows % 32 == 0.*Pad w to \(32, 64\)",
        ),
        (
            lambda: step.to_sparse24(torch.randn(32, 48).half()),
            ValueError,
            r"columns % 64.*step.nm_compress",
        ),
        (
            lambda: step.from_sparse24(
                torch.randn(32, 32).half(), torch.zeros(32, 3, dtype=torch.int16)
            ),
            ValueError,
            r"meta has shape \(32, 3\).*needs meta \(32, 4\)",
        ),
        (
            lambda: step.from_sparse24(
                torch.randn(32, 32).half(), torch.zeros(32, 4, dtype=torch.int32)
            ),
            TypeError,
            "meta has dtype torch.int32",
        ),
        (
            lambda: step.from_sparse24(
                torch.randn(32, 32).half(), torch.zeros(32, 4, dtype=torch.int16, device="meta")
            ),
            ValueError,
            "meta is on meta but values is on cpu",
        ),
    ],
)
def test_bad_input_messages(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_sparse24_linear_bad_input():
    values, meta = step.to_sparse24(torch.randn(32, 64).half())
    x = torch.randn(4, 64).half()
    with pytest.raises(ValueError, match=r"x has shape \(4, 32\).*must be 64"):
        step.sparse24_linear(x[:, :32], values, meta)
    with pytest.raises(
        TypeError,
        match=r"values has dtype torch.float16 but x has torch.bfloat16.*values.to\(x.dtype\)",
    ):
        step.sparse24_linear(x.bfloat16(), values, meta)
    with pytest.raises(ValueError, match=r"bias has shape \(31,\).*bias must be \[32\]"):
        step.sparse24_linear(x, values, meta, torch.zeros(31).half())
    with pytest.raises(ValueError, match="bias is on meta"):
        step.sparse24_linear(x, values, meta, torch.zeros(32, dtype=torch.half, device="meta"))


def test_masked_linear_bad_input():
    # checks run before the backend is chosen, so forcing Triton (not implemented for
    # this op yet) must still give these errors, not a BackendError
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"x has shape \(2, 12\).*in_features 16"):
        step.masked_linear(torch.randn(2, 12), w, 2, 4)
    with pytest.raises(ValueError, match="w must be 2-D"):
        step.masked_linear(torch.randn(2, 16), torch.randn(2, 8, 16), 2, 4)
    with pytest.raises(TypeError, match="w has dtype torch.float32 but x has torch.float16"):
        step.masked_linear(torch.randn(2, 16).half(), w, 2, 4)
    with pytest.raises(ValueError, match=r"bias has shape \(7,\)"):
        step.masked_linear(torch.randn(2, 16), w, 2, 4, torch.randn(7))
