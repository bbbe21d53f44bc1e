"""pytest-benchmark benchmarks, on CPU, of one ``step.optim.STEP`` step in each phase
against one ``torch.optim.AdamW(foreach=True)`` step on the same small weight set, each
asserting that what it timed did what it should.

Not part of the test suite (``testpaths = ["tests"]``); run explicitly::

    python -m pytest benchmarks/test_bench_optimizer.py --benchmark-enable \
        --benchmark-group-by=group

Without ``--benchmark-enable`` (pyproject's ``addopts`` has ``--benchmark-disable``) every
benchmarked step runs once, and the assertions still hold. Timing runs on one CPU thread
(``conftest.py``'s autouse ``_one_thread``).
The weights are ``bench_optimizer.weight_shapes(64, 2)``: 98,944 parameters (98,304 of
them sparse 2:4). Each test puts its minimal bytes per step in ``extra_info["bytes"]``
(model: ``bench_optimizer.step_bytes``), so GB/s = bytes / time.
"""

from __future__ import annotations

import pytest
import torch
from bench_optimizer import (
    assert_params_close,
    make_adamw,
    make_step,
    make_weights,
    param_counts,
    params_of,
    step_bytes,
    weight_shapes,
)

WIDTH, BLOCKS = 64, 2
SHAPES = weight_shapes(WIDTH, BLOCKS)
FLAGS = [sparse for _, _, sparse in SHAPES]
N_SPARSE, N_DENSE = param_counts(SHAPES)
DTYPES = [torch.float32, torch.bfloat16]


def weights(dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return make_weights(SHAPES, dtype, torch.device("cpu"))


def label(benchmark, case: str, dtype: torch.dtype) -> None:
    """Group by dtype and record the step's minimal bytes."""
    benchmark.group = f"{N_SPARSE + N_DENSE} params {str(dtype).removeprefix('torch.')}"
    e = torch.tensor([], dtype=dtype).element_size()
    benchmark.extra_info["bytes"] = step_bytes(case, N_SPARSE, N_DENSE, e)


def snapshot(opt: torch.optim.Optimizer, key: str | None = None) -> list[torch.Tensor]:
    """Copies of every parameter (``key=None``) or of its state ``key``, the sparse
    weights first (param group 0), then the LayerNorms (group 1)."""
    return [(p if key is None else opt.state[p][key]).detach().clone() for p in params_of(opt)]


def sparse_part(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The sparse weights' entries of a :func:`snapshot`. Parameters are compared there
    only: a bfloat16 LayerNorm weight at 1.0 cannot move by lr=1e-3 (one ulp is 2^-7)."""
    return tensors[: len(SHAPES) - FLAGS.count(False)]


def assert_all_changed(after: list[torch.Tensor], before: list[torch.Tensor]) -> None:
    for i, (a, b) in enumerate(zip(after, before, strict=True)):
        assert not torch.equal(a, b), f"tensor {i} unchanged"


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_foreach(benchmark, dtype: torch.dtype) -> None:
    opt = make_adamw(*weights(dtype), FLAGS, "foreach")
    before = snapshot(opt)
    label(benchmark, "adamw", dtype)
    benchmark(opt.step)
    assert_all_changed(sparse_part(snapshot(opt)), sparse_part(before))
    assert_all_changed(snapshot(opt, "exp_avg_sq"), [torch.zeros_like(v) for v in before])
    steps = {int(opt.state[p]["step"]) for p in params_of(opt)}
    assert len(steps) == 1 and steps.pop() >= 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_precondition(benchmark, dtype: torch.dtype) -> None:
    w, g = weights(dtype)
    opt, adamw = make_step(w, g, FLAGS), make_adamw(w, g, FLAGS, "foreach")
    opt.step()
    adamw.step()
    assert_params_close(opt, adamw, "STEP's first precondition step vs AdamW(foreach)")
    before, v_before = snapshot(opt), snapshot(opt, "exp_avg_sq")
    label(benchmark, "step_precondition", dtype)
    benchmark(opt.step)
    assert opt.phase == "precondition" and opt.t >= 2
    assert_all_changed(sparse_part(snapshot(opt)), sparse_part(before))
    assert_all_changed(snapshot(opt, "exp_avg_sq"), v_before)  # v is written
    history = opt.autoswitch.history  # one AutoSwitch sample per step, read on the host
    assert [r.step for r in history] == list(range(1, opt.t + 1))
    assert all(0 < r.z < float("inf") and 0 < r.v < float("inf") for r in history)


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_mask_learning(benchmark, dtype: torch.dtype) -> None:
    opt = make_step(*weights(dtype), FLAGS)
    opt.step()
    opt.switch_now()
    n_sparse = len(opt.param_groups[0]["params"])
    before, m_before = snapshot(opt), snapshot(opt, "exp_avg")
    v_before = snapshot(opt, "exp_avg_sq")
    frozen = [opt.frozen_v(p) for p in opt.param_groups[0]["params"]]
    label(benchmark, "step_mask_learning", dtype)
    benchmark(opt.step)
    assert opt.phase == "mask_learning" and opt.switch_step == 1 and opt.t >= 2
    assert_all_changed(sparse_part(snapshot(opt)), sparse_part(before))
    assert_all_changed(snapshot(opt, "exp_avg"), m_before)
    v_after = snapshot(opt, "exp_avg_sq")
    for i in range(n_sparse):  # v frozen for the sparse weights (but below the guard's floor)
        assert frozen[i].any(), f"sparse weight {i}: no frozen v"
        assert torch.equal(v_after[i][frozen[i]], v_before[i][frozen[i]]), f"weight {i}: v written"
    # ...while the dense ones (LayerNorms) are still plain AdamW
    assert_all_changed(v_after[n_sparse:], v_before[n_sparse:])
