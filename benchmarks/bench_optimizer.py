"""Benchmark one step of ``step.optim.STEP`` against ``torch.optim.AdamW`` in the same run.

The weights are an LLM-shaped set (see :func:`weight_shapes`): ``--blocks`` transformer
blocks of width ``--width``, each with q, k, v, o ``[d, d]`` and MLP ``[4d, d]``,
``[d, 4d]`` weights (sparse, N:M 2:4 along the last dim) and two LayerNorms (weight and
bias, dense), plus a final LayerNorm. Default on cuda: 8 blocks of d=1024, 100,698,112
parameters; on cpu: 5 blocks of d=256, 3,937,792 parameters.

Timed, in one run, for every ``--dtypes`` entry:

* ``copy``               ``dst.copy_(src)`` of buffers sized so that the copy moves the
  same bytes as STEP's precondition step: the bandwidth reference
* ``adamw``              ``torch.optim.AdamW(fused=True)`` on cuda, ``foreach=True`` on cpu
  (``--adamw``), states in the parameter dtype (PyTorch's only choice)
* ``step_precondition``  ``STEP.step()`` before the switch: v written, the AutoSwitch sample
  (sum |dv|, sum v) reduced and read on the host every step (a device->host sync)
* ``step_mask_learning`` ``STEP.step()`` after ``switch_now()``: v frozen (not written),
  the 2:4 mask and the SR-STE term computed from the weights

Every optimizer updates its own copy of the same weights; ``.grad`` is set once to fixed
random tensors (not timed). The minimal bytes per step (:func:`step_bytes`) over the median
time give GB/s; the report gives the ratio AdamW time / STEP time (> 1: STEP is faster)
and the fraction of the copy's GB/s. Timing follows ``bench_sparsify.py``: all cases
round-robin after ``--warmup`` calls each; CUDA events with L2 flushed before each call on
cuda; ``time.perf_counter`` on one CPU thread on cpu.

Before timing, the first steps are checked: STEP's precondition step equals AdamW's; the
mask-learning step leaves v of the sparse weights unchanged and changes p and m; a STEP
on a backend other than the reference gives the reference's result. After timing: the
precondition optimizer never switched and the mask-learning one never wrote v.

Usage::

    python benchmarks/bench_optimizer.py                       # GPU if present, else CPU
    python benchmarks/bench_optimizer.py --device cuda --dtypes float32,bfloat16
    python benchmarks/bench_optimizer.py --device cpu --blocks 2 --width 512
    python benchmarks/bench_optimizer.py --quick --jsonl results.jsonl  # one dtype per line

``--quick`` (what ``scripts/gpu_session`` runs): one Llama-2-7B-wide block, d=4096
(201,351,168 parameters), 20 reps after 3 warm-up calls; options given explicitly win.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import _common as common
import torch

from step.ops.dispatch import BACKENDS, use_backend
from step.optim import STEP, AutoSwitch

DEFAULTS = {
    "cuda": {"width": 1024, "blocks": 8},
    "cpu": {"width": 256, "blocks": 5},
    "quick": {"width": 4096, "blocks": 1},
}
"""Default ``--width`` and ``--blocks`` per device type and for ``--quick`` (``--reps``,
``--warmup``: the runners' common defaults)."""
DTYPES = ("float32", "bfloat16", "float16")
ADAMW_IMPLS = ("fused", "foreach")
NM = (2, 4)
LR, WEIGHT_DECAY, SRSTE_DECAY = 1e-3, 0.1, 2e-4
NEVER = 10**12
"""AutoSwitch ``t_min`` that keeps the precondition optimizer from ever switching (it
still computes and observes the sample every step)."""
TARGETS = {
    "cuda": {"step_precondition": 1.0, "step_mask_learning": 1.2, "copy_fraction": 0.9},
    "cpu": {"step_precondition": 0.91, "step_mask_learning": 0.91},
}
"""Targets: ratio AdamW time / STEP time per phase (float32), fraction of copy GB/s."""


# ---------------------------------------------------------------- weights and bytes


def weight_shapes(width: int, blocks: int) -> list[tuple[str, tuple[int, ...], bool]]:
    """``(name, shape, sparse)`` of every weight: per block ``ln1.{weight,bias}`` ``[d]``,
    ``q, k, v, o`` ``[d, d]``, ``ln2.{weight,bias}`` ``[d]``, ``fc1`` ``[4d, d]``, ``fc2``
    ``[d, 4d]``; then ``ln_f.{weight,bias}``. Matrices are sparse (2:4), vectors dense.
    ``blocks * (12 d^2 + 4 d) + 2 d`` parameters."""
    d = width
    shapes: list[tuple[str, tuple[int, ...], bool]] = []
    for b in range(blocks):
        shapes += [(f"{b}.ln1.weight", (d,), False), (f"{b}.ln1.bias", (d,), False)]
        shapes += [(f"{b}.attn.{x}", (d, d), True) for x in "qkvo"]
        shapes += [(f"{b}.ln2.weight", (d,), False), (f"{b}.ln2.bias", (d,), False)]
        shapes += [(f"{b}.mlp.fc1", (4 * d, d), True), (f"{b}.mlp.fc2", (d, 4 * d), True)]
    shapes += [("ln_f.weight", (d,), False), ("ln_f.bias", (d,), False)]
    return shapes


def param_counts(shapes: list[tuple[str, tuple[int, ...], bool]]) -> tuple[int, int]:
    """``(sparse, dense)`` parameter counts."""
    sparse = dense = 0
    for _, shape, is_sparse in shapes:
        n = 1
        for s in shape:
            n *= s
        sparse, dense = (sparse + n, dense) if is_sparse else (sparse, dense + n)
    return sparse, dense


def step_bytes(case: str, n_sparse: int, n_dense: int, elem_size: int) -> int:
    """Minimal bytes one step of ``case`` moves; params and grads of ``elem_size`` bytes.

    * ``adamw``: reads p, g, m, v, writes p, m, v; PyTorch keeps m, v in the param
      dtype: ``7 e`` per parameter (28 B for float32, 14 B for bfloat16)
    * ``step_precondition``: the same with float32 m, v: ``3 e + 16`` (28 B / 22 B)
    * ``step_mask_learning``: sparse weights read p, g, m, v and write p, m:
      ``3 e + 12`` (24 B / 18 B); dense ones are plain AdamW, ``3 e + 16``
    * ``copy``: see :func:`copy_numel` (read + write of a float32 buffer)
    """
    e, n = elem_size, n_sparse + n_dense
    if case == "adamw":
        return 7 * e * n
    if case == "step_precondition":
        return (3 * e + 16) * n
    if case == "step_mask_learning":
        return (3 * e + 12) * n_sparse + (3 * e + 16) * n_dense
    raise ValueError(f"unknown case {case!r}")


def copy_numel(n_sparse: int, n_dense: int, elem_size: int) -> int:
    """float32 elements of the copy buffer: the copy (read + write, 8 B per element)
    moves the bytes of STEP's precondition step, rounded up to a multiple of 8 B."""
    return -(-step_bytes("step_precondition", n_sparse, n_dense, elem_size) // 8)


# ---------------------------------------------------------------- optimizers


def make_weights(
    shapes: list[tuple[str, tuple[int, ...], bool]], dtype: torch.dtype, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Fixed random ``(weights, grads)``, seed 0: matrices ``N(0, 0.02^2)``, LayerNorm
    weights 1 and biases 0, gradients ``N(0, 0.01^2)``."""
    gen = torch.Generator(device=device).manual_seed(0)
    weights, grads = [], []
    for name, shape, is_sparse in shapes:
        if is_sparse:
            w = 0.02 * torch.randn(shape, generator=gen, device=device)
        elif name.endswith("weight"):
            w = torch.ones(shape, device=device)
        else:
            w = torch.zeros(shape, device=device)
        weights.append(w.to(dtype))
        grads.append((0.01 * torch.randn(shape, generator=gen, device=device)).to(dtype))
    return weights, grads


def make_params(
    weights: list[torch.Tensor], grads: list[torch.Tensor], sparse_flags: list[bool]
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Fresh ``(sparse, dense)`` parameters with copies of ``weights``, ``.grad`` set to
    copies of ``grads``."""
    sparse, dense = [], []
    for w, g, is_sparse in zip(weights, grads, sparse_flags, strict=True):
        p = torch.nn.Parameter(w.clone())
        p.grad = g.clone()
        (sparse if is_sparse else dense).append(p)
    return sparse, dense


def make_adamw(weights, grads, sparse_flags, impl: str) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` (``impl``: ``fused`` or ``foreach``), LayerNorms without decay."""
    sparse, dense = make_params(weights, grads, sparse_flags)
    groups = [{"params": sparse}, {"params": dense, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, weight_decay=WEIGHT_DECAY, **{impl: True})


def make_step(weights, grads, sparse_flags) -> STEP:
    """``STEP`` with the matrices as 2:4 sparse, LayerNorms dense without decay, and an
    AutoSwitch that never fires (:data:`NEVER`)."""
    sparse, dense = make_params(weights, grads, sparse_flags)
    groups = [{"params": sparse, "nm": NM}, {"params": dense, "weight_decay": 0.0}]
    return STEP(
        groups,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        srste_decay=SRSTE_DECAY,
        autoswitch=AutoSwitch(t_min=NEVER),
    )


def params_of(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def stepper(opt: torch.optim.Optimizer, backend: str | None) -> Callable[[], object]:
    """A no-argument function taking one step of ``opt`` (with ``backend`` forced)."""
    if backend is None:
        return opt.step

    def call() -> object:
        with common.backend_context(backend):
            return opt.step()

    return call


def skip_reason(backend: str, device: torch.device) -> str | None:
    """Why STEP cannot (or should not) be timed on ``backend``; None if it can."""
    return common.backend_skip_reason(backend, "adam_update", device)


def resolved_backend(backend: str, opt: STEP) -> str:
    """The backend that actually runs ``opt``'s update when ``backend`` is requested."""
    params = params_of(opt)
    return common.resolve_backend(backend, "adam_update", params[0].device, params)


# ---------------------------------------------------------------- checks


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """Float32: a few ulp. Low precision: one ulp of the parameter (both compute in
    float32 and round once; AdamW's bf16 states perturb its update by ~1% of lr)."""
    if dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-7}
    return {"rtol": 2**-7 if dtype == torch.bfloat16 else 2**-10, "atol": 0.05 * LR}


def assert_params_close(actual: STEP, expected: torch.optim.Optimizer, what: str) -> None:
    dtype = params_of(actual)[0].dtype
    for i, (a, e) in enumerate(zip(params_of(actual), params_of(expected), strict=True)):
        try:
            torch.testing.assert_close(a.detach(), e.detach(), **tolerances(dtype))
        except AssertionError as err:
            raise RuntimeError(f"{what}: parameter {i} differs\n{err}") from None


def check_mask_step(opt: STEP, backend: str) -> list[torch.Tensor]:
    """Take ``opt``'s first mask-learning step (it has had one precondition step and the
    switch) and check it: sparse weights' frozen v unchanged (elements below the guard's
    floor still estimate theirs), their p and m changed, dense weights' v still updated.
    Returns the masks of the sparse weights' frozen v and copies of their v."""
    sparse = opt.param_groups[0]["params"]
    v_before = [opt.state[p]["exp_avg_sq"].clone() for p in sparse]
    frozen = [opt.frozen_v(p) for p in sparse]  # the rest still estimates v (the guard)
    m_before = [opt.state[p]["exp_avg"].clone() for p in sparse]
    p_before = [p.detach().clone() for p in sparse]
    dense_v = [opt.state[p]["exp_avg_sq"].clone() for p in opt.param_groups[1]["params"]]
    with common.backend_context(backend):
        opt.step()
    if opt.phase != "mask_learning":
        raise RuntimeError(f"STEP phase is {opt.phase!r} after switch_now()")
    for i, p in enumerate(sparse):
        if not torch.equal(opt.state[p]["exp_avg_sq"][frozen[i]], v_before[i][frozen[i]]):
            raise RuntimeError(f"mask-learning step wrote a frozen v of sparse weight {i}")
        if torch.equal(opt.state[p]["exp_avg"], m_before[i]) or torch.equal(p, p_before[i]):
            raise RuntimeError(f"mask-learning step left p or m of sparse weight {i} unchanged")
    for i, p in enumerate(opt.param_groups[1]["params"]):
        if torch.equal(opt.state[p]["exp_avg_sq"], dense_v[i]):
            raise RuntimeError(f"mask-learning step did not update v of dense weight {i}")
    return [(opt.frozen_v(p), opt.state[p]["exp_avg_sq"].clone()) for p in sparse]


def prepare(
    weights, grads, flags, backend: str, adamw: torch.optim.Optimizer
) -> tuple[STEP, STEP, list[torch.Tensor]]:
    """The precondition and mask-learning optimizers for ``backend``, each past its first
    (checked) step; ``adamw`` has taken exactly one step. Returns them and the copies of
    the mask-learning optimizer's frozen v."""
    pre = make_step(weights, grads, flags)
    with common.backend_context(backend):
        pre.step()
    assert_params_close(pre, adamw, f"STEP ({backend}) precondition step vs AdamW")
    sample = pre.autoswitch.history[-1]
    if not (sample.z > 0 and sample.v > 0 and sample.z < float("inf")):
        raise RuntimeError(f"bad AutoSwitch sample after one step: z={sample.z}, v={sample.v}")
    mask = make_step(weights, grads, flags)
    with common.backend_context(backend):
        mask.step()
    mask.switch_now()
    frozen_v = check_mask_step(mask, backend)
    if resolved_backend(backend, mask) != "reference":
        twin = make_step(weights, grads, flags)
        with use_backend("reference"):
            twin.step()
            twin.switch_now()
            twin.step()
        assert_params_close(mask, twin, f"STEP ({backend}) vs reference, 2 steps")
        ref_z = twin.autoswitch.history[0].z
        if abs(sample.z - ref_z) > 1e-3 * abs(ref_z):
            raise RuntimeError(f"AutoSwitch sample z: {backend} {sample.z}, reference {ref_z}")
        del twin
    return pre, mask, frozen_v


def check_after_timing(
    pre: STEP, mask: STEP, frozen_v: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """The timed steps did what they claim: no switch, an AutoSwitch sample every step,
    the frozen v of the sparse weights never written after the switch."""
    if pre.phase != "precondition" or len(pre.autoswitch.history) != pre.t:
        raise RuntimeError("the precondition optimizer switched or skipped samples")
    for i, p in enumerate(mask.param_groups[0]["params"]):
        frozen, v_before = frozen_v[i]
        if not torch.equal(mask.state[p]["exp_avg_sq"][frozen], v_before[frozen]):
            raise RuntimeError(f"a timed mask-learning step wrote a frozen v of weight {i}")


# ---------------------------------------------------------------- the run


def record(
    case: str,
    impl: str,
    resolved: str,
    nbytes: int,
    n_params: int,
    dtype_name: str,
    times: list[float],
) -> dict[str, object]:
    return {
        "case": case,
        "dtype": dtype_name,
        "backend": impl,
        "resolved_backend": resolved,
        "params": n_params,
        "bytes": nbytes,
        "bytes_per_param": nbytes / n_params,
        **common.timing_stats(times, nbytes),
        "syncs_to_host": case == "step_precondition",
    }


def run_dtype(
    args: argparse.Namespace, device: torch.device, dtype_name: str, flush: torch.Tensor | None
) -> list[dict[str, object]]:
    """Measurements for one dtype: copy, AdamW variant(s), STEP's two phases per backend."""
    dtype = getattr(torch, dtype_name)
    e = torch.tensor([], dtype=dtype).element_size()
    n_sparse, n_dense = args.counts
    n = n_sparse + n_dense
    flags = [s for _, _, s in args.shapes]
    weights, grads = make_weights(args.shapes, dtype, device)

    src = torch.randn(copy_numel(n_sparse, n_dense, e), device=device)
    dst = torch.empty_like(src)
    cases: list[tuple[str, str, str, int]] = [("copy", "torch", "torch", 8 * src.numel())]
    fns: list[Callable[[], object]] = [lambda: dst.copy_(src)]
    adamws = [make_adamw(weights, grads, flags, impl) for impl in args.adamw]
    for impl, opt in zip(args.adamw, adamws, strict=True):
        opt.step()  # the first step, compared with STEP's below
        cases.append(("adamw", impl, impl, step_bytes("adamw", n_sparse, n_dense, e)))
        fns.append(stepper(opt, None))
    skipped: list[dict[str, object]] = []
    checks = []
    for backend in args.backends:
        reason = skip_reason(backend, device)
        if reason is not None:
            skipped.append(
                {"case": "step", "dtype": dtype_name, "backend": backend, "skipped": reason}
            )
            continue
        pre, mask, frozen_v = prepare(weights, grads, flags, backend, adamws[0])
        checks.append((pre, mask, frozen_v))
        resolved = resolved_backend(backend, pre)
        for case, opt in (("step_precondition", pre), ("step_mask_learning", mask)):
            cases.append((case, backend, resolved, step_bytes(case, n_sparse, n_dense, e)))
            fns.append(stepper(opt, backend))
    del weights, grads

    times = common.time_interleaved(fns, args.reps, args.warmup, flush)
    for check in checks:
        check_after_timing(*check)
    records = [
        record(case, impl, resolved, nbytes, n, dtype_name, t)
        for (case, impl, resolved, nbytes), t in zip(cases, times, strict=True)
    ]
    copy_gbps = records[0]["gbps"]
    adamw_ms = records[1]["median_ms"]
    for rec in records:
        rec["ratio_to_adamw"] = adamw_ms / rec["median_ms"] if rec["case"] != "copy" else None
        rec["fraction_of_copy"] = rec["gbps"] / copy_gbps
    return records + skipped


def evaluate_targets(device_type: str, records: list[dict[str, object]]) -> list[dict]:
    """Each target against the measurements. Ratio targets compare equal work only
    (float32: AdamW's states are float32 like STEP's); the copy-bandwidth target holds for
    every dtype."""
    goals = TARGETS[device_type]
    results = []
    for r in records:
        if "skipped" in r or not str(r["case"]).startswith("step_"):
            continue
        label = f"{r['dtype']} {r['case']} ({r['backend']})"
        if r["dtype"] == "float32":
            results.append(
                {
                    "target": f"{label}: AdamW ms / STEP ms >= {goals[r['case']]}",
                    "value": r["ratio_to_adamw"],
                    "met": r["ratio_to_adamw"] >= goals[r["case"]],
                }
            )
        if "copy_fraction" in goals:
            goal = goals["copy_fraction"]
            results.append(
                {
                    "target": f"{label}: fraction of copy GB/s >= {goal}",
                    "value": r["fraction_of_copy"],
                    "met": r["fraction_of_copy"] >= goal,
                }
            )
    return results


def summary_rows(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """One dtype's rows for a session summary: each STEP phase and backend against the
    first AdamW (the baseline of the ratios); STEP backends not timed, with the reason."""
    adamw = next(r for r in records if r.get("case") == "adamw")
    case = f"{adamw['params'] / 1e6:.3g}M params {adamw['dtype']}"
    baseline = f"AdamW({adamw['backend']})"
    rows = []
    for r in records:
        if r["case"] == "step":
            rows.append(common.compare(case, f"STEP ({r['backend']})", baseline, r, adamw))
        elif str(r["case"]).startswith("step_"):
            ours = f"{r['case']} ({common.backend_label(r)})"
            rows.append(common.compare(case, ours, baseline, r, adamw))
    return rows


def optimizer_fields(args: argparse.Namespace) -> dict[str, object]:
    """The header's fields of this benchmark: the weight set, hyperparameters, AdamW(s)."""
    n_sparse, n_dense = args.counts
    return {
        "weights": {
            "width": args.width,
            "blocks": args.blocks,
            "params": n_sparse + n_dense,
            "sparse_params": n_sparse,
            "dense_params": n_dense,
            "nm": list(NM),
            "shapes": [[nm, list(shape), sparse] for nm, shape, sparse in args.shapes],
        },
        "hyperparameters": {
            "lr": LR,
            "weight_decay": WEIGHT_DECAY,
            "srste_decay": SRSTE_DECAY,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
        },
        "adamw": args.adamw,
    }


def markdown(head: dict, records: list[dict[str, object]], targets: list[dict]) -> str:
    """The header, a table of ``records`` and the targets, in Markdown."""
    w = head["weights"]
    lines = [
        *common.markdown_intro(head, threads=True),
        f"- weights: {w['blocks']} blocks of d={w['width']}: {w['params']:,} parameters "
        f"({w['sparse_params']:,} sparse 2:4, {w['dense_params']:,} dense)",
        common.markdown_timer(head),
        "- GB/s = minimal bytes / median time (1 GB = 1e9 B); vs AdamW = AdamW ms / ms "
        "(> 1: faster than AdamW); / copy = GB/s / copy GB/s",
        "- AdamW keeps its states in the parameter dtype (bf16 for bf16 parameters); "
        "STEP keeps float32 states",
        "",
        "| dtype | case | backend | ms | B/param | MB moved | GB/s | vs AdamW | / copy |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        backend = common.backend_label(r)
        if "skipped" in r:
            skip = f"skipped: {r['skipped']}"
            lines.append(f"| {r['dtype']} | {r['case']} | {backend} | {skip} | | | | | |")
            continue
        ratio = "" if r["ratio_to_adamw"] is None else f"{r['ratio_to_adamw']:.3g}"
        lines.append(
            f"| {r['dtype']} | {r['case']} | {backend} | {r['median_ms']:.4g} "
            f"| {r['bytes_per_param']:.4g} | {r['bytes'] / 1e6:.1f} | {r['gbps']:.4g} "
            f"| {ratio} | {r['fraction_of_copy']:.3g} |"
        )
    lines += ["", f"Targets ({head['device_type']}):", ""]
    for t in targets:
        lines.append(f"- {'met' if t['met'] else 'NOT met'}: {t['target']} (got {t['value']:.3g})")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, torch.device]:
    """Parse the command line and fill device-dependent defaults; refuse CUDA without a GPU."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_device_arg(parser)
    parser.add_argument(
        "--width", type=int, default=None, help="model width d (default cuda 1024, cpu 256)"
    )
    parser.add_argument(
        "--blocks", type=int, default=None, help="transformer blocks (default cuda 8, cpu 5)"
    )
    parser.add_argument(
        "--dtypes",
        "--dtype",
        default="float32",
        help="comma-separated parameter dtypes: float32, bfloat16, float16 "
        "(default float32; optimizer states are float32 in STEP)",
    )
    parser.add_argument(
        "--backends",
        default="auto",
        help="STEP backends, comma-separated from auto," + ",".join(BACKENDS) + " (default auto)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one block of d=4096, 20 reps after 3 warm-up calls (options given explicitly win)",
    )
    parser.add_argument(
        "--adamw",
        default=None,
        help="AdamW implementations, comma-separated from fused,foreach; the "
        "first is the baseline of the ratios (default cuda fused, cpu foreach)",
    )
    common.add_run_args(parser)
    args = parser.parse_args(argv)

    common.resolve_device(parser, args)
    for key, value in DEFAULTS["quick" if args.quick else args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    common.fill_timing_defaults(args)
    if args.width < NM[1] or args.width % NM[1] or args.blocks < 1:
        parser.error(f"--width must be a positive multiple of {NM[1]} and --blocks >= 1")
    common.check_run_args(parser, args)
    args.dtypes = common.parse_choices(parser, "--dtypes", args.dtypes, DTYPES)
    args.backends = common.parse_backends(parser, args.backends)
    default_adamw = "fused" if args.device == "cuda" else "foreach"
    args.adamw = common.parse_choices(parser, "--adamw", args.adamw or default_adamw, ADAMW_IMPLS)
    common.apply_threads(args)
    args.shapes = weight_shapes(args.width, args.blocks)
    args.counts = param_counts(args.shapes)
    return args, torch.device(args.device)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON and Markdown to ``--out``."""
    args, device = parse_args(argv)
    n_sparse, n_dense = args.counts
    print(
        f"weights: {args.blocks} blocks of d={args.width}: {n_sparse + n_dense:,} parameters "
        f"({n_sparse:,} sparse 2:4, {n_dense:,} dense)",
        flush=True,
    )
    head = common.header(
        "optimizer", device, args, common.local_now(), turns="cases", fields=optimizer_fields(args)
    )
    flush = common.l2_flush_buffer(device)
    records: list[dict[str, object]] = []
    log = common.CaseLog(args.jsonl, head, len(args.dtypes))
    for dtype_name in args.dtypes:
        dtype_records = run_dtype(args, device, dtype_name, flush)
        log.case(dtype_records, summary_rows(dtype_records))
        records += dtype_records
        if device.type == "cuda":
            torch.cuda.empty_cache()
    targets = evaluate_targets(device.type, records)
    table = markdown(head, records, targets)
    print(table)
    payload = {"header": head, "records": records, "targets": targets}
    common.write_results(args.out, head, payload, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
