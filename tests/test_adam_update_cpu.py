"""The ``cpu`` backend of step::adam_update: what the shared comparison with the reference
(tests/test_adam_update.py) does not reach: exact dtype conversions on every bit pattern,
results independent of the thread count, automatic choice, and the compile-at-first-use
loader (cache, missing or failing compiler)."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import HALF_DTYPES, assert_bits_equal

import step
from step.native.cpu import adam_update as cpu_backend
from step.native.cpu import loader
from step.ops import adam_update
from step.ops.dispatch import BackendError, backend_status, choose

HYPER = dict(beta1=0.9, beta2=0.999, eps=1e-8)


def every_pattern(dtype: torch.dtype) -> torch.Tensor:
    """All 65536 values of a 16-bit float dtype, NaNs left out, as a [2048, 32] tensor."""
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    values = values[~values.isnan()]
    return values[: values.numel() // 32 * 32].reshape(-1, 32)


def decay_only_step(p: torch.Tensor, lr: float, weight_decay: float) -> None:
    """A step whose update is exactly ``p * (1 - lr * weight_decay)``: zero grads, beta1 = 0
    (so exp_avg becomes 0) and an Adam term of -0.0, which leaves every value, -0.0
    included, as it is."""
    zeros = torch.zeros_like(p)
    with step.use_backend("adam_update=cpu"):
        adam_update([p], [zeros], [torch.zeros(p.shape)], [torch.ones(p.shape)], lr=lr,
                    beta1=0.0, beta2=0.5, eps=1.0, weight_decay=weight_decay, step=1,
                    update_v=False)  # fmt: skip


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_widening_and_narrowing_keep_every_value(dtype):
    """lr = 0: params go through float32 and back unchanged, for every bit pattern."""
    p = every_pattern(dtype)
    before = p.clone()
    decay_only_step(p, lr=0.0, weight_decay=0.0)
    assert_bits_equal(p, before)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("factor", [1.5, 1 + 2**-10, 0.999, 0.7, 0.5, 1e-3])
def test_narrowing_rounds_to_nearest_even_like_torch(dtype, factor):
    """p * factor computed in float32 and rounded back gives the bits of PyTorch's own
    float32 -> fp16/bf16 conversion for every value: exact ties (x1.5, x0.5 of
    subnormals), overflow to inf (x1.5, x(1 + 2^-10) at the top), subnormal results."""
    p = every_pattern(dtype)
    lr, weight_decay = 1.0, 1.0 - factor  # a negative decay is how factor > 1 is reached
    decay = torch.tensor(1.0 - lr * weight_decay, dtype=torch.float32)
    expected = (p.float() * decay).to(dtype)
    decay_only_step(p, lr=lr, weight_decay=weight_decay)
    assert_bits_equal(p, expected)


@pytest.mark.parametrize("want_masks", [False, True])
def test_result_does_not_depend_on_the_thread_count(monkeypatch, want_masks):
    shapes = [(300, 64), (1000, 40), (7, 4)]
    outputs = []
    for threads in (1, 2, 3):
        torch.manual_seed(0)
        params = [torch.randn(s) for s in shapes]
        grads = [torch.randn(s) for s in shapes]
        exp_avgs = [torch.randn(s) for s in shapes]
        exp_avg_sqs = [torch.rand(s) for s in shapes]
        monkeypatch.setattr(cpu_backend, "CHUNK", 1024)
        monkeypatch.setattr(cpu_backend, "MIN_PARALLEL", 0)
        cpu_backend._chunk_table.cache_clear()
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        kw = (dict(update_v=False, srste_decay=0.5, n=2, m=4) if want_masks
              else dict(update_v=True, want_z=True))  # fmt: skip
        with step.use_backend("adam_update=cpu"):
            z = adam_update(params, grads, exp_avgs, exp_avg_sqs, lr=1e-2, **HYPER,
                            weight_decay=0.1, step=3, v_step=1 if want_masks else 3,
                            **kw)  # fmt: skip
        outputs.append([z, *params, *exp_avgs, *exp_avg_sqs])
    cpu_backend._chunk_table.cache_clear()
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other, strict=True):
            assert_bits_equal(a, b)


def test_chunks_hold_whole_groups():
    numels = (98, 7 * 10_000, 14)
    table = cpu_backend._chunk_table(numels, 7)
    assert torch.all(table[:, 1:] % 7 == 0)
    for t, numel in enumerate(numels):
        rows = table[table[:, 0] == t]
        assert rows[0, 1] == 0 and rows[-1, 2] == numel
        assert torch.equal(rows[1:, 1], rows[:-1, 2])  # contiguous, no gap or overlap


def test_automatic_choice_on_cpu_is_the_c_backend():
    assert choose("adam_update", torch.device("cpu"))[0] == "cpu"
    assert backend_status("cpu", "cpu").available
    assert not backend_status("cpu", "meta").available


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """An empty library cache and no memory of earlier loads."""
    monkeypatch.setenv("STEP_CACHE_DIR", str(tmp_path))
    for cached in (loader.load_library, loader.library_status, cpu_backend._function):
        cached.cache_clear()
    yield tmp_path
    for cached in (loader.load_library, loader.library_status, cpu_backend._function):
        cached.cache_clear()


def test_library_is_built_once_and_cached_on_disk(fresh_loader, monkeypatch):
    loader.load_library("adam_update_cpu")
    built = list((fresh_loader / "cpu").glob("adam_update_cpu-*.so"))
    assert len(built) == 1
    loader.load_library.cache_clear()
    monkeypatch.setattr(loader, "_build", lambda *a: pytest.fail("rebuilt a cached library"))
    loader.load_library("adam_update_cpu")


def test_missing_compiler_leaves_the_reference(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    status = backend_status("cpu", "cpu")
    assert not status.available and "no C compiler" in status.reason
    assert choose("adam_update", torch.device("cpu"))[0] == "reference"
    with step.use_backend("adam_update=cpu"), pytest.raises(BackendError, match="no C compiler"):
        choose("adam_update", torch.device("cpu"))


def test_failing_compiler_is_reported_with_its_output(fresh_loader, monkeypatch, tmp_path):
    fake = tmp_path / "broken-cc"
    fake.write_text("#!/bin/sh\necho 'fatal: broken on purpose' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(loader.CompileError, match="broken on purpose"):
        loader.load_library("adam_update_cpu")
    assert not list((fresh_loader / "cpu").glob("*.so"))  # nothing half-written left
    status = backend_status("cpu", "cpu")
    assert not status.available and "failed to compile" in status.reason


def test_unwritable_cache_is_reported(fresh_loader, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("STEP_CACHE_DIR", str(blocker))
    status = backend_status("cpu", "cpu")
    assert not status.available and "STEP_CACHE_DIR" in status.reason


def _threaded_step(shapes):
    torch.manual_seed(0)
    params = [torch.randn(s) for s in shapes]
    state = [[torch.randn(s) for s in shapes], [torch.rand(s) for s in shapes]]
    grads = [torch.randn(s) for s in shapes]
    with step.use_backend("adam_update=cpu"):
        adam_update(params, grads, *state, lr=1e-2, **HYPER, weight_decay=0.1, step=3,
                    v_step=3, update_v=True)  # fmt: skip
    return [p.numpy().tobytes() for p in params]


def _child(shapes, want):
    os._exit(0 if _threaded_step(shapes) == want else 3)


def test_a_forked_child_runs_the_threaded_step(monkeypatch):
    """The parent's worker threads do not survive fork(): the child must not wait for them.

    (The child runs no multi-threaded torch op: OpenMP itself does not survive fork.)
    """
    import multiprocessing

    monkeypatch.setattr(cpu_backend, "MIN_PARALLEL", 0)
    monkeypatch.setattr(cpu_backend, "CHUNK", 1024)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # inherited by the child
    cpu_backend._chunk_table.cache_clear()
    shapes = [(300, 64), (1000, 40)]
    try:
        want = _threaded_step(shapes)  # the parent's pool now has a live thread
        child = multiprocessing.get_context("fork").Process(target=_child, args=(shapes, want))
        child.start()
        child.join(timeout=60)
    finally:
        cpu_backend._chunk_table.cache_clear()
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0, "the child hung (None) or computed another result (3)"
