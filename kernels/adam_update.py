"""Fused multi-tensor AdamW / STEP step: one kernel launch per param dtype.

Reference: ``step.ops.adam_update.adam_update_ref`` (same arguments, same semantics).

Every tensor is cut into chunks of ``BG`` groups of ``M`` elements (flat index
``group * M + lane``); a chunk table ``[programs, 2]`` (tensor index, first group) sends
each program to one chunk of one tensor, and pointer tables (int64 ``data_ptr()``s) let
one launch reach every tensor. With the SR-STE term, ``M`` is the N:M group size and each
program computes its groups' masks in registers from the bits of ``p`` (bit-identical to
``step.nm_mask``), unless masks alone are given (``n`` 0: a bool table read like the
other tensors); otherwise ``M`` is a fixed small width and groups mean nothing.

Params/grads are loaded as raw bits and widened to float32 exactly; all arithmetic is
float32; bf16 is rounded back to nearest-even with integer ops because the Triton
interpreter truncates on ``.to(tl.bfloat16)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .adam_fused import dtype_groups, fused_flags, fused_scalars, guard_floors
from .float_bits import DTYPE_CODES, magnitude_constants
from .float_jit import narrow, widen
from .nm_select import group_block, keep_top_n, magnitude_key

_BITS = {torch.float32: tl.int32, torch.float16: tl.int16, torch.bfloat16: tl.int16}
_PLAIN_M, _PLAIN_BG = 4, 512  # layout without a mask: 2048 elements per program


@triton.jit
def _adam_kernel(
    p_tab, g_tab, m_tab, v_tab, k_tab, numels, chunks, partials,
    floors, lerp_w, beta2, one_minus_b2, decay, step_size, sqrt_bc2, sqrt_bc2_live, eps, srste,
    N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BG: tl.constexpr,
    BITS: tl.constexpr, KIND: tl.constexpr, ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr,
    MASKED: tl.constexpr, GIVEN: tl.constexpr, UPDATE_V: tl.constexpr, WANT_Z: tl.constexpr,
    GUARD: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    t = tl.load(chunks + 2 * pid)
    first = tl.load(chunks + 2 * pid + 1)
    numel = tl.load(numels + t)
    p_ptr = tl.load(p_tab + t).to(tl.pointer_type(BITS))
    g_ptr = tl.load(g_tab + t).to(tl.pointer_type(BITS))
    m_ptr = tl.load(m_tab + t).to(tl.pointer_type(tl.float32))
    v_ptr = tl.load(v_tab + t).to(tl.pointer_type(tl.float32))

    groups = first + tl.arange(0, BG)
    lane = tl.arange(0, MP)
    offs = groups[:, None] * M + lane[None, :]
    valid = (lane[None, :] < M) & (offs < numel)
    bits = tl.load(p_ptr + offs, mask=valid, other=0)
    p = widen(bits, KIND)
    g = widen(tl.load(g_ptr + offs, mask=valid, other=0), KIND)
    m = tl.load(m_ptr + offs, mask=valid, other=0.0)
    v = tl.load(v_ptr + offs, mask=valid, other=0.0)

    if MASKED:
        if GIVEN:
            k_ptr = tl.load(k_tab + t).to(tl.pointer_type(tl.int8))
            kept = tl.load(k_ptr + offs, mask=valid, other=1) != 0
        else:
            kept = keep_top_n(magnitude_key(bits, valid, ABS_MASK, INF_BITS), N, MP)
        g = g + srste * tl.where(kept, 0.0, p)  # where, not (1-mask)*p: kept inf gives 0
    # torch.lerp's two formulas, so exp_avg follows the reference's rounding
    d = g - m
    m = tl.where(lerp_w < 0.5, m + lerp_w * d, g - d * (1.0 - lerp_w))
    tl.store(m_ptr + offs, m, mask=valid)
    if UPDATE_V:
        # v_new - v_old == (1-b2)*(g^2 - v_old); this form avoids the cancellation
        dv = tl.abs(g * g - v) * one_minus_b2
        v = v * beta2 + one_minus_b2 * g * g
        tl.store(v_ptr + offs, v, mask=valid)
        if WANT_Z:
            tl.store(partials + 2 * pid, tl.sum(tl.where(valid, dv, 0.0)))
            tl.store(partials + 2 * pid + 1, tl.sum(tl.where(valid, v, 0.0)))
    p = p * decay
    if GUARD:  # a frozen v below its tensor's floor keeps estimating (STEP's guard)
        live = v < tl.load(floors + t)
        v = tl.where(live, v * beta2 + one_minus_b2 * g * g, v)
        tl.store(v_ptr + offs, v, mask=valid & live)
        denom = tl.div_rn(tl.sqrt_rn(v), tl.where(live, sqrt_bc2_live, sqrt_bc2)) + eps
    else:
        denom = tl.div_rn(tl.sqrt_rn(v), sqrt_bc2) + eps
    p = p + tl.div_rn(step_size * m, denom)
    tl.store(p_ptr + offs, narrow(p, KIND), mask=valid)


class _Tables:
    """Device tables for one list of (param, exp_avg, exp_avg_sq) at fixed addresses."""

    def __init__(self, params, exp_avgs, exp_avg_sqs, m: int, bg: int) -> None:
        device = params[0].device
        ptrs = [[t.data_ptr() for t in ts] for ts in (params, exp_avgs, exp_avg_sqs)]
        self.p, self.m, self.v = torch.tensor(ptrs, dtype=torch.int64, device=device).unbind(0)
        sizes = torch.tensor([p.numel() for p in params], dtype=torch.int64)
        self.numels = sizes.to(device)
        n_chunks = (sizes + m * bg - 1) // (m * bg)
        tensor = torch.repeat_interleave(torch.arange(len(params)), n_chunks)
        starts = torch.cumsum(n_chunks, 0) - n_chunks
        first = (torch.arange(len(tensor)) - starts[tensor]) * bg
        self.chunks = torch.stack([tensor, first], 1).to(device)
        self.programs = len(tensor)


_CACHE: dict[tuple, _Tables] = {}
_CACHE_SIZE = 64


def _tables(params, exp_avgs, exp_avg_sqs, m: int, bg: int) -> _Tables:
    # The tables are a pure function of the key, so a reused address is harmless.
    key = (params[0].device, params[0].dtype, m, bg, *(
        (p.data_ptr(), a.data_ptr(), s.data_ptr(), p.numel())
        for p, a, s in zip(params, exp_avgs, exp_avg_sqs, strict=True)
    ))  # fmt: skip
    tables = _CACHE.get(key)
    if tables is None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        tables = _CACHE[key] = _Tables(params, exp_avgs, exp_avg_sqs, m, bg)
    return tables


def adam_update_triton(
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
    """One AdamW/STEP step over many tensors, in place; returns float32 ``[2]``:
    ``(sum |v_new - v_old|, sum v_new)`` over all elements (zeros unless ``want_z`` and
    ``update_v``).

    ``params``/``grads``: any shapes, float32/float16/bfloat16 (a grad has its param's
    dtype); ``exp_avgs``/``exp_avg_sqs``: float32 of the params' shapes. With the SR-STE
    term (``srste_decay`` and ``n``) the groups of ``m`` run along the last dim, unless
    ``masks`` alone (bool, the params' shapes, ``n`` 0) give the kept entries.
    ``v_floors`` (frozen v only): the guard's floor of each tensor. One
    launch per param dtype; non-contiguous params/states are updated through copies.
    """
    masked, given, want_z = fused_flags(update_v, srste_decay, n, want_z, masks)
    scalars = fused_scalars(lr, beta1, beta2, eps, weight_decay, step, v_step, srste_decay)
    if masked and not given:
        mp = triton.next_power_of_2(m)
        layout = dict(N=n, M=m, MP=mp, BG=group_block(mp))
    else:
        layout = dict(N=0, M=_PLAIN_M, MP=_PLAIN_M, BG=_PLAIN_BG)

    by_dtype = dtype_groups(params)
    copies = []  # (original, contiguous working copy) to write back afterwards
    launches = []
    for dtype, idx in by_dtype.items():
        lists = []
        for tensors in (params, exp_avgs, exp_avg_sqs):
            work = []
            for i in idx:
                t = tensors[i]
                if not t.is_contiguous():
                    copies.append((t, t.contiguous()))
                    t = copies[-1][1]
                work.append(t)
            lists.append(work)
        tables = _tables(*lists, layout["M"], layout["BG"])
        g_work = [grads[i].contiguous() for i in idx]
        k_work = [masks[i].contiguous() for i in idx] if given else g_work
        g_tab = torch.tensor([[t.data_ptr() for t in g_work], [t.data_ptr() for t in k_work]],
                             dtype=torch.int64).to(params[0].device, non_blocking=True)  # fmt: skip
        floors = guard_floors(v_floors, idx, params[0].device)
        launches.append((dtype, tables, g_tab, floors, (g_work, k_work)))

    total = sum(tables.programs for _, tables, _, _, _ in launches)
    # one (sum |dv|, sum v) row per program, reduced here: deterministic, no atomics
    partials = torch.empty(total if want_z else 1, 2, dtype=torch.float32, device=params[0].device)
    offset = 0
    for dtype, tables, g_tab, floors, _ in launches:
        abs_mask, inf_bits = magnitude_constants(dtype)
        _adam_kernel[(tables.programs,)](
            tables.p, g_tab[0], tables.m, tables.v, g_tab[1], tables.numels, tables.chunks,
            partials[offset:] if want_z else partials, tables.numels if floors is None else floors,
            **scalars, **layout, BITS=_BITS[dtype], KIND=DTYPE_CODES[dtype],
            ABS_MASK=abs_mask, INF_BITS=inf_bits, MASKED=masked, GIVEN=given,
            UPDATE_V=bool(update_v), WANT_Z=want_z, GUARD=floors is not None,
        )  # fmt: skip
        offset += tables.programs
    for original, work in copies:
        original.copy_(work)
    if want_z:
        return partials.sum(0)
    return torch.zeros(2, dtype=torch.float32, device=params[0].device)
