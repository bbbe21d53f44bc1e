"""step.masked_linear: forward and the straight-through-estimator backward."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, RATIOS, assert_within_tolerance_rule, kernel_devices, random_weights
from step.kernels.masked_linear import masked_linear_tiles

import step
from step.ops import masked_linear_dx_ref, masked_linear_ref, nm_mask_ref


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


# ---------------------------------------------------------------- the fused Triton kernel


def fp64_masked(x, w, mask, b):
    wm = torch.where(mask, w.double(), 0)
    return F.linear(x.double(), wm, b.double() if b is not None else None)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n,m", RATIOS)
@pytest.mark.parametrize("tokens", [(1,), (3,), (17,), (2, 32), (100,), (200,)])
def test_triton_forward_mask_exact_and_output_within_rule(device, n, m, tokens):
    # K = 5 groups: never a multiple of the kernel's 64-column K step; ties are frequent.
    # 100 tokens: one 128-token block ranks in the matmul; 200: two blocks, the mask is
    # ranked once before the matmul.
    w = random_weights((40, 5 * m), torch.float16, device, ties=True)
    x = random_weights((*tokens, 5 * m), torch.float16, device)
    b = random_weights((40,), torch.float16, device)
    with step.use_backend("masked_linear=triton"):
        y, mask = torch.ops.step.masked_linear(x, w, n, m, b, None)
    assert torch.equal(mask, nm_mask_ref(w, n, m))
    ref, _ = masked_linear_ref(x, w, n, m, b)
    assert_within_tolerance_rule(y, ref, fp64_masked(x, w, mask, b))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("given", [False, True])
def test_triton_dtypes_and_a_given_mask(device, dtype, given):
    w = random_weights((70, 96), dtype, device)
    x = random_weights((33, 96), dtype, device)
    # a given mask is used as is, even one that is not w's own top-2
    mask = torch.rand(70, 96, device=device) < 0.5 if given else None
    with step.use_backend("masked_linear=triton"):
        y, returned = torch.ops.step.masked_linear(x, w, 2, 4, None, mask)
    used = mask if given else nm_mask_ref(w, 2, 4)
    assert returned.numel() == 0 if given else torch.equal(returned, used)
    if dtype == torch.float32:  # TF32 would be allowed on a GPU; the reference is IEEE
        torch.testing.assert_close(y, fp64_masked(x, w, used, None).float(), rtol=2e-3, atol=2e-3)
    else:
        ref, _ = masked_linear_ref(x, w, 2, 4, None, used)
        assert_within_tolerance_rule(y, ref, fp64_masked(x, w, used, None))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 8), (3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_triton_gradients_match_autograd_through_the_reference(n, m, bias):
    x = torch.randn(3, 5, 7 * m, requires_grad=True)
    w = torch.randn(20, 7 * m, requires_grad=True)
    b = torch.randn(20, requires_grad=True) if bias else None
    grad = torch.randn(3, 5, 20)
    leaves = [t for t in (x, w, b) if t is not None]
    with step.use_backend("masked_linear=triton,masked_linear_dx=triton"):
        got = torch.autograd.grad(step.masked_linear(x, w, n, m, b), leaves, grad)
    want = torch.autograd.grad(ste_autograd(x, w, n, m, b), leaves, grad)
    for g, g_ref in zip(got, want, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 8), (5, 6)])
@pytest.mark.parametrize("tokens", [(2, 19), (150,)])
def test_triton_input_gradient_within_rule(device, dtype, n, m, tokens):
    w = random_weights((50, 9 * m), dtype, device)
    mask = nm_mask_ref(w, n, m)
    dy = random_weights((*tokens, 50), dtype, device)
    with step.use_backend("masked_linear_dx=triton"):
        dx = torch.ops.step.masked_linear_dx(dy, w, mask, m)
    want = dy.double() @ torch.where(mask, w.double(), 0)
    if dtype == torch.float32:
        torch.testing.assert_close(dx, want.float(), rtol=2e-3, atol=2e-3)
    else:
        assert_within_tolerance_rule(dx, masked_linear_dx_ref(dy, w, mask, m), want)


@pytest.mark.parametrize("tokens,ranked_first", [(128, False), (129, True), (64, False)])
def test_triton_ranks_once_before_the_matmul_with_several_token_blocks(
    monkeypatch, tokens, ranked_first
):
    from step.kernels import masked_linear as launcher

    calls = []
    rank = launcher.nm_mask_triton
    monkeypatch.setattr(launcher, "nm_mask_triton", lambda *a: calls.append(a) or rank(*a))
    w = random_weights((40, 32), torch.float16, "cpu", ties=True)
    x = random_weights((tokens, 32), torch.float16, "cpu")
    with step.use_backend("masked_linear=triton"):
        y, mask = torch.ops.step.masked_linear(x, w, 2, 4, None, None)
    assert len(calls) == int(ranked_first)
    assert torch.equal(mask, nm_mask_ref(w, 2, 4))
    ref, _ = masked_linear_ref(x, w, 2, 4, None)
    assert_within_tolerance_rule(y, ref, fp64_masked(x, w, mask, None))


def test_triton_computes_the_mask_with_no_tokens():
    w = torch.randn(8, 32)
    with step.use_backend("masked_linear=triton"):
        y, mask = torch.ops.step.masked_linear(torch.randn(0, 32), w, 2, 4, None, None)
    assert y.shape == (0, 8) and torch.equal(mask, nm_mask_ref(w, 2, 4))


def test_tiles():
    cpu = torch.device("cpu")
    for m in (2, 4, 8, 16, 32, 5):
        bm, bn, bg, warps = masked_linear_tiles(4096, m, torch.float16, 4096, cpu)
        assert bg * (1 << (m - 1).bit_length()) >= 16 and (bm, bn, warps) == (128, 128, 8)
    assert masked_linear_tiles(8, 4, torch.float16, 4096, cpu)[0] == 16
    assert masked_linear_tiles(4096, 4, torch.float32, 4096, cpu)[::3] == (64, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 8)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_real_sizes(n, m, dtype):
    w = random_weights((4096, 4096), dtype, "cuda")
    x = random_weights((512, 4096), dtype, "cuda")
    with step.use_backend("masked_linear=triton"):
        y, mask = torch.ops.step.masked_linear(x, w, n, m, None, None)
    assert torch.equal(mask, nm_mask_ref(w, n, m))
    ref, _ = masked_linear_ref(x, w, n, m, None)
    assert_within_tolerance_rule(y, ref, fp64_masked(x, w, mask, None))
