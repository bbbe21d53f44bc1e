"""Frozen sparse linear layers in inference: time and weight bytes against ``nn.Linear``.

For each weight shape ``[N, K]``, dtype, N:M and token count: a dense ``nn.Linear`` and
the same layer sparsified and frozen (``step.sparsify`` + ``step.freeze``, ``eval()``),
which runs on its compressed weight (``step.sparse24_linear`` for 2:4 half precision,
``step.nm_linear`` otherwise) where a kernel reads it directly, else on its pruned dense
weight ("frozen, auto"); and the compressed op forced to the reference backend (decode,
then matmul: what a compressed weight costs without a kernel). Outputs are checked
against the dense layer with the masked weight before anything is timed.

    python benchmarks/bench_inference.py                 # cuda if a GPU is visible, else cpu
    python benchmarks/bench_inference.py --device cpu --tokens 1,16,256
    python benchmarks/bench_inference.py --quick --jsonl results.jsonl  # case by case

``--quick`` (what ``scripts/gpu_session`` runs): Llama-2-7B's projections at 1, 16
and 4096 tokens, 20 reps after 3 warm-up calls; options given explicitly win.
"""

from __future__ import annotations

import argparse
import sys

import _common as common
import torch

import step

CUDA_SHAPES = "4096x4096,11008x4096,4096x11008"
CPU_SHAPES = "1024x1024,4096x1024"
RATIOS = ("2:4", "1:4", "1:8")
QUICK_TOKENS = "1,16,4096"


def summary_rows(records: list[dict]) -> list[dict]:
    """Rows for a session summary: each frozen layer against ``nn.Linear``, then the
    compressed op forced to the reference backend against ``nn.Linear``."""
    rows = []
    for r in records:
        case = f"{r['shape'][0]}x{r['shape'][1]} {r['nm']} T={r['tokens']} {r['dtype']}"
        ours = f"frozen {r['layout']} ({r['auto_backend']})"
        rows.append(common.summary_row(case, ours, r["sparse_ms"], "nn.Linear", r["dense_ms"]))
        rows.append(
            common.summary_row(
                case, "compressed via reference", r["reference_ms"], "nn.Linear", r["dense_ms"]
            )
        )
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_device_arg(parser)
    parser.add_argument(
        "--shapes", default=None, help=f"NxK,... (cuda: {CUDA_SHAPES}; cpu: {CPU_SHAPES})"
    )
    parser.add_argument(
        "--tokens",
        default=None,
        help=f"token counts (rows of x; default 1,16,256, quick {QUICK_TOKENS})",
    )
    parser.add_argument("--dtypes", default=None, help="default cuda float16; cpu float32,float16")
    parser.add_argument("--ratios", default="2:4,1:4", help=f"N:M patterns from {RATIOS}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"shapes {CUDA_SHAPES}, tokens {QUICK_TOKENS}, 20 reps after 3 warm-up calls "
        "(options given explicitly win)",
    )
    common.add_run_args(parser)
    args = parser.parse_args(argv)
    common.resolve_device(parser, args)
    common.fill_timing_defaults(args)
    common.check_run_args(parser, args)
    on_gpu = args.device == "cuda"
    shapes = args.shapes or (CUDA_SHAPES if on_gpu or args.quick else CPU_SHAPES)
    args.shapes = [tuple(int(d) for d in s.split("x")) for s in shapes.split(",")]
    tokens = args.tokens or (QUICK_TOKENS if args.quick else "1,16,256")
    args.tokens = [int(t) for t in tokens.split(",")]
    dtypes = args.dtypes or ("float16" if on_gpu else "float32,float16")
    args.dtypes = common.parse_choices(
        parser, "--dtypes", dtypes, ("float32", "float16", "bfloat16")
    )
    args.ratios = common.parse_choices(parser, "--ratios", args.ratios, RATIOS)
    common.apply_threads(args)
    return args, torch.device(args.device)


