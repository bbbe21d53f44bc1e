"""Shared test utilities: the tolerance rule and bit-exact comparisons."""

from __future__ import annotations

import pytest
import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)
RATIOS = [(1, 2), (2, 4), (1, 4), (2, 8), (4, 8), (1, 8), (1, 16), (16, 32), (3, 5), (5, 6)]
"""N:M patterns tested everywhere: the ones the issue names plus non-power-of-two M."""


def assert_within_tolerance_rule(
    out: torch.Tensor, ref_lowp: torch.Tensor, ref_fp64: torch.Tensor, name: str = "output"
) -> None:
    """flash-attention's rule: the kernel's max error against a float64 reference may be
    at most twice the error PyTorch's own low-precision computation makes (plus a few
    ulps of the result's scale, so that an exact reference does not demand exactness)."""
    assert out.shape == ref_fp64.shape, (out.shape, ref_fp64.shape)
    assert out.dtype == ref_lowp.dtype
    err = (out.double() - ref_fp64).abs().max().item()
    ref_err = (ref_lowp.double() - ref_fp64).abs().max().item()
    scale = ref_fp64.abs().max().item() if ref_fp64.numel() else 0.0
    floor = 4 * torch.finfo(out.dtype).eps * scale
    assert err <= 2 * ref_err + floor, (
        f"{name}: error {err:.3g} > 2 x reference error {ref_err:.3g}"
    )


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bit-for-bit equality (distinguishes -0.0 from +0.0 and keeps NaN payloads)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    if a.is_floating_point():
        width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(width), b.contiguous().view(width)
    assert torch.equal(a.cpu(), b.cpu())


def random_weights(shape, dtype, device="cpu", *, ties: bool = False) -> torch.Tensor:
    """Fresh random weights; with ``ties`` drawn from a few values so groups tie often,
    with exact zeros (both signs) among them."""
    if ties:
        choices = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0])
        w = choices[torch.randint(len(choices), shape)]
    else:
        w = torch.randn(shape)
    return w.to(dtype=dtype, device=device)


def kernel_devices() -> list:
    """Devices on which the Triton kernels are tested: the CPU (interpreter) and, when
    present, the GPU (marked ``gpu``)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def nm_linear_case(n, m, n_out, k, tokens, dtype, device, bias=True):
    """``(x [*tokens, k], c = nm_compress(w [n_out, k], n, m), bias [n_out] or None)``,
    fresh random, with one all-zero group in w."""
    import step

    w = random_weights((n_out, k), dtype, device)
    w[0, :m] = 0.0
    c = step.nm_compress(w, n, m)
    x = random_weights((*tokens, k), dtype, device)
    b = random_weights((n_out,), dtype, device) if bias else None
    return x, c, b


def nm_linear_fp64(x, c, b):
    """``x @ W.T + b`` in float64 for the compressed weight ``c``."""
    import torch.nn.functional as F

    import step

    dense = step.nm_decompress(c).double()
    return F.linear(x.double(), dense, b.double() if b is not None else None)


def interrupted_at(monkeypatch, task_cls, step: int, run) -> None:
    """Call ``run()`` with ``task_cls.train_batch`` raising ``KeyboardInterrupt`` when asked
    for ``step`` (a run killed there), expect it to stop so, and restore the task."""
    original = task_cls.train_batch

    def interrupted(self, t):
        if t == step:
            raise KeyboardInterrupt
        return original(self, t)

    monkeypatch.setattr(task_cls, "train_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(task_cls, "train_batch", original)
