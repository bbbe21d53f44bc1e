"""step.to_sparse24 / from_sparse24: the CUTLASS format, checked against PyTorch."""

import pytest
import torch
from helpers import HALF_DTYPES, assert_bits_equal, kernel_devices, random_weights
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

import step
from step.ops import cutlass_meta_offsets_ref, from_sparse24_ref, nm_mask_ref, to_sparse24_ref

SHAPES = [(32, 64), (64, 128), (96, 192), (32, 320)]


def awkward_weights(shape, dtype, device="cpu"):
    """Random weights plus groups with zero, one, three and four nonzeros and ties."""
    w = random_weights(shape, dtype, device)
    w[0, 0:4] = 0.0
    w[0, 4:8] = torch.tensor([0.0, 0.0, 0.0, 5.0])
    w[1, 0:4] = torch.tensor([0.0, -2.0, 0.0, 0.0])
    w[1, 4:8] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    w[2, 8:12] = torch.tensor([-0.0, 3.0, -0.0, 0.0])
    w[3, 12:16] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    return w


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pytorch_decoder_reproduces_the_masked_weight(backend, dtype, shape):
    w = awkward_weights(shape, dtype)
    with step.use_backend(backend):
        values, meta = step.to_sparse24(w)
    assert values.shape == (shape[0], shape[1] // 2) and values.dtype == dtype
    assert meta.shape == (shape[0], shape[1] // 16) and meta.dtype == torch.int16
    decoded = sparse_semi_structured_to_dense_cutlass(values, meta)
    assert torch.equal(decoded, torch.where(nm_mask_ref(w, 2, 4), w, 0))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_same_bits_as_pytorch_encoder_on_two_four_weights(dtype):
    # with exactly two nonzeros per group there is one right answer
    w = random_weights((64, 256), dtype)
    w = torch.where(nm_mask_ref(w, 2, 4), w, 0)
    values, meta = step.to_sparse24(w)
    torch_values, torch_meta = sparse_semi_structured_from_dense_cutlass(w)
    assert_bits_equal(values, torch_values)
    assert torch.equal(meta, torch_meta)


def test_golden_meta_words():
    # every group keeps positions (0, 1): code 0b0100, so every word is 0x4444
    w = torch.zeros(32, 64, dtype=torch.float16)
    w[:, 0::4] = 2.0
    w[:, 1::4] = -1.0
    values, meta = step.to_sparse24(w)
    assert (meta == 0x4444).all()
    assert values[:, 0::2].eq(2.0).all() and values[:, 1::2].eq(-1.0).all()
    # keep (2, 3) everywhere: code 0b1110 -> word 0xEEEE (negative as int16)
    w = torch.zeros(32, 64, dtype=torch.float16)
    w[:, 2::4] = 1.0
    w[:, 3::4] = 1.0
    assert (step.to_sparse24(w)[1] == torch.tensor(0xEEEE - 0x10000, dtype=torch.int16)).all()


def test_meta_offsets_are_a_permutation():
    for rows, cols in [(32, 4), (64, 8), (96, 20)]:
        offsets = cutlass_meta_offsets_ref(rows, cols)
        assert torch.equal(offsets.sort().values, torch.arange(rows * cols))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference_exactly(device, dtype, shape):
    for ties in (False, True):
        w = random_weights(shape, dtype, device, ties=ties)
        values, meta = to_sparse24_ref(w)
        with step.use_backend("triton"):
            t_values, t_meta = step.to_sparse24(w)
            dense = step.from_sparse24(values, meta)
        assert_bits_equal(t_values, values)
        assert torch.equal(t_meta.cpu(), meta.cpu())
        assert_bits_equal(dense, from_sparse24_ref(values, meta))
        assert_bits_equal(dense, torch.where(nm_mask_ref(w, 2, 4), w, 0))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_from_sparse24_decodes_pytorch_output(backend):
    w = random_weights((64, 128), torch.bfloat16)
    w = torch.where(nm_mask_ref(w, 2, 4), w, 0)
    values, meta = sparse_semi_structured_from_dense_cutlass(w)
    with step.use_backend(backend):
        assert_bits_equal(step.from_sparse24(values, meta), w)


def test_empty_rows():
    values, meta = step.to_sparse24(torch.empty(0, 64, dtype=torch.float16))
    assert values.shape == (0, 32) and meta.shape == (0, 4)
    with step.use_backend("triton"):
        assert step.from_sparse24(values, meta).shape == (0, 64)
