"""step.nm_mask: golden examples, reference vs Triton (exact), properties."""

import pytest
import torch
from helpers import DTYPES, RATIOS, kernel_devices, random_weights
from hypothesis import given, settings
from hypothesis import strategies as st

import step
from step.ops import nm_mask_ref


def brute_force_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The rule written out element by element: i is kept if fewer than n elements of its
    group beat it (larger |w|, or equal |w| at a lower index); NaN counts as +inf."""

    def key(v: float) -> float:
        return float("inf") if v != v else abs(v)

    flat = w.float().reshape(-1, m).tolist()
    out = []
    for group in flat:
        keys = [key(v) for v in group]
        out.append(
            [
                sum(keys[j] > keys[i] or (keys[j] == keys[i] and j < i) for j in range(m)) < n
                for i in range(m)
            ]
        )
    return torch.tensor(out, dtype=torch.bool).reshape(w.shape)


@pytest.mark.parametrize("backend", ["reference", "triton"])
class TestGolden:
    def test_largest_magnitudes_kept(self, backend):
        w = torch.tensor([[0.1, -3.0, 2.0, 0.5], [4.0, 0.0, -5.0, 1.0]])
        with step.use_backend(backend):
            mask = step.nm_mask(w, 2, 4)
        assert mask.tolist() == [[False, True, True, False], [True, False, True, False]]

    def test_ties_keep_lower_index(self, backend):
        w = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 7.0]])
        with step.use_backend(backend):
            mask = step.nm_mask(w, 2, 4)
        assert mask.tolist() == [
            [True, True, False, False],
            [True, True, False, False],
            [True, False, False, True],
        ]

    def test_nan_ranks_like_inf(self, backend):
        inf, nan = float("inf"), float("nan")
        w = torch.tensor([[1.0, nan, inf, 2.0], [inf, 3.0, nan, 9.0]])
        with step.use_backend(backend):
            mask = step.nm_mask(w, 1, 4)
        assert mask.tolist() == [[False, True, False, False], [True, False, False, False]]

    def test_one_of_eight(self, backend):
        w = torch.tensor([[1.0, 2, 3, 4, -8, 5, 6, 7]], dtype=torch.bfloat16)
        with step.use_backend(backend):
            mask = step.nm_mask(w, 1, 8)
        assert mask.tolist() == [[False, False, False, False, True, False, False, False]]


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", RATIOS)
def test_triton_matches_reference_exactly(device, dtype, n, m):
    # shapes: the smallest legal (one group), 1-D, a batch of groups that is not a
    # multiple of any block size, and a 3-D tensor; with and without heavy ties
    for shape in [(m,), (3, 7 * m), (2, 5, 3 * m), (129, m)]:
        for ties in (False, True):
            w = random_weights(shape, dtype, device, ties=ties)
            expected = nm_mask_ref(w, n, m)
            with step.use_backend("triton"):
                got = step.nm_mask(w, n, m)
            assert got.dtype == torch.bool and got.shape == w.shape
            assert torch.equal(got, expected), (shape, ties)


@pytest.mark.parametrize("n,m", RATIOS)
def test_reference_matches_the_rule(n, m):
    w = random_weights((7, 4 * m), torch.float32, ties=True)
    w[0, :m] = float("nan")
    assert torch.equal(nm_mask_ref(w, n, m), brute_force_mask(w, n, m))


def test_non_contiguous_input_is_handled():
    w = torch.randn(16, 8).t()  # [8, 16], non-contiguous
    assert not w.is_contiguous()
    expected = nm_mask_ref(w.contiguous(), 2, 4)
    for backend in ("reference", "triton"):
        with step.use_backend(backend):
            assert torch.equal(step.nm_mask(w, 2, 4), expected)


def test_empty_tensor_gives_empty_mask():
    for backend in ("reference", "triton"):
        with step.use_backend(backend):
            mask = step.nm_mask(torch.empty(0, 8), 2, 4)
        assert mask.shape == (0, 8) and mask.dtype == torch.bool


@st.composite
def weights_and_ratio(draw):
    m = draw(st.integers(2, 32))
    n = draw(st.integers(1, m - 1))
    groups = draw(st.integers(1, 6))
    rows = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    pool = draw(
        st.lists(
            st.sampled_from(
                [0.0, -0.0, 1.0, -1.0, 0.25, 3.0, -3.0, 1e-3, float("inf"), float("nan")]
            ),
            min_size=1,
            max_size=5,
        )
    )
    use_pool = draw(st.booleans())
    if use_pool:  # heavy ties and special values
        idx = torch.tensor(draw(st.lists(st.integers(0, len(pool) - 1), min_size=rows * groups * m,
                                         max_size=rows * groups * m)))  # fmt: skip
        w = torch.tensor(pool)[idx].reshape(rows, groups * m)
    else:
        w = torch.randn(rows, groups * m)
    return w.to(dtype), n, m


@settings(max_examples=40, deadline=None)
@given(weights_and_ratio())
def test_property_mask_rule_and_backends_agree(case):
    w, n, m = case
    ref = nm_mask_ref(w, n, m)
    assert (ref.reshape(-1, m).sum(-1) == n).all()  # exactly n kept per group
    assert torch.equal(ref, brute_force_mask(w, n, m))
    with step.use_backend("triton"):
        assert torch.equal(step.nm_mask(w, n, m), ref)
