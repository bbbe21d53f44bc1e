"""Benchmark the Triton N:M matmuls against cuBLAS dense: the fused masked matmul of
training and the compressed matmul of inference.

For every weight shape ``N x K`` (out x in features), token count ``T`` and ratio ``n:m``
this times, in one run, taking turns rep by rep (round-robin):

* ``dense``           ``F.linear(x, w_pruned)``, cuBLAS on the pruned weight stored dense
* ``masked-unfused``  ``torch.ops.step.masked_linear(x, w, n, m, None, None)`` forced to the
  ``reference`` backend: ``step::nm_mask`` (its own best backend), ``torch.where``,
  ``F.linear``; the unfused baseline of the mask-learning phase
* ``masked-fused``    the same op forced to ``triton`` (``kernels/masked_linear.py``): the
  mask is ranked in registers while the weight tile loads, no masked copy of w is written
* ``masked-mma``      (2:4 only) the same op forced to ``cuda``
  (``step/native/cuda/masked_linear.py``): w packed with ``to_sparse24`` on every call, then
  the ``mma.sp`` GEMM of ``csrc/sparse24_gemm.cu``; skipped with the reason where CuPy or
  the GPU cannot run it
* ``nm-compressed``   ``torch.ops.step.nm_linear(x, c.values, c.positions, n, m, None)``
  forced to ``triton`` (``kernels/nm_linear.py``), ``c = step.nm_compress(w, n, m)``:
  values plus bit-packed positions, read straight from memory

FLOPs are the dense product's ``2*T*N*K`` for every implementation (so TFLOP/s compare
directly); bytes are the minimal bytes of each op (:func:`matmul_bytes`); speed-up =
dense ms / implementation ms (> 1: faster than cuBLAS). For the compressed op the report
also gives the speed-up over dense that streaming both at the same bandwidth would give
(dense bytes / compressed bytes) and, at ``T <= 16`` (decode, weight streaming), the
fraction of the bytes limit reached: (bytes / median time) / ``--peak-gbps``.

Before timing, each output is compared once with a float64 product on the GPU by the
tolerance rule (error <= 2x cuBLAS's own error + 4 ulps of the scale), and the masks the
masked ops return must equal ``nm_mask_ref(w, n, m)``; an implementation that fails is
reported as wrong (one that raises, as an error) and not timed. CUDA events around each
call, L2 flushed before it (``_common.time_interleaved``); the statistic is the median of
``--reps``. The issue's targets are printed beside the results with the measured value
and whether it meets them.

GPU only: without a CUDA GPU it exits with a usage error (status 2).

Usage::

    python benchmarks/bench_nm_matmul.py
    python benchmarks/bench_nm_matmul.py --quick --jsonl results.jsonl  # case by case
    python benchmarks/bench_nm_matmul.py --ratios 1:4 --tokens 1,16 --dtype bfloat16 --reps 200
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

import _common as common
import torch
import torch.nn.functional as F
from step.kernels.nm_positions import words_per_row

import step
from step.ops.nm_mask import nm_mask_ref

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))
TOKENS = (1, 4, 16, 256, 4096)
RATIOS = "2:4,1:4,1:8"
QUICK = {"shapes": SHAPES, "tokens": (1, 16, 4096), "ratios": "2:4,1:4"}
"""``--quick`` (what ``scripts/gpu_session`` runs): the subset used where an option is
not given explicitly; every Llama-2-7B projection shape, 20 reps after 3 warm-up calls."""
DTYPES = ("float16", "bfloat16")
IMPLS = ("dense", "masked-unfused", "masked-fused", "masked-mma", "nm-compressed")
DISPATCH = {
    "masked-unfused": ("masked_linear", "reference"),
    "masked-fused": ("masked_linear", "triton"),
    "masked-mma": ("masked_linear", "cuda"),  # 2:4 only: pack + mma.sp GEMM
    "nm-compressed": ("nm_linear", "triton"),
}
"""Implementation -> (``step::`` op, forced backend)."""
DECODE_TOKENS = 16
"""Token counts up to this are decode (weight streaming): bytes-limit fraction reported."""
PEAK_GBPS = 3350.0
"""H100 SXM HBM3 peak bandwidth, GB/s (the ``--peak-gbps`` default)."""
SPEEDUP_TARGETS = {(2, 4): 1.6, (1, 4): 3.0, (1, 8): 4.5}
"""The issue's compressed decode targets: speed-up over cuBLAS at 1-16 tokens."""
FUSED_VS_DENSE = 1.10
"""The fused masked matmul's target at 4096 tokens: time <= 1.10 x dense."""
BYTES_LIMIT_TARGET = 0.85
"""The compressed decode target: >= 85% of the bytes limit."""


