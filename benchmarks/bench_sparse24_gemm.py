"""Benchmark the CUDA mma.sp 2:4 GEMM against cuBLAS dense and PyTorch's cuSPARSELt path.

For every weight shape ``N x K``, token count ``M`` and dtype this times, in one run:

* ``step-cuda``   ``step.sparse24_linear(x, values, meta)`` with the op forced to the
  ``cuda`` backend (``csrc/sparse24_gemm.cu``; values/meta from ``step.to_sparse24``)
* ``dense``       ``F.linear(x, w)`` on the same 2:4-pruned weight stored dense (cuBLAS)
* ``cusparselt``  ``torch._cslt_sparse_mm(torch._cslt_compress(w), x.T,
  transpose_result=True)``, PyTorch's cuSPARSELt kernel, with the tokens zero-padded to a
  multiple of 16 outside the timed call (as ``to_sparse_semi_structured`` pads them);
  reported as unavailable if cuSPARSELt is missing or refuses the shape

All three take turns rep by rep (round-robin) after ``--warmup`` calls each; CUDA events
around each call with L2 flushed before it; the statistic is the median of ``--reps``.
FLOPs are counted as the dense product's ``2*M*N*K`` (so sparse TFLOP/s compare directly
with dense ones); minimal bytes are x + weight (+ metadata) + y. Ratios are time of the
baseline / time of ``step-cuda`` (> 1: ours is faster).

Before timing, each implementation's output is compared once with a float64 product on
the GPU by the tolerance rule (error <= 2x cuBLAS's own error + 4 ulps of the scale);
an implementation that fails is reported as wrong and not timed.

``--quick`` (what ``scripts/gpu_session`` runs): Llama-2-7B's projections
4096x4096, 11008x4096 and 4096x11008 at 1, 16 and 4096 tokens, float16, 20 reps after 3
warm-up calls; options given explicitly win. ``--jsonl`` appends each case as it finishes.

GPU only: without a CUDA GPU it exits with a usage error.

Usage::

    python benchmarks/bench_sparse24_gemm.py
    python benchmarks/bench_sparse24_gemm.py --quick --jsonl results.jsonl
    python benchmarks/bench_sparse24_gemm.py --shapes 4096x4096 --tokens 1,2048 --reps 200
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import _common as common
import torch
import torch.nn.functional as F

import step

SHAPES = "4096x4096,11008x4096,4096x11008,8192x8192"
TOKENS = "1,16,128,2048,8192"
QUICK = {"shapes": "4096x4096,11008x4096,4096x11008", "tokens": "1,16,4096"}
"""``--quick``: Llama-2-7B's projections at decode, small-batch and prefill token counts."""
DTYPES = ("float16", "bfloat16")
IMPLS = ("step-cuda", "dense", "cusparselt")
CSLT_PAD = 16


def gemm_flops(m: int, n: int, k: int) -> int:
    """FLOPs of the dense-equivalent product ``[m, k] @ [k, n]``: ``2*m*n*k``."""
    return 2 * m * n * k


def gemm_bytes(impl: str, m: int, n: int, k: int, elem: int = 2) -> int:
    """Minimal bytes: read x (``m*k*e``) and the weight, write y (``m*n*e``). Weight:
    dense ``n*k*e``; 2:4 values ``n*k/2*e`` plus metadata ``n*k/8`` (4 bits per 4-group)."""
    weight = n * k * elem if impl == "dense" else n * k // 2 * elem + n * k // 8
    return m * k * elem + weight + m * n * elem


def implementations(
    x: torch.Tensor, w: torch.Tensor, values: torch.Tensor, meta: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor] | str]:
    """Per implementation a no-argument call returning y [M, N], or why it is unavailable."""

    def ours() -> torch.Tensor:
        with step.use_backend("sparse24_linear=cuda"):
            return step.sparse24_linear(x, values, meta)

    fns: dict[str, Callable[[], torch.Tensor] | str] = {
        "step-cuda": ours,
        "dense": lambda: F.linear(x, w),
    }
    m = x.shape[0]
    try:
        packed = torch._cslt_compress(w)
        xt = F.pad(x, (0, 0, 0, (-m) % CSLT_PAD)).t()

        def cslt() -> torch.Tensor:
            return torch._cslt_sparse_mm(packed, xt, transpose_result=True)[:m]

        cslt()
        fns["cusparselt"] = cslt
    except Exception as err:  # noqa: BLE001  (any refusal means "unavailable")
        fns["cusparselt"] = f"unavailable: {type(err).__name__}: {err}".split("\n")[0]
    return fns


