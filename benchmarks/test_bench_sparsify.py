"""pytest-benchmark benchmarks, on CPU, of the reference ``nm_mask`` and ``to_sparse24``
against a copy of the same tensor, each asserting that what it timed is correct.

Not part of the test suite (``testpaths = ["tests"]``); run explicitly::

    python -m pytest benchmarks/ --benchmark-enable --benchmark-group-by=group

Without ``--benchmark-enable`` (pyproject's ``addopts`` has ``--benchmark-disable``) every
benchmarked function runs once, and the correctness assertions still hold. Timing runs on
one CPU thread (``conftest.py``'s autouse ``_one_thread``). Each test puts its minimal
bytes in ``extra_info["bytes"]`` (model: ``bench_sparsify.op_bytes``), so GB/s = bytes /
time; the copy in the same group is the bandwidth baseline.
"""

from __future__ import annotations

import pytest
import torch
from bench_sparsify import op_bytes

import step

ROWS, K = 1024, 1024


def weights(dtype: torch.dtype) -> torch.Tensor:
    """A fixed random ``[ROWS, K]`` weight of ``dtype`` on the CPU."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(ROWS, K, generator=gen).to(dtype)


def label(benchmark, op: str, w: torch.Tensor) -> None:
    """Group the benchmark by shape and dtype and record its minimal bytes."""
    benchmark.group = f"{ROWS}x{K} {str(w.dtype).removeprefix('torch.')}"
    benchmark.extra_info["bytes"] = op_bytes(op, ROWS, K, w.element_size())


def masked_reference(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``where(mask, w, 0)``."""
    return torch.where(mask, w, torch.zeros_like(w))


def assert_is_two_four_mask(w: torch.Tensor, mask: torch.Tensor) -> None:
    """``mask`` keeps exactly 2 of every 4, and no dropped |w| exceeds a kept one."""
    assert mask.dtype == torch.bool and mask.shape == w.shape
    groups, keep = w.float().abs().view(-1, 4), mask.view(-1, 4)
    assert bool((keep.sum(-1) == 2).all())
    smallest_kept = torch.where(keep, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(keep, -torch.inf, groups).amax(-1)
    assert bool((smallest_kept >= largest_dropped).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_copy(benchmark, dtype: torch.dtype) -> None:
    w = weights(dtype)
    label(benchmark, "copy", w)
    out = benchmark(lambda: torch.empty_like(w).copy_(w))
    assert torch.equal(out, w) and out.data_ptr() != w.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_nm_mask_reference(benchmark, dtype: torch.dtype) -> None:
    w = weights(dtype)
    label(benchmark, "nm_mask", w)
    with step.use_backend("reference"):
        mask = benchmark(step.nm_mask, w, 2, 4)
    assert_is_two_four_mask(w, mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_to_sparse24_reference(benchmark, dtype: torch.dtype) -> None:
    w = weights(dtype)
    label(benchmark, "to_sparse24", w)
    with step.use_backend("reference"):
        values, meta = benchmark(step.to_sparse24, w)
        dense = step.from_sparse24(values, meta)
        mask = step.nm_mask(w, 2, 4)
    assert values.shape == (ROWS, K // 2) and values.dtype == dtype
    assert meta.shape == (ROWS, K // 16) and meta.dtype == torch.int16
    assert_is_two_four_mask(w, mask)
    assert torch.equal(dense, masked_reference(w, mask))