def measure(args, device, n, k, dtype_name, ratio, flush, log=None):
    """Check and time one weight shape, dtype and N:M at every token count; each token
    count's record also goes to ``log`` (a :class:`_common.CaseLog`) as it finishes."""
    dtype = getattr(torch, dtype_name)
    nn_, m = (int(v) for v in ratio.split(":"))
    torch.manual_seed(0)
    dense = torch.nn.Linear(k, n, device=device, dtype=dtype)
    sparse = torch.nn.Sequential(torch.nn.Linear(k, n, device=device, dtype=dtype))
    sparse[0].load_state_dict(dense.state_dict())
    step.sparsify(sparse, n=nn_, m=m, include=["0"])
    step.freeze(sparse)
    sparse.eval()
    layout = sparse[0].compressed_weight().layout
    records = []
    with torch.inference_mode():
        for tokens in args.tokens:
            record = time_tokens(args, dense, sparse, tokens, layout, flush)
            record.update(shape=[n, k], dtype=dtype_name, nm=ratio)
            records.append(record)
            if log is not None:
                log.case([record], summary_rows([record]))
    return records


def time_tokens(args, dense, sparse, tokens, layout, flush):
    n, k = dense.weight.shape
    dtype = dense.weight.dtype
    masked = torch.nn.functional.linear  # the dense op on the pruned weight
    x = torch.randn(tokens, k, device=dense.weight.device, dtype=dtype)
    want = masked(x.double(), sparse[0].weight.double(), sparse[0].bias.double())
    got = sparse(x).double()
    base = masked(x, sparse[0].weight, sparse[0].bias).double()
    if (got - want).abs().max() > 2 * (base - want).abs().max() + 1e-6:
        raise RuntimeError(f"{n}x{k} {dtype} tokens={tokens}: wrong output")
    cw = sparse[0].compressed_weight()

    def reference():
        with step.use_backend(f"{cw.op}=reference"):
            return sparse(x)

    fns = [lambda: dense(x), lambda: sparse(x), reference]
    times = common.time_interleaved(fns, args.reps, args.warmup, flush)
    dense_bytes = n * k * dense.weight.element_size()
    d, s, r = (common.timing_stats(t, 0)["median_ms"] for t in times)
    return {
        "tokens": tokens, "layout": layout, "auto_backend": auto_backend(cw, x, sparse),
        "dense_ms": d, "sparse_ms": s, "reference_ms": r, "speedup": d / s,
        "reference_speedup": d / r, "dense_weight_bytes": dense_bytes,
        "sparse_weight_bytes": cw.nbytes(), "bytes_ratio": cw.nbytes() / dense_bytes,
    }  # fmt: skip


def auto_backend(cw, x, sparse) -> str:
    if cw.runs_sparse(x, sparse[0].bias):
        return step.ops.dispatch.choose(cw.op, x.device, x, cw.values, cw.meta, None)[0]
    return "pruned dense (F.linear)"


def markdown(head, records):
    lines = common.markdown_intro(head, threads=True) + [common.markdown_timer(head), ""]
    lines += [
        "| weight N x K | dtype | N:M | layout | tokens | dense ms | frozen, auto ms "
        "(runs on) | vs dense | compressed via reference ms | vs dense | weight bytes vs dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['shape'][0]}x{r['shape'][1]} | {r['dtype']} | {r['nm']} | {r['layout']} | "
            f"{r['tokens']} | {r['dense_ms']:.3f} | {r['sparse_ms']:.3f} ({r['auto_backend']}) "
            f"| {r['speedup']:.2f}x | {r['reference_ms']:.3f} | {r['reference_speedup']:.2f}x "
            f"| {100 * r['bytes_ratio']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args, device = parse_args(argv)
    head = common.header("inference", device, args, common.local_now(), turns="layers")
    flush = common.l2_flush_buffer(device)
    planned = len(args.shapes) * len(args.dtypes) * len(args.ratios) * len(args.tokens)
    log = common.CaseLog(args.jsonl, head, planned)
    records = [
        r
        for n, k in args.shapes
        for dtype in args.dtypes
        for ratio in args.ratios
        for r in measure(args, device, n, k, dtype, ratio, flush, log)
    ]
    table = markdown(head, records)
    return common.publish(args.out, head, records, table)


if __name__ == "__main__":
    sys.exit(main())