# ---------------------------------------------------------------- counts


def matmul_flops(tokens: int, n_out: int, k: int) -> int:
    """FLOPs of the dense-equivalent product ``[tokens, k] @ [k, n_out]``: ``2*T*N*K``."""
    return 2 * tokens * n_out * k


def weight_bytes(op: str, n_out: int, k: int, n: int, m: int, elem: int = 2) -> int:
    """Bytes of the weight (and its side data) that ``op`` reads or writes once.

    * ``dense``:  w, ``N*K*e``
    * ``masked``: w read (``N*K*e``) plus the bool mask the op returns, written once
      (``N*K``); both masked implementations produce the same outputs, so both count this
    * ``nm``:     values ``N*(K*n/m)*e`` plus the packed positions, int32
      ``N*words_per_row(K*n/m, m)*4`` (``ceil(log2 m)`` bits per kept value)
    """
    if op == "dense":
        return n_out * k * elem
    if op == "masked":
        return n_out * k * elem + n_out * k
    if op == "nm":
        kept = k // m * n
        return n_out * kept * elem + n_out * words_per_row(kept, m) * 4
    raise ValueError(f"unknown op {op!r}")


def op_of(impl: str) -> str:
    """The bytes model of implementation ``impl``: ``dense``, ``masked`` or ``nm``."""
    return {"dense": "dense", "nm-compressed": "nm"}.get(impl, "masked")


def matmul_bytes(impl: str, tokens: int, n_out: int, k: int, n: int, m: int, elem: int = 2) -> int:
    """Minimal bytes: read x (``T*K*e``) and the weight (:func:`weight_bytes`), write y
    (``T*N*e``)."""
    return (
        tokens * k * elem + weight_bytes(op_of(impl), n_out, k, n, m, elem) + tokens * n_out * elem
    )


def bytes_limit_speedup(tokens: int, n_out: int, k: int, n: int, m: int, elem: int = 2) -> float:
    """Speed-up of the compressed op over dense if both stream their minimal bytes at the
    same bandwidth: dense bytes / compressed bytes."""
    dense = matmul_bytes("dense", tokens, n_out, k, n, m, elem)
    return dense / matmul_bytes("nm-compressed", tokens, n_out, k, n, m, elem)


# ---------------------------------------------------------------- command line


def parse_ratios(text: str) -> list[tuple[int, int]]:
    """``"2:4,1:8"`` -> ``[(2, 4), (1, 8)]``; each ``1 <= n < m <= 32``."""
    ratios = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", item)
        if not match:
            raise argparse.ArgumentTypeError(f"--ratios: {item!r} is not N:M, e.g. 2:4")
        n, m = int(match.group(1)), int(match.group(2))
        if not 1 <= n < m <= 32:
            raise argparse.ArgumentTypeError(f"--ratios: {n}:{m} needs 1 <= n < m <= 32")
        ratios.append((n, m))
    return ratios


