"""The decode kernel of step.nm_linear (1-16 tokens, m <= 8) against the reference."""

import pytest
import torch
from helpers import assert_within_tolerance_rule, kernel_devices, nm_linear_case, nm_linear_fp64

import step
from step.kernels import nm_linear_decode as decode
from step.ops import nm_linear_ref


def case(n, m, n_out, k, tokens, dtype, device, bias=True):
    return nm_linear_case(n, m, n_out, k, (tokens,), dtype, device, bias)


def check(x, c, b, tiles):
    y = decode.nm_linear_decode_triton(x, c.values, c.positions, c.n, c.m, b, tiles)
    assert y.shape == (x.shape[0], c.shape[0]) and y.dtype == x.dtype
    ref = nm_linear_ref(x, c.values, c.positions, c.n, c.m, b)
    fp64 = nm_linear_fp64(x, c, b)
    if x.dtype == torch.float32:  # TF32 would be allowed on a GPU; the reference is IEEE
        torch.testing.assert_close(y, fp64.float(), rtol=2e-3, atol=2e-3)
    else:
        assert_within_tolerance_rule(y, ref, fp64)
    return y


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (1, 4), (3, 4), (1, 8), (2, 8), (4, 8), (3, 5)])
@pytest.mark.parametrize("tokens", [1, 7, 16])
def test_matches_the_reference_with_the_k_range_split(device, n, m, tokens):
    # 21 groups in steps of 2 over 3 splits: ragged steps and a ragged last split
    x, c, b = case(n, m, 70, 21 * m, tokens, torch.float16, device)
    check(x, c, b, tiles=(16, 2, 3, 4))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_dtypes_one_split_and_default_tiles(device, dtype, bias):
    x, c, b = case(2, 4, 33, 96, 5, dtype, device, bias)
    check(x, c, b, tiles=None)  # off a GPU: 64 rows, 64 groups, one split
    check(x, c, b, tiles=(16, 8, 1, 4))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n,m,bg", [(1, 4, 16), (2, 4, 8), (1, 2, 32), (1, 4, 2), (2, 4, 1)])
def test_whole_word_and_per_entry_position_reads(device, n, m, bg):
    """Steps covering whole position words (bg*n*bits a multiple of 32: the first three)
    load each word once; shorter steps load every entry's words."""
    x, c, b = case(n, m, 40, 64 * m, 3, torch.float16, device)
    check(x, c, b, tiles=(16, bg, 2, 4))


@pytest.mark.parametrize("device", kernel_devices())
def test_arrival_counters_are_left_at_zero(device):
    x, c, b = case(1, 4, 50, 64, 2, torch.float16, device)
    first = check(x, c, b, tiles=(16, 2, 4, 4))
    counters = decode._arrival_counters(torch.device(device), 4)
    assert counters.numel() >= 4 and not counters.any()
    # a second launch on the same counters gives the same, bit for bit
    assert torch.equal(check(x, c, b, tiles=(16, 2, 4, 4)), first)


def test_tiles_split_until_every_sm_has_two_programs():
    tiles = decode.nm_linear_decode_tiles
    fp16 = torch.float16
    # 4096 x 4096 at 1:4 on 132 SMs: 64 row blocks, 16 steps of 64 groups, 8 splits
    assert tiles(4096, 1024, 1, 4, fp16, 132) == (64, 64, 8, 4)
    assert tiles(32768, 1024, 1, 4, fp16, 132)[2] == 1  # many rows: no split
    bn, bg, split, _ = tiles(4096, 256, 2, 4, fp16, 132)
    assert 256 // (split * bg) >= 2  # short K: every split keeps two steps
    # K steps: 256 columns for n = 1, 128 for n > 1, halved for float32
    assert [tiles(4096, 512, n, 8, fp16, 132)[1] for n in (1, 2, 4)] == [32, 16, 16]
    assert tiles(4096, 512, 1, 8, torch.float32, 132)[1] == 16
    assert tiles(4096, 2048, 1, 2, fp16, 0) == (64, 128, 1, 4)  # no GPU: no split


def test_nm_linear_takes_the_decode_kernel_up_to_16_tokens(monkeypatch):
    calls = []
    real = decode.nm_linear_decode_triton

    def spy(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr("step.kernels.nm_linear.nm_linear_decode_triton", spy)
    for (n, m), tokens, used in [((1, 4), 16, True), ((1, 4), 17, False), ((16, 32), 1, False)]:
        x, c, b = case(n, m, 24, 2 * m, tokens, torch.float16, "cpu")
        with step.use_backend("nm_linear=triton"):
            y = step.nm_linear(x, c, b)
        assert_within_tolerance_rule(
            y,
            nm_linear_ref(x, c.values, c.positions, n, m, b),
            nm_linear_fp64(x, c, b),
        )
        assert (calls[-1:] == [tokens]) == used
        calls.clear()


@pytest.mark.gpu
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 8), (2, 8), (4, 8)])
@pytest.mark.parametrize("tokens", [1, 4, 16])
@pytest.mark.parametrize("n_out", [4096, 11008])
def test_gpu_real_sizes_default_tiles(n, m, tokens, n_out):
    x, c, b = case(n, m, n_out, 4096, tokens, torch.float16, "cuda")
    for _ in range(3):  # counters are reused between launches
        check(x, c, b, tiles=None)