def check(y: torch.Tensor, ref_lowp: torch.Tensor, ref64: torch.Tensor) -> str | None:
    """None if ``y`` passes the tolerance rule against ``ref64``, else why not."""
    if y.shape != ref64.shape:
        return f"wrong shape {tuple(y.shape)}"
    err = (y.double() - ref64).abs().max().item()
    ref_err = (ref_lowp.double() - ref64).abs().max().item()
    floor = 4 * torch.finfo(y.dtype).eps * ref64.abs().max().item()
    if not err <= 2 * ref_err + floor:  # also catches NaN
        return f"wrong result: error {err:.3g} > 2 x cuBLAS error {ref_err:.3g}"
    return None


def summary_rows(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """One case's rows for a session summary: step-cuda against cuBLAS and cuSPARSELt."""
    by_impl = {str(r["impl"]): r for r in records}
    r0 = records[0]
    case = f"{r0['n']}x{r0['k']} M={r0['m']} {r0['dtype']}"
    ours = by_impl.get("step-cuda")
    return [
        common.compare(case, "step-cuda", "cuBLAS dense", ours, by_impl.get("dense")),
        common.compare(case, "step-cuda", "cuSPARSELt", ours, by_impl.get("cusparselt")),
    ]


def run(
    args: argparse.Namespace, device: torch.device, log: common.CaseLog | None = None
) -> list[dict[str, object]]:
    """Every (shape, dtype, tokens) case: the three implementations timed interleaved;
    each finished case also goes to ``log``."""
    flush = common.l2_flush_buffer(device)
    records: list[dict[str, object]] = []
    for n, k in args.shapes:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            gen = torch.Generator(device=device).manual_seed(0)
            w_full = torch.randn(n, k, generator=gen, device=device).to(dtype)
            values, meta = step.to_sparse24(w_full)
            w = step.from_sparse24(values, meta)  # the pruned weight, dense
            del w_full
            for m in args.tokens:
                x = torch.randn(m, k, generator=gen, device=device).to(dtype)
                ref64 = x.double() @ w.double().T
                ref_lowp = F.linear(x, w)
                base = {"n": n, "k": k, "m": m, "dtype": dtype_name}
                timed: list[tuple[str, Callable[[], torch.Tensor]]] = []
                case_records: list[dict[str, object]] = []
                for impl, fn in implementations(x, w, values, meta).items():
                    problem = fn if isinstance(fn, str) else check(fn(), ref_lowp, ref64)
                    if problem is not None:
                        case_records.append({**base, "impl": impl, "skipped": problem})
                    else:
                        assert not isinstance(fn, str)
                        timed.append((impl, fn))
                del ref64, ref_lowp
                times = common.time_interleaved(
                    [f for _, f in timed], args.reps, args.warmup, flush
                )
                measured = {}
                for (impl, _), t in zip(timed, times, strict=True):
                    nbytes = gemm_bytes(impl, m, n, k, x.element_size())
                    stats = common.timing_stats(t, nbytes)
                    tflops = gemm_flops(m, n, k) / (stats["median_ms"] * 1e-3) / 1e12
                    measured[impl] = {**base, "impl": impl, "bytes": nbytes, **stats}
                    measured[impl]["tflops"] = tflops
                    if impl == "cusparselt":
                        measured[impl]["note"] = f"tokens zero-padded to a multiple of {CSLT_PAD}"
                ours = measured.get("step-cuda")
                for rec in measured.values():
                    if ours is not None:
                        rec["speedup_of_step_cuda"] = rec["median_ms"] / ours["median_ms"]
                case_records += measured.values()
                records += case_records
                if log is not None:
                    log.case(case_records, summary_rows(case_records))
                del x
    return records


def _cell(by_impl: dict[str, dict], impl: str, key: str, fmt: str) -> str:
    rec = by_impl.get(impl)
    if rec is None:
        return "-"
    if "skipped" in rec:
        return str(rec["skipped"]).split(":")[0]
    return format(rec[key], fmt)


def markdown(head: dict, records: list[dict[str, object]]) -> str:
    """The header and one table row per (shape, dtype, tokens)."""
    lines = [
        *common.markdown_intro(head),
        common.markdown_timer(head),
        "- TFLOP/s counts the dense product's 2*M*N*K; speedup = baseline ms / step-cuda ms",
        f"- cuSPARSELt: tokens zero-padded to a multiple of {CSLT_PAD} outside the timed call",
        "",
        "| N x K | M | dtype | dense ms | cuSPARSELt ms | step-cuda ms | step-cuda TFLOP/s "
        "| step-cuda GB/s | vs dense | vs cuSPARSELt |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cases: dict[tuple, dict[str, dict]] = {}
    for r in records:
        cases.setdefault((r["n"], r["k"], r["m"], r["dtype"]), {})[str(r["impl"])] = r
    for (n, k, m, dtype), by_impl in cases.items():
        ours = by_impl.get("step-cuda", {})
        ok = "median_ms" in ours
        vs_dense = _cell(by_impl, "dense", "speedup_of_step_cuda", ".3g") if ok else "-"
        vs_cslt = _cell(by_impl, "cusparselt", "speedup_of_step_cuda", ".3g") if ok else "-"
        lines.append(
            f"| {n}x{k} | {m} | {dtype} | {_cell(by_impl, 'dense', 'median_ms', '.4g')} "
            f"| {_cell(by_impl, 'cusparselt', 'median_ms', '.4g')} "
            f"| {_cell(by_impl, 'step-cuda', 'median_ms', '.4g')} "
            f"| {_cell(by_impl, 'step-cuda', 'tflops', '.4g')} "
            f"| {_cell(by_impl, 'step-cuda', 'gbps', '.4g')} | {vs_dense} | {vs_cslt} |"
        )
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        lines += ["", "Not timed:", ""]
        lines += [f"- {r['n']}x{r['k']} M={r['m']} {r['impl']}: {r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, torch.device]:
    """Parse the command line; refuse to run without a CUDA GPU (usage error, status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", type=common.parse_shapes, default=None, help=f"NxK (default {SHAPES})"
    )
    parser.add_argument(
        "--tokens", type=common.parse_tokens, default=None, help=f"M (default {TOKENS})"
    )
    parser.add_argument("--dtypes", default="float16", help="float16 and/or bfloat16")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"shapes {QUICK['shapes']}, tokens {QUICK['tokens']}, 20 reps after 3 "
        "warm-up calls (options given explicitly win)",
    )
    common.add_run_args(parser)
    args = parser.parse_args(argv)
    chosen = QUICK if args.quick else {"shapes": SHAPES, "tokens": TOKENS}
    if args.shapes is None:
        args.shapes = common.parse_shapes(chosen["shapes"])
    if args.tokens is None:
        args.tokens = common.parse_tokens(chosen["tokens"])
    args.device = "cuda"
    if not torch.cuda.is_available():
        parser.error(
            "this benchmark needs a CUDA GPU (sm_80 or newer) and CuPy; torch.cuda.is_available() "
            f"is False (torch {torch.__version__}, CUDA build: {torch.version.cuda})"
        )
    common.resolve_device(parser, args)
    args.dtypes = common.parse_choices(parser, "--dtypes", args.dtypes, DTYPES)
    common.fill_timing_defaults(args)
    common.check_run_args(parser, args)
    for n, k in args.shapes:
        if n % 64 or k % 64:
            parser.error(f"--shapes {n}x{k}: the CUDA 2:4 GEMM needs N and K multiples of 64")
    return args, torch.device("cuda")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON and Markdown to ``--out``."""
    args, device = parse_args(argv)
    head = common.header(
        "sparse24_gemm",
        device,
        args,
        common.local_now(),
        turns="implementations",
        fields={
            "shapes": args.shapes,
            "tokens": args.tokens,
            "dtypes": args.dtypes,
            "quick": args.quick,
        },
    )
    planned = len(args.shapes) * len(args.dtypes) * len(args.tokens)
    records = run(args, device, common.CaseLog(args.jsonl, head, planned))
    table = markdown(head, records)
    return common.publish(args.out, head, records, table)


if __name__ == "__main__":
    sys.exit(main())