def ratio_name(n: int, m: int) -> str:
    """``(2, 4)`` -> ``"2:4"``."""
    return f"{n}:{m}"


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--out``, ``--reps``, ``--warmup`` from ``_common``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shapes = ",".join(f"{n}x{k}" for n, k in SHAPES)
    tokens = ",".join(map(str, TOKENS))
    parser.add_argument(
        "--shapes", type=common.parse_shapes, default=None, help=f"NxK weights (default {shapes})"
    )
    parser.add_argument(
        "--tokens",
        type=common.parse_tokens,
        default=None,
        help=f"token counts T (default {tokens})",
    )
    parser.add_argument(
        "--ratios", type=parse_ratios, default=None, help=f"N:M patterns (default {RATIOS})"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="default float16")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a subset: tokens 1,16,4096, ratios 2:4,1:4, 20 reps after 3 warm-up calls "
        "(options given explicitly win)",
    )
    parser.add_argument(
        "--peak-gbps",
        type=float,
        default=PEAK_GBPS,
        help=f"the device's peak memory bandwidth in GB/s, for the bytes-limit fraction "
        f"(default {PEAK_GBPS:g}, H100 SXM)",
    )
    common.add_run_args(parser)
    return parser


def fill_cases(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill ``--shapes``, ``--tokens`` and ``--ratios`` left unset (the full set, or the
    ``--quick`` subset) and check that every K splits into groups of every m."""
    full = {"shapes": SHAPES, "tokens": TOKENS, "ratios": RATIOS}
    chosen = QUICK if args.quick else full
    if args.shapes is None:
        args.shapes = list(chosen["shapes"])
    if args.tokens is None:
        args.tokens = list(chosen["tokens"])
    if args.ratios is None:
        args.ratios = parse_ratios(chosen["ratios"])
    if args.peak_gbps <= 0:
        parser.error("--peak-gbps must be > 0")
    for n_out, k in args.shapes:
        for _n, m in args.ratios:
            if k % m:
                parser.error(f"--shapes {n_out}x{k}: K={k} is not a multiple of m={m}")


def cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (shape, ratio, tokens) case in run order: ``n_out``, ``k``, ``n``, ``m``,
    ``tokens``."""
    return [
        {"n_out": n_out, "k": k, "n": n, "m": m, "tokens": t}
        for n_out, k in args.shapes
        for n, m in args.ratios
        for t in args.tokens
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; refuse to run without a CUDA GPU (usage error, status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error(
            "this benchmark needs a CUDA GPU (Triton kernels); torch.cuda.is_available() is "
            f"False (torch {torch.__version__}, CUDA build: {torch.version.cuda})"
        )
    args.device = "cuda"
    args.threads = 0
    fill_cases(parser, args)
    common.fill_timing_defaults(args)
    common.check_run_args(parser, args)
    return args


# ---------------------------------------------------------------- implementations and checks


def implementations(
    x: torch.Tensor, w: torch.Tensor, w_pruned: torch.Tensor, c: Any, n: int, m: int
) -> dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor | None]]]:
    """Per implementation a no-argument call returning (y ``[T, N]``, the mask it returned
    or None)."""
    positions = c.positions  # packed once (cached on c), not inside the timed call

    def dense() -> tuple[torch.Tensor, None]:
        return F.linear(x, w_pruned), None

    def masked(backend: str) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        spec = f"masked_linear={backend}"

        def call() -> tuple[torch.Tensor, torch.Tensor]:
            with step.use_backend(spec):
                return torch.ops.step.masked_linear(x, w, n, m, None, None)

        return call

    def compressed() -> tuple[torch.Tensor, None]:
        with step.use_backend("nm_linear=triton"):
            return torch.ops.step.nm_linear(x, c.values, positions, n, m, None), None

    calls = {
        "dense": dense,
        "masked-unfused": masked("reference"),
        "masked-fused": masked("triton"),
        "masked-mma": masked("cuda"),
        "nm-compressed": compressed,
    }
    if (n, m) != (2, 4):  # sparse tensor cores know 2:4 only
        del calls["masked-mma"]
    return calls


