"""K == 0: every linear op gives the bias (or zeros), forward and backward, on every backend.

An empty sum is a valid matmul; ``reshape(-1, 0)`` is not (its leading size is ambiguous),
which these ops once hit.
"""

import pytest
import torch

import step
from step.ops.nm_compress import nm_compress
from step.ops.sparse24 import to_sparse24


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("bias", [True, False])
def test_masked_linear_with_no_input_features(backend, bias):
    x = torch.randn(2, 3, 0, requires_grad=True)
    w = torch.randn(8, 0, requires_grad=True)
    b = torch.randn(8, requires_grad=True) if bias else None
    with step.use_backend(f"masked_linear={backend},masked_linear_dx={backend}"):
        y = step.masked_linear(x, w, 2, 4, b)
        y.sum().backward()
    assert torch.equal(y, (b if bias else torch.zeros(8)).expand(2, 3, 8))
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    if bias:
        assert torch.equal(b.grad, torch.full((8,), 6.0))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_nm_linear_with_no_input_features(backend):
    w = torch.randn(8, 0, dtype=torch.float16)
    b = torch.randn(8, dtype=torch.float16)
    with step.use_backend(f"nm_linear={backend}"):
        y = step.nm_linear(torch.randn(5, 0, dtype=torch.float16), nm_compress(w, 2, 4), b)
    assert torch.equal(y, b.expand(5, 8))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_sparse24_linear_with_no_input_features(backend):
    values, meta = to_sparse24(torch.randn(64, 0, dtype=torch.float16))
    x = torch.randn(5, 0, dtype=torch.float16)
    with step.use_backend(f"sparse24_linear={backend}"):
        y = torch.ops.step.sparse24_linear(x, values, meta, None)
    assert torch.equal(y, torch.zeros(5, 64, dtype=torch.float16))
