"""step.nm_linear: bit-packed positions, the Triton kernel vs the reference, autograd."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DTYPES,
    RATIOS,
    assert_within_tolerance_rule,
    kernel_devices,
    nm_linear_case,
    nm_linear_fp64,
    random_weights,
)
from step.kernels.nm_linear import nm_linear_tiles
from step.kernels.nm_positions import words_per_row

import step
from step.ops import nm_linear_ref, pack_positions, position_bits, unpack_positions
from step.ops.compressed_weight import NM_POSITIONS, compress_weight


@pytest.mark.parametrize("m", [2, 3, 4, 5, 8, 16, 32])
@pytest.mark.parametrize("kept", [1, 5, 11, 32, 41])
def test_packed_positions_follow_the_bit_stream(m, kept):
    indices = torch.randint(0, m, (6, kept), dtype=torch.uint8)
    words = pack_positions(indices, m)
    bits = position_bits(m)
    assert bits == max(1, (m - 1).bit_length()) and 2**bits >= m
    assert words.dtype == torch.int32 and words.shape == (6, -(-kept * bits // 32))
    for row, packed in zip(indices.tolist(), words.tolist(), strict=True):
        stream = sum((w & 0xFFFFFFFF) << (32 * i) for i, w in enumerate(packed))
        assert [(stream >> (j * bits)) & (2**bits - 1) for j in range(kept)] == row
        assert stream >> (kept * bits) == 0  # nothing past the last entry
    assert torch.equal(unpack_positions(words, m, kept), indices)


def test_position_bits_per_ratio():
    assert [position_bits(m) for m in (2, 4, 8, 16, 32)] == [1, 2, 3, 4, 5]
    assert words_per_row(4096 // 4, 4) == 4096 // 4 * 2 // 32


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n,m", RATIOS)
@pytest.mark.parametrize("tokens", [(1,), (3,), (17,), (2, 32), (130,)])
def test_triton_matches_the_reference(device, n, m, tokens):
    # K = 5 groups of m: never a multiple of the kernel's K step (64 columns)
    x, c, b = nm_linear_case(n, m, 24, 5 * m, tokens, torch.float16, device, bias=True)
    with step.use_backend("nm_linear=triton"):
        y = step.nm_linear(x, c, b)
    assert y.shape == (*tokens, 24) and y.dtype == torch.float16
    ref = nm_linear_ref(x, c.values, c.positions, n, m, b)
    assert_within_tolerance_rule(y, ref, nm_linear_fp64(x, c, b))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_out,k", [(17, 96), (70, 200)])
def test_triton_dtypes_and_ragged_shapes(device, dtype, bias, n_out, k):
    x, c, b = nm_linear_case(1, 4, n_out, k, (5,), dtype, device, bias)
    with step.use_backend("nm_linear=triton"):
        y = step.nm_linear(x, c, b)
    assert y.dtype == dtype and torch.isfinite(y).all()
    if dtype == torch.float32:  # TF32 would be allowed on a GPU; the reference is IEEE
        torch.testing.assert_close(y, nm_linear_fp64(x, c, b).float(), rtol=2e-3, atol=2e-3)
    else:
        ref = nm_linear_ref(x, c.values, c.positions, 1, 4, b)
        assert_within_tolerance_rule(y, ref, nm_linear_fp64(x, c, b))


def test_triton_writes_every_output_and_handles_empty_inputs():
    x, c, b = nm_linear_case(2, 8, 33, 64, (64,), torch.float32, "cpu", bias=False)
    with step.use_backend("nm_linear=triton"):
        y = step.nm_linear(x, c, b)
        assert torch.isfinite(y).all()
        empty = step.nm_linear(x[:0], c)
        assert empty.shape == (0, 33)


def test_decode_tiles_read_the_weight_once():
    """Up to 16 tokens the grid has one program per block of output rows."""
    cpu = torch.device("cpu")
    for n, m in [(2, 4), (1, 8), (16, 32)]:
        bm, bn, bg, _ = nm_linear_tiles(16, n, m, torch.float16, 4096, cpu)
        assert bm == 16 and bg * triton_pow2(m) >= 16
        # the scatter of one K step stays near 8K elements
        assert bn * bg * triton_pow2(n) * triton_pow2(m) <= 8192 or bn == 16
        assert nm_linear_tiles(256, n, m, torch.float16, 4096, cpu)[0] == 128


def triton_pow2(m: int) -> int:
    return 1 << (m - 1).bit_length()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_gradients_reach_x_and_bias(backend):
    x, c, b = nm_linear_case(1, 4, 12, 32, (3, 2), torch.float32, "cpu", bias=True)
    x.requires_grad_(True)
    b.requires_grad_(True)
    with step.use_backend(f"nm_linear={backend}"):
        step.nm_linear(x, c, b).square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    b2 = b.detach().clone().requires_grad_(True)
    F.linear(x2, step.nm_decompress(c), b2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_compressed_weight_keeps_positions_packed():
    w = random_weights((32, 64), torch.float32, "cpu")
    cw = compress_weight(w, 1, 8)
    assert cw.layout == NM_POSITIONS
    assert cw.meta.dtype == torch.int32 and cw.meta.shape == (32, words_per_row(8, 8))
    values, indices = cw.file_tensors()
    c = step.nm_compress(w, 1, 8)
    assert torch.equal(values, c.values) and torch.equal(indices, c.indices)
    torch.testing.assert_close(cw.dense(), step.nm_decompress(c))
    x = torch.randn(3, 64)
    torch.testing.assert_close(cw.linear(x), x @ step.nm_decompress(c).t())


def test_bad_positions_are_refused_before_any_kernel():
    x, c, _ = nm_linear_case(2, 4, 8, 32, (2,), torch.float16, "cpu", bias=False)
    with pytest.raises(ValueError, match=r"positions has shape \(8, 16\).*expected int32"):
        torch.ops.step.nm_linear(x, c.values, c.indices, 2, 4, None)
    with pytest.raises(ValueError, match="x's last dim must be 32"):
        step.nm_linear(x[:, :16], c)


@pytest.mark.gpu
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 8), (2, 8), (4, 8), (16, 32)])
@pytest.mark.parametrize("tokens", [1, 16, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_real_sizes(n, m, tokens, dtype):
    x, c, b = nm_linear_case(n, m, 4096, 4096, (tokens,), dtype, "cuda", bias=True)
    with step.use_backend("nm_linear=triton"):
        y = step.nm_linear(x, c, b)
    ref = nm_linear_ref(x, c.values, c.positions, n, m, b)
    assert_within_tolerance_rule(y, ref, nm_linear_fp64(x, c, b))