def check(
    y: torch.Tensor,
    mask: torch.Tensor | None,
    ref_lowp: torch.Tensor,
    ref64: torch.Tensor,
    expected_mask: torch.Tensor,
) -> str | None:
    """None if ``y`` passes the tolerance rule against ``ref64`` (and ``mask``, if any,
    equals ``expected_mask``), else why not."""
    if y.shape != ref64.shape or y.dtype != ref_lowp.dtype:
        return f"wrong result: shape {tuple(y.shape)} dtype {y.dtype}"
    if mask is not None and not torch.equal(mask, expected_mask):
        return "wrong mask: differs from nm_mask_ref(w, n, m)"
    err = (y.double() - ref64).abs().max().item()
    ref_err = (ref_lowp.double() - ref64).abs().max().item()
    floor = 4 * torch.finfo(y.dtype).eps * ref64.abs().max().item()
    if not err <= 2 * ref_err + floor:  # also catches NaN
        return f"wrong result: error {err:.3g} > 2 x cuBLAS error {ref_err:.3g} + 4 ulps"
    return None


def skip_reason(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot be timed on ``device`` (backend unavailable), or None."""
    if impl not in DISPATCH:
        return None
    op, backend = DISPATCH[impl]
    return common.backend_skip_reason(backend, op, device)


def measure_case(
    case: dict[str, Any],
    w: torch.Tensor,
    w_pruned: torch.Tensor,
    expected_mask: torch.Tensor,
    c: Any,
    x: torch.Tensor,
    args: argparse.Namespace,
    flush: torch.Tensor | None,
    *,
    allow_interpreter: bool = False,
) -> list[dict[str, Any]]:
    """Check, then time round-robin, the implementations on one case; one record each.

    ``allow_interpreter`` lets the Triton interpreter run on CPU (for the CPU self-test
    only: its times mean nothing).
    """
    n_out, k, n, m, t = case["n_out"], case["k"], case["n"], case["m"], case["tokens"]
    elem = x.element_size()
    base = {
        "n_out": n_out,
        "k": k,
        "tokens": t,
        "nm": ratio_name(n, m),
        "dtype": str(x.dtype).removeprefix("torch."),
    }
    ref64 = x.double() @ w_pruned.double().T
    ref_lowp = F.linear(x, w_pruned)
    records: list[dict[str, Any]] = []
    timed: list[tuple[str, Callable[[], object]]] = []
    for impl, fn in implementations(x, w, w_pruned, c, n, m).items():
        problem = skip_reason(impl, x.device)
        if problem is not None and not (allow_interpreter and "interpreter" in problem):
            records.append({**base, "impl": impl, "skipped": problem})
            continue
        try:
            y, mask = fn()
        except Exception as err:  # noqa: BLE001  (a failing kernel is reported, not fatal)
            records.append({**base, "impl": impl, "skipped": f"error: {type(err).__name__}: {err}"})
            continue
        problem = check(y, mask, ref_lowp, ref64, expected_mask)
        if problem is not None:
            records.append({**base, "impl": impl, "skipped": problem})
        else:
            timed.append((impl, fn))
    del ref64, ref_lowp
    times = common.time_interleaved([f for _, f in timed], args.reps, args.warmup, flush)
    measured: dict[str, dict[str, Any]] = {}
    flops = matmul_flops(t, n_out, k)
    for (impl, _), impl_times in zip(timed, times, strict=True):
        nbytes = matmul_bytes(impl, t, n_out, k, n, m, elem)
        stats = common.timing_stats(impl_times, nbytes)
        rec = {**base, "impl": impl, "bytes": nbytes, "flops": flops, **stats}
        rec["tflops"] = flops / (stats["median_ms"] * 1e-3) / 1e12
        if impl in DISPATCH:
            rec["op"], rec["backend"] = DISPATCH[impl]
        if impl == "nm-compressed":
            rec["bytes_limit_speedup"] = bytes_limit_speedup(t, n_out, k, n, m, elem)
            if t <= DECODE_TOKENS:
                rec["fraction_of_peak_bw"] = stats["gbps"] / args.peak_gbps
        measured[impl] = rec
    dense = measured.get("dense")
    unfused = measured.get("masked-unfused")
    for rec in measured.values():
        if dense is not None:
            rec["speedup_vs_dense"] = dense["median_ms"] / rec["median_ms"]
        if unfused is not None and rec["impl"] == "masked-fused":
            rec["speedup_vs_unfused"] = unfused["median_ms"] / rec["median_ms"]
        if "masked-fused" in measured and rec["impl"] == "masked-mma":
            rec["speedup_vs_fused"] = measured["masked-fused"]["median_ms"] / rec["median_ms"]
    return records + list(measured.values())


ROW_PAIRS = (
    ("masked-fused", "dense"),
    ("masked-fused", "masked-unfused"),
    ("masked-mma", "dense"),
    ("nm-compressed", "dense"),
)
"""(ours, baseline) pairs of a session summary's rows."""


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One case's rows for a session summary (:data:`ROW_PAIRS` where ours was run)."""
    by_impl = {str(r["impl"]): r for r in records}
    r0 = records[0]
    case = f"{r0['n_out']}x{r0['k']} {r0['nm']} T={r0['tokens']} {r0['dtype']}"
    return [
        common.compare(case, ours, base, by_impl[ours], by_impl.get(base))
        for ours, base in ROW_PAIRS
        if ours in by_impl
    ]


def run(
    args: argparse.Namespace, device: torch.device, log: common.CaseLog | None = None
) -> list[dict[str, Any]]:
    """Every case: weights drawn per shape (seed 0), compressed per ratio, x per token
    count; each finished case also goes to ``log``."""
    flush = common.l2_flush_buffer(device)
    dtype = getattr(torch, args.dtype)
    records: list[dict[str, Any]] = []
    for n_out, k in args.shapes:
        gen = torch.Generator(device=device).manual_seed(0)
        w = torch.randn(n_out, k, generator=gen, device=device).to(dtype)
        xs = {t: torch.randn(t, k, generator=gen, device=device).to(dtype) for t in args.tokens}
        for n, m in args.ratios:
            mask = nm_mask_ref(w, n, m)
            w_pruned = torch.where(mask, w, torch.zeros_like(w))
            c = step.nm_compress(w, n, m)
            for t in args.tokens:
                case = {"n_out": n_out, "k": k, "n": n, "m": m, "tokens": t}
                recs = measure_case(case, w, w_pruned, mask, c, xs[t], args, flush)
                records += recs
                if log is not None:
                    log.case(recs, summary_rows(recs))
                print(progress_line(recs), flush=True)
            del mask, w_pruned, c
        del w, xs
    return records


# ---------------------------------------------------------------- report


def progress_line(records: list[dict[str, Any]]) -> str:
    """One line per case while the run goes: the median ms of each implementation."""
    r0 = records[0]
    parts = [
        f"{r['impl']} {r['median_ms']:.4g} ms" if "median_ms" in r else f"{r['impl']} skipped"
        for r in records
    ]
    return f"{r0['n_out']}x{r0['k']} {r0['nm']} T={r0['tokens']}: " + ", ".join(parts)


def _cell(rec: dict[str, Any] | None, key: str, fmt: str, scale: float = 1.0) -> str:
    if rec is None:
        return "-"
    if "skipped" in rec:
        return str(rec["skipped"]).split(":")[0]
    if key not in rec:
        return "-"
    return format(rec[key] * scale, fmt)


def group_cases(records: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """``(n_out, k, nm, tokens, dtype)`` -> implementation -> record, in run order."""
    grouped: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in records:
        key = (r["n_out"], r["k"], r["nm"], r["tokens"], r["dtype"])
        grouped.setdefault(key, {})[str(r["impl"])] = r
    return grouped


def target_checks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets against the measured records: ``target``, ``case``, ``value``,
    ``goal``, ``met``. Cases that were not measured give no row."""
    checks = []
    for (n_out, k, nm, t, _dtype), by_impl in group_cases(records).items():
        case = f"{n_out}x{k} {nm} T={t}"
        fused = by_impl.get("masked-fused", {})
        nm_rec = by_impl.get("nm-compressed", {})
        if t == 4096 and "speedup_vs_dense" in fused:
            goal = 1 / FUSED_VS_DENSE
            checks.append(
                {"target": "fused masked matmul within 10% of dense (speed-up >= 1/1.1)",
                 "case": case, "value": fused["speedup_vs_dense"], "goal": goal,
                 "met": fused["speedup_vs_dense"] >= goal}
            )  # fmt: skip
        if t == 4096 and "speedup_vs_unfused" in fused:
            checks.append(
                {"target": "fused masked matmul faster than unfused", "case": case,
                 "value": fused["speedup_vs_unfused"], "goal": 1.0,
                 "met": fused["speedup_vs_unfused"] > 1.0}
            )  # fmt: skip
        if "fraction_of_peak_bw" in nm_rec:
            checks.append(
                {"target": f"compressed decode >= {BYTES_LIMIT_TARGET:.0%} of the bytes limit",
                 "case": case, "value": nm_rec["fraction_of_peak_bw"],
                 "goal": BYTES_LIMIT_TARGET,
                 "met": nm_rec["fraction_of_peak_bw"] >= BYTES_LIMIT_TARGET}
            )  # fmt: skip
        goal = SPEEDUP_TARGETS.get(tuple(int(v) for v in nm.split(":")))
        if goal is not None and t <= DECODE_TOKENS and "speedup_vs_dense" in nm_rec:
            checks.append(
                {"target": f"compressed {nm} >= {goal}x cuBLAS at 1-16 tokens", "case": case,
                 "value": nm_rec["speedup_vs_dense"], "goal": goal,
                 "met": nm_rec["speedup_vs_dense"] >= goal}
            )  # fmt: skip
    return checks


TARGET_LINES = [
    f"- fused masked matmul: time within 10% of dense cuBLAS at 4096 tokens "
    f"(speed-up >= {1 / FUSED_VS_DENSE:.3f}), and faster than the unfused baseline",
    f"- compressed nm_linear, decode (1-{DECODE_TOKENS} tokens): >= "
    f"{BYTES_LIMIT_TARGET:.0%} of the bytes limit (bytes / time vs --peak-gbps)",
    "- compressed nm_linear over cuBLAS at 1-16 tokens: "
    + ", ".join(f"{ratio_name(*nm)} >= {goal}x" for nm, goal in SPEEDUP_TARGETS.items()),
]


def markdown(head: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The header, a table for the masked matmuls, one for the compressed matmul, the
    targets with their measured values, and what was not timed."""
    lines = [
        *common.markdown_intro(head),
        common.markdown_timer(head),
        f"- dtype {head.get('dtype', '?')}; TFLOP/s count the dense product's 2*T*N*K; "
        "speed-up = dense ms / ms (> 1: faster than cuBLAS)",
        "- GB/s = minimal bytes / median: dense x + W + y; masked x + W + mask (1 B/weight) "
        "+ y; compressed x + values + packed positions + y",
        f"- bytes limit: peak bandwidth {head.get('peak_gbps', PEAK_GBPS):g} GB/s (--peak-gbps)",
        "",
        "## Masked matmul (mask-learning forward): fused Triton vs unfused vs dense",
        "",
        "| N x K | N:M | T | dense ms | dense TFLOP/s | unfused ms | fused ms | fused TFLOP/s "
        "| fused GB/s | fused vs dense | fused vs unfused |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    grouped = group_cases(records)
    for (n_out, k, nm, t, _dtype), by_impl in grouped.items():
        dense, fused = by_impl.get("dense"), by_impl.get("masked-fused")
        lines.append(
            f"| {n_out}x{k} | {nm} | {t} | {_cell(dense, 'median_ms', '.4g')} "
            f"| {_cell(dense, 'tflops', '.4g')} "
            f"| {_cell(by_impl.get('masked-unfused'), 'median_ms', '.4g')} "
            f"| {_cell(fused, 'median_ms', '.4g')} | {_cell(fused, 'tflops', '.4g')} "
            f"| {_cell(fused, 'gbps', '.4g')} | {_cell(fused, 'speedup_vs_dense', '.3g')} "
            f"| {_cell(fused, 'speedup_vs_unfused', '.3g')} |"
        )
    mma_rows = [(key, by_impl) for key, by_impl in grouped.items()
                if by_impl.get("masked-mma", {}).get("median_ms") is not None]  # fmt: skip
    if mma_rows:
        lines += [
            "",
            "## 2:4 masked matmul on sparse tensor cores (`cuda` backend, forced): pack w + mma.sp",
            "",
            "| N x K | T | dense ms | fused ms | mma ms | mma TFLOP/s | mma vs dense "
            "| mma vs fused |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for (n_out, k, _nm, t, _dtype), by_impl in mma_rows:
            mma = by_impl["masked-mma"]
            lines.append(
                f"| {n_out}x{k} | {t} | {_cell(by_impl.get('dense'), 'median_ms', '.4g')} "
                f"| {_cell(by_impl.get('masked-fused'), 'median_ms', '.4g')} "
                f"| {_cell(mma, 'median_ms', '.4g')} | {_cell(mma, 'tflops', '.4g')} "
                f"| {_cell(mma, 'speedup_vs_dense', '.3g')} "
                f"| {_cell(mma, 'speedup_vs_fused', '.3g')} |"
            )
    lines += [
        "",
        "## Compressed N:M matmul (inference): nm_linear Triton vs dense",
        "",
        "| N x K | N:M | T | dense ms | dense GB/s | nm ms | nm TFLOP/s | nm GB/s "
        "| nm vs dense | bytes-limit speed-up | % of bytes limit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (n_out, k, nm, t, _dtype), by_impl in grouped.items():
        dense, ours = by_impl.get("dense"), by_impl.get("nm-compressed")
        lines.append(
            f"| {n_out}x{k} | {nm} | {t} | {_cell(dense, 'median_ms', '.4g')} "
            f"| {_cell(dense, 'gbps', '.4g')} | {_cell(ours, 'median_ms', '.4g')} "
            f"| {_cell(ours, 'tflops', '.4g')} | {_cell(ours, 'gbps', '.4g')} "
            f"| {_cell(ours, 'speedup_vs_dense', '.3g')} "
            f"| {_cell(ours, 'bytes_limit_speedup', '.3g')} "
            f"| {_cell(ours, 'fraction_of_peak_bw', '.1f', 100.0)} |"
        )
    lines += ["", "## Targets (from the issue; met or not as measured above)", "", *TARGET_LINES]
    checks = target_checks(records)
    if checks:
        lines += ["", "| target | case | measured | goal | met |", "|---|---|---:|---:|---|"]
        lines += [
            f"| {c['target']} | {c['case']} | {c['value']:.3g} | {c['goal']:.3g} "
            f"| {'yes' if c['met'] else 'no'} |"
            for c in checks
        ]
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        lines += ["", "Not timed:", ""]
        lines += [
            f"- {r['n_out']}x{r['k']} {r['nm']} T={r['tokens']} {r['impl']}: {r['skipped']}"
            for r in skipped
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write JSON and Markdown to ``--out``."""
    args = parse_args(argv)
    device = torch.device("cuda")
    head = common.header(
        "nm_matmul",
        device,
        args,
        common.local_now(),
        turns="implementations",
        fields={
            "shapes": args.shapes,
            "tokens": args.tokens,
            "ratios": [ratio_name(n, m) for n, m in args.ratios],
            "dtype": args.dtype,
            "peak_gbps": args.peak_gbps,
            "quick": args.quick,
            "implementations": {
                impl: (f"step::{DISPATCH[impl][0]} forced to {DISPATCH[impl][1]}")
                if impl in DISPATCH
                else "F.linear (cuBLAS) on the pruned weight"
                for impl in IMPLS
            },
        },
    )
    records = run(args, device, common.CaseLog(args.jsonl, head, len(cases(args))))
    table = markdown(head, records)
    print(table)
    payload = {"header": head, "records": records, "targets": target_checks(records)}
    common.write_results(args.out, head, payload, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
