"""The ``cpu`` backend of ``step::adam_update``: ``csrc/adam_update_cpu.c`` through ctypes.

One pass over p, g, m, v per step (the reference makes eight), with the SR-STE term's
N:M mask computed per group in the same pass. Work is cut into chunks of whole groups
(the chunk table, cached per set of tensors like the Triton launcher's) and the chunks
are shared among ``torch.get_num_threads()`` threads; ctypes releases the GIL during
each call. The AutoSwitch sums are kept per chunk and added in chunk order, so they do
not depend on the thread count.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from ...kernels.adam_fused import dtype_groups, fused_flags, fused_scalars, guard_floors
from ...kernels.float_bits import DTYPE_CODES
from ...ops.dispatch import register
from .loader import load_library

CHUNK = 1 << 15
"""Elements per chunk (rounded down to whole groups): the unit of threading and of the
AutoSwitch partial sums."""
MIN_PARALLEL = 1 << 18
"""Fewer elements than this in one call run on the calling thread alone."""


class _Args(ctypes.Structure):
    """Mirror of ``adam_args`` in csrc/adam_update_cpu.c."""

    _fields_ = [
        *[(name, ctypes.c_float) for name in ("lerp_w", "beta2", "one_minus_b2", "decay",
                                               "step_size", "sqrt_bc2", "sqrt_bc2_live",
                                               "eps", "srste")],
        *[(name, ctypes.c_int32) for name in ("n", "m", "kind", "masked", "given",
                                               "update_v", "want_z", "guard")],
    ]  # fmt: skip


@functools.cache
def _function():
    fn = load_library("adam_update_cpu").step_adam_update
    ptr = ctypes.c_void_p
    fn.argtypes = [ctypes.POINTER(_Args), ptr, ptr, ptr, ptr, ptr, ptr, ptr,
                   ctypes.c_int64, ctypes.c_int64, ptr]  # fmt: skip
    fn.restype = None
    return fn


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step-adam")


# A child made by fork() inherits the pools but none of their threads: its work would wait
# forever. It starts pools of its own instead.
os.register_at_fork(after_in_child=_pool.cache_clear)


@functools.lru_cache(maxsize=64)
def _chunk_table(numels: tuple[int, ...], group: int) -> torch.Tensor:
    """int64 ``[C, 3]``: (tensor, begin, end) chunks of whole groups, tensor by tensor."""
    size = max(group, CHUNK // group * group)
    rows = [(t, begin, min(begin + size, numel))
            for t, numel in enumerate(numels) for begin in range(0, numel, size)]  # fmt: skip
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)


def _addresses(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)


def _run(args: _Args, tables: list[torch.Tensor], chunks: torch.Tensor, partials: torch.Tensor,
         elements: int) -> None:  # fmt: skip
    fn = _function()
    ptrs = [t.data_ptr() for t in (*tables, chunks)]
    count = chunks.shape[0]
    threads = min(torch.get_num_threads(), count) if elements >= MIN_PARALLEL else 1
    bounds = [count * i // threads for i in range(threads + 1)]
    calls = [(ctypes.byref(args), *ptrs, bounds[i], bounds[i + 1], partials.data_ptr())
             for i in range(threads)]  # fmt: skip
    pending = [_pool(threads - 1).submit(fn, *call) for call in calls[1:]] if threads > 1 else []
    fn(*calls[0])
    for future in pending:
        future.result()


def adam_update_cpu(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    v_step: int,
    update_v: bool,
    srste_decay: float,
    n: int,
    m: int,
    want_z: bool,
    masks: list[torch.Tensor] | None = None,
    v_floors: list[float] | None = None,
) -> torch.Tensor:
    """Same arguments and result as ``adam_update_ref``; CPU tensors of any layout
    (non-contiguous params and states are updated through contiguous copies)."""
    masked, given, want_z = fused_flags(update_v, srste_decay, n, want_z, masks)
    scalars = fused_scalars(lr, beta1, beta2, eps, weight_decay, step, v_step, srste_decay)
    group = m if masked and not given else 1
    copies = []  # (original, contiguous working copy) to write back afterwards

    def work(t: torch.Tensor) -> torch.Tensor:
        if t.is_contiguous():
            return t
        copies.append((t, t.contiguous()))
        return copies[-1][1]

    sums = torch.zeros(2, dtype=torch.float64)
    for dtype, idx in dtype_groups(params).items():
        floors = guard_floors(v_floors, idx, torch.device("cpu"))
        args = _Args(**scalars, n=n, m=group, kind=DTYPE_CODES[dtype], masked=masked, given=given,
                     update_v=bool(update_v), want_z=want_z, guard=floors is not None)  # fmt: skip
        ps = [work(params[i]) for i in idx]
        gs = [grads[i].contiguous() for i in idx]
        ks = [masks[i].contiguous() for i in idx] if given else []  # read only if given
        ms = [work(exp_avgs[i]) for i in idx]
        vs = [work(exp_avg_sqs[i]) for i in idx]
        tables = [_addresses(ts) for ts in (ps, gs, ms, vs, ks)]
        tables.append(floors if floors is not None else torch.zeros(0))
        chunks = _chunk_table(tuple(params[i].numel() for i in idx), group)
        partials = torch.zeros(chunks.shape[0], 2, dtype=torch.float32)
        _run(args, tables, chunks, partials, sum(p.numel() for p in ps))
        if want_z:
            sums += partials.double().sum(0)
    for original, copy in copies:
        original.copy_(copy)
    return sums.float()


register("adam_update", "cpu")(adam_update_cpu)
