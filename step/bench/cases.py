"""The cases of ``step-sparsity bench``: each op checked once, then timed against its
baseline in the same run (round-robin, median).

Every case returns records (plain dicts): ``case``, ``ours``, ``shape``, ``dtype``,
``ours_ms`` (median, plus min/max), ``baseline``, ``baseline_ms``, ``ratio`` (baseline ms /
ours ms: > 1 means ours took less time) and, where a bytes model applies, ``bytes`` and
``gbps`` (minimal bytes / median time, 1 GB = 1e9 B).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import freeze, from_sparse24, nm_mask, sparsify, to_sparse24
from ..ops.dispatch import choose
from ..ops.nm_mask import nm_mask_ref
from ..optim import STEP, AutoSwitch
from .timing import l2_flush_buffer, time_interleaved

LR, WEIGHT_DECAY = 1e-3, 0.1


@dataclass
class Timer:
    """Round-robin timing: warm-up calls of every function, then rep 1 of each, rep 2 of
    each, ...: drift of the machine during the run hits ours and the baseline alike."""

    device: torch.device
    reps: int
    warmup: int

    def __post_init__(self) -> None:
        self.flush = l2_flush_buffer(self.device)

    def __call__(self, fns: list[Callable[[], object]]) -> list[list[float]]:
        """Milliseconds of ``reps`` calls of each of ``fns``."""
        return time_interleaved(fns, self.reps, self.warmup, self.flush)


def pair(case, ours, shape, dtype, ours_t, baseline, base_t, nbytes=None, base_bytes=None):
    """One record: ``ours`` against ``baseline`` (times in ms, bytes moved by each)."""
    ours_ms, base_ms = statistics.median(ours_t), statistics.median(base_t)
    rec = {
        "case": case, "ours": ours, "shape": shape, "dtype": str(dtype).removeprefix("torch."),
        "ours_ms": ours_ms, "ours_min_ms": min(ours_t), "ours_max_ms": max(ours_t),
        "baseline": baseline, "baseline_ms": base_ms, "baseline_min_ms": min(base_t),
        "baseline_max_ms": max(base_t), "ratio": base_ms / ours_ms,
        "reps": len(ours_t), "bytes": nbytes, "gbps": None, "baseline_gbps": None,
    }  # fmt: skip
    if nbytes is not None:
        rec.update(gbps=nbytes / ours_ms / 1e6, baseline_gbps=base_bytes / base_ms / 1e6)
    return rec


def _fail(what: str) -> None:
    raise RuntimeError(f"step-sparsity bench: check failed before timing: {what}")


# ---------------------------------------------------------------- mask and compress


def kernels(timer: Timer, rows: int, k: int, which: list[str]) -> list[dict]:
    """``nm_mask(w, 2, 4)`` (``mask``) and ``to_sparse24(w)`` (``compress``) of an fp16
    ``[rows, k]`` weight against ``torch.empty_like(w).copy_(w)``, timed together."""
    gen = torch.Generator(device=timer.device).manual_seed(0)
    w = torch.randn(rows, k, generator=gen, device=timer.device).half()
    ref = nm_mask_ref(w, 2, 4)
    ops = {"mask": ("nm_mask(w, 2, 4)", lambda: nm_mask(w, 2, 4), 3 * w.numel()),
           "compress": ("to_sparse24(w)", lambda: to_sparse24(w), w.numel() * 25 // 8)}  # fmt: skip
    if "mask" in which:
        got = nm_mask(w, 2, 4)
        if got.dtype != torch.bool or not bool((got.view(-1, 4).sum(-1) == 2).all()):
            _fail("nm_mask: not exactly 2 True in every group of 4")
        if not torch.equal(got, ref):
            _fail("nm_mask differs from the reference mask")
    if "compress" in which and not torch.equal(from_sparse24(*to_sparse24(w)), w.where(ref, 0)):
        _fail("from_sparse24(to_sparse24(w)) != where(mask, w, 0)")
    names = [c for c in ops if c in which]
    copy_t, *times = timer([lambda: torch.empty_like(w).copy_(w)] + [ops[c][1] for c in names])
    copy_bytes = 4 * w.numel()  # bytes models: benchmarks/README.md
    return [pair(c, ops[c][0], f"{rows}x{k}", w.dtype, t, "copy", copy_t, ops[c][2], copy_bytes)
            for c, t in zip(names, times, strict=True)]  # fmt: skip


# ---------------------------------------------------------------- frozen linear layer


def linear(timer: Timer, n: int, k: int, tokens: tuple[int, ...], dtype) -> list[dict]:
    """A frozen 2:4 linear layer in eval mode (``step.sparsify`` + ``step.freeze``)
    against the dense ``nn.Linear`` it came from, per token count."""
    torch.manual_seed(0)
    dense = torch.nn.Linear(k, n, device=timer.device, dtype=dtype).eval()
    sparse = torch.nn.Sequential(torch.nn.Linear(k, n, device=timer.device, dtype=dtype))
    sparse[0].load_state_dict(dense.state_dict())
    freeze(sparsify(sparse, n=2, m=4, include=["0"])).eval()
    layer, cw = sparse[0], sparse[0].compressed_weight()
    if not torch.equal(layer.weight, dense.weight.where(nm_mask_ref(dense.weight, 2, 4), 0)):
        _fail("the frozen weight is not the dense weight pruned to its 2:4 magnitude mask")
    records = []
    with torch.inference_mode():
        for t in tokens:
            x = torch.randn(t, k, device=timer.device, dtype=dtype)
            want = F.linear(x.double(), layer.weight.double(), layer.bias.double())
            same_dtype = F.linear(x, layer.weight, layer.bias).double()
            err, tol = (sparse(x).double() - want).abs().max(), (same_dtype - want).abs().max()
            if not err <= 2 * tol + 1e-6:  # the tolerance rule of docs/testing.md
                _fail(f"frozen layer, {t} tokens: max error {err:.3g}, F.linear's {tol:.3g}")
            runs = "pruned dense weight"
            if cw.runs_sparse(x, layer.bias):
                runs = choose(cw.op, x.device, x, cw.values, cw.meta, layer.bias)[0]
            ours_t, base_t = timer([lambda x=x: sparse(x), lambda x=x: dense(x)])
            shape = f"{t} tok x {k} -> {n}"
            records.append(pair("linear", f"frozen 2:4 ({runs})", shape, dtype, ours_t,
                                "nn.Linear", base_t))  # fmt: skip
    return records


# ---------------------------------------------------------------- optimizer step


def llm_weights(d: int, ff: int, device: torch.device) -> tuple[list, list]:
    """Weights and gradients of one transformer block: q, k, v, o ``[d, d]``, up
    ``[ff, d]``, down ``[d, ff]``; weights N(0, 0.02^2), gradients N(0, 0.01^2), seed 0."""
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = [(d, d)] * 4 + [(ff, d), (d, ff)]
    draw = lambda s, std: std * torch.randn(s, generator=gen, device=device)  # noqa: E731
    return [draw(s, 0.02) for s in shapes], [draw(s, 0.01) for s in shapes]


def _params(weights, grads) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params


def optimizer(timer: Timer, d: int, ff: int) -> list[dict]:
    """One ``STEP`` step in each phase against one ``AdamW`` step (fused on CUDA, foreach
    on CPU), each optimizer on its own copy of the same float32 weights and gradients."""
    weights, grads = llm_weights(d, ff, timer.device)
    impl = "fused" if timer.device.type == "cuda" else "foreach"
    adamw = torch.optim.AdamW(_params(weights, grads), lr=LR, weight_decay=WEIGHT_DECAY,
                              **{impl: True})  # fmt: skip

    def make_step(autoswitch) -> STEP:
        group = {"params": _params(weights, grads), "nm": (2, 4)}
        return STEP([group], lr=LR, weight_decay=WEIGHT_DECAY, autoswitch=autoswitch)

    pre = make_step(AutoSwitch(t_min=10**12))  # samples every step, never switches
    mask = make_step(1)  # switches at the end of its first step
    adamw.step()
    pre.step()
    for i, (a, b) in enumerate(zip(pre.param_groups[0]["params"], adamw.param_groups[0]["params"],
                                   strict=True)):  # fmt: skip
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-7):
            _fail(f"STEP's precondition step differs from AdamW's (weight {i})")
    mask.step()
    sparse = mask.param_groups[0]["params"]
    v_before = [mask.state[p]["exp_avg_sq"].clone() for p in sparse]
    frozen = [mask.frozen_v(p) for p in sparse]  # the rest still estimates v (the guard)
    before = [p.detach().clone() for p in sparse]
    mask.step()
    if mask.phase != "mask_learning":
        _fail(f"STEP(autoswitch=1) is in phase {mask.phase!r} after 2 steps")
    for i, p in enumerate(sparse):
        v = mask.state[p]["exp_avg_sq"]
        if not torch.equal(v[frozen[i]], v_before[i][frozen[i]]) or torch.equal(p, before[i]):
            _fail(f"mask-learning step wrote a frozen v or left weight {i} unchanged")
    base_t, pre_t, mask_t = timer([adamw.step, pre.step, mask.step])
    if pre.phase != "precondition":
        raise RuntimeError("the precondition optimizer switched during timing")
    n = sum(w.numel() for w in weights)
    what, base = f"{n / 1e6:.3g}M params, {len(weights)} weights", f"AdamW({impl})"
    return [pair("optimizer", "STEP precondition", what, torch.float32, pre_t, base, base_t,
                 28 * n, 28 * n),
            pair("optimizer", "STEP mask-learning", what, torch.float32, mask_t, base, base_t,
                 24 * n, 28 * n)]  # fmt: skip
