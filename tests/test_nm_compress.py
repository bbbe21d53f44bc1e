"""step.nm_compress / nm_decompress: layout, exactness, reference vs Triton."""

import pytest
import torch
from helpers import DTYPES, RATIOS, assert_bits_equal, kernel_devices, random_weights
from hypothesis import given, settings
from hypothesis import strategies as st

import step
from step.ops import nm_compress_ref, nm_decompress_ref, nm_mask_ref


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_golden_two_of_four(backend):
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    with step.use_backend(backend):
        c = step.nm_compress(w, 2, 4)
        dense = step.nm_decompress(c)
    assert c.values.tolist() == [[-3.0, 2.0, 0.0, 0.0]]
    assert c.indices.tolist() == [[1, 2, 0, 1]]
    assert c.indices.dtype == torch.uint8
    assert (c.n, c.m, c.shape) == (2, 4, torch.Size([1, 8]))
    assert dense.tolist() == [[0.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def test_pruned_entries_are_positive_zero_and_kept_bits_survive():
    w = torch.tensor([[-0.0, -1.0, -0.5, -2.0]])  # pruned -0.5 and -0.0 must come back +0.0
    dense = step.nm_decompress(step.nm_compress(w, 2, 4))
    assert_bits_equal(dense, torch.tensor([[0.0, -1.0, 0.0, -2.0]]))
    w = torch.tensor([[-0.0, -0.0, -0.0, -0.0]])  # kept -0.0 stays -0.0
    dense = step.nm_decompress(step.nm_compress(w, 2, 4))
    assert_bits_equal(dense, torch.tensor([[-0.0, -0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", RATIOS)
def test_triton_matches_reference_exactly(device, dtype, n, m):
    for shape in [(m,), (3, 7 * m), (2, 5, 3 * m), (129, m)]:
        for ties in (False, True):
            w = random_weights(shape, dtype, device, ties=ties)
            values, indices = nm_compress_ref(w, n, m)
            with step.use_backend("triton"):
                c = step.nm_compress(w, n, m)
                dense = step.nm_decompress(c)
            assert_bits_equal(c.values, values)
            assert torch.equal(c.indices.cpu(), indices.cpu())
            assert_bits_equal(dense, nm_decompress_ref(values, indices, n, m))
            assert_bits_equal(dense, torch.where(nm_mask_ref(w, n, m), w, 0))


def test_compressed_validation():
    c = step.nm_compress(torch.randn(4, 8), 2, 4)
    c.validate()
    with pytest.raises(ValueError, match="ascending"):
        step.NMCompressed(c.values, c.indices.flip(-1).contiguous(), 2, 4).validate()
    with pytest.raises(ValueError, match="position >= m"):
        step.NMCompressed(c.values, torch.full_like(c.indices, 9), 2, 4).validate()
    with pytest.raises(ValueError, match="must match"):
        step.NMCompressed(c.values, c.indices[:, :2], 2, 4)
    with pytest.raises(TypeError, match="uint8"):
        step.NMCompressed(c.values, c.indices.long(), 2, 4)
    with pytest.raises(TypeError, match="NMCompressed"):
        step.nm_decompress((c.values, c.indices))


@st.composite
def weights_and_ratio(draw):
    m = draw(st.integers(2, 32))
    n = draw(st.integers(1, m - 1))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)) * m)
    dtype = draw(st.sampled_from(DTYPES))
    w = random_weights(shape, dtype, ties=draw(st.booleans()))
    return w, n, m


@settings(max_examples=40, deadline=None)
@given(weights_and_ratio())
def test_property_round_trip(case):
    w, n, m = case
    mask = nm_mask_ref(w, n, m)
    for backend in ("reference", "triton"):
        with step.use_backend(backend):
            c = step.nm_compress(w, n, m)
            dense = step.nm_decompress(c)
        c.validate()
        assert c.shape == w.shape
        assert c.values.shape[-1] == w.shape[-1] // m * n
        assert_bits_equal(dense, torch.where(mask, w, 0))
        # compressing a compressed-then-decompressed weight is a fixed point
        with step.use_backend(backend):
            again = step.nm_compress(dense, n, m)
        assert_bits_equal(again.values, c.values)
