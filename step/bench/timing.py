"""Round-robin timing, shared by ``step-sparsity bench`` and ``benchmarks/``."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

L2_FLUSH_BYTES = 256 * 2**20
"""Overwritten before every timed call on CUDA, to evict L2 (50 MB on an H100)."""


def l2_flush_buffer(device: torch.device) -> torch.Tensor | None:
    """On cuda, a :data:`L2_FLUSH_BYTES` buffer for :func:`time_interleaved` to overwrite
    before each call; on cpu None (no flush)."""
    if device.type != "cuda":
        return None
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)


def time_interleaved(
    fns: list[Callable[[], object]], reps: int, warmup: int, flush: torch.Tensor | None
) -> list[list[float]]:
    """Milliseconds of ``reps`` calls of each of ``fns``, the functions taking turns.

    Round-robin (rep 1 of every function, then rep 2, ...) so that a machine getting
    faster or slower during the run shifts every function alike and the ratios hold.
    With ``flush`` (CUDA): CUDA events around each call, and ``flush`` overwritten before
    it to evict L2; the flush is enqueued before the start event, so the host-side dispatch
    of the call mostly overlaps it, and what does not overlap is counted (users pay it too).
    Without ``flush`` (CPU): ``time.perf_counter`` around each call.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    if flush is None:
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(reps):
            for fn, fn_times in zip(fns, times, strict=True):
                t0 = time.perf_counter()
                fn()
                fn_times.append((time.perf_counter() - t0) * 1e3)
        return times
    torch.cuda.synchronize(flush.device)
    events = [
        [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(reps)
        ]
        for _ in fns
    ]
    for rep in range(reps):
        for fn, fn_events in zip(fns, events, strict=True):
            start, end = fn_events[rep]
            flush.zero_()
            start.record()
            fn()
            end.record()
    torch.cuda.synchronize(flush.device)
    return [[start.elapsed_time(end) for start, end in fn_events] for fn_events in events]
