"""Benchmark ``step.nm_mask(w, 2, 4)`` and ``step.to_sparse24(w)`` against a copy of ``w``.

For every shape, dtype and backend this times, in one run:

* ``nm_mask``     ``step.nm_mask(w, 2, 4)``
* ``to_sparse24`` ``step.to_sparse24(w)`` (mask + pack in the CUTLASS 2:4 format)
* ``copy``        ``torch.empty_like(w).copy_(w)``, the bandwidth baseline (once per
  shape and dtype: it does not depend on the backend)

Each op's minimal bytes (see :func:`op_bytes`) over its median time give an effective
GB/s; the report gives that and its ratio to the copy's GB/s. A memory-bound op running at
copy speed reaches a ratio of ~1.0. Target on GPU: ``to_sparse24`` of 8192x8192 fp16 >= 0.9.

For one shape and dtype, the copy and all ops take turns rep by rep (round-robin), after
``--warmup`` calls of each, so drift of the machine during the run hits all alike; the
statistic is the median over ``--reps``. CUDA: CUDA events around each call, L2 flushed
before every call by writing a 256 MiB buffer. CPU: ``time.perf_counter`` around each
call, caches not flushed, one thread unless ``--threads`` says otherwise (CPU numbers time
the reference implementation; they are no GPU prediction).

Before timing, every (op, backend) output is checked once: the mask has exactly 2 True per
group of 4 and equals the reference mask; ``from_sparse24(to_sparse24(w))`` equals
``where(mask, w, 0)``.

Usage::

    python benchmarks/bench_sparsify.py                       # GPU if present, else CPU
    python benchmarks/bench_sparsify.py --device cuda --shapes 8192x8192 --reps 200
    python benchmarks/bench_sparsify.py --device cpu --backends reference
    python benchmarks/bench_sparsify.py --quick --jsonl results.jsonl  # case by case

``--quick`` (what ``scripts/gpu_session`` runs): Llama-2-7B's projection weights
4096x4096, 11008x4096 and 4096x11008 in float16, 20 reps after 3 warm-up calls; options
given explicitly win.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import _common as common
import torch

import step
from step.ops.dispatch import BACKENDS
from step.ops.nm_mask import nm_mask_ref

CUDA_SHAPES = "8192x8192,4096x4096,4096x11008,11008x4096"
CPU_SHAPES = "1024x1024,2048x2048"
QUICK = {"shapes": "4096x4096,11008x4096,4096x11008", "dtypes": "float16"}
OPS = ("nm_mask", "to_sparse24")
DTYPES = ("float16", "bfloat16", "float32")
DISPATCH_NAMES = {"nm_mask": "nm_mask", "to_sparse24": "sparse24_compress"}
"""Benchmark op -> the ``step::`` op name the dispatcher knows it by."""


# ---------------------------------------------------------------- bytes model


def op_bytes(op: str, rows: int, k: int, elem_size: int) -> int:
    """Minimal bytes ``op`` must move for a ``[rows, k]`` input of ``elem_size`` bytes.

    * ``nm_mask``:     read w (``rows*k*e``) + write the bool mask (``rows*k``)
    * ``to_sparse24``: read w (``rows*k*e``) + write values (``rows*k/2*e``)
      + write meta (``rows*k/16`` int16 = ``rows*k/8``)
    * ``copy``:        read w + write w (``2*rows*k*e``)
    """
    n = rows * k
    if op == "nm_mask":
        return n * elem_size + n
    if op == "to_sparse24":
        return n * elem_size + (n // 2) * elem_size + (n // 16) * 2
    if op == "copy":
        return 2 * n * elem_size
    raise ValueError(f"unknown op {op!r}")


# ---------------------------------------------------------------- ops and checks


def run_op(op: str, w: torch.Tensor) -> object:
    """One call of benchmark op ``op`` on ``w``."""
    if op == "nm_mask":
        return step.nm_mask(w, 2, 4)
    if op == "to_sparse24":
        return step.to_sparse24(w)
    if op == "copy":
        return torch.empty_like(w).copy_(w)
    raise ValueError(f"unknown op {op!r}")


def check_output(op: str, w: torch.Tensor, out: object) -> None:
    """Raise if ``out`` (from :func:`run_op`) is not the correct result for ``w``."""
    expected_mask = nm_mask_ref(w, 2, 4)
    if op == "nm_mask":
        assert isinstance(out, torch.Tensor)
        if out.dtype != torch.bool or out.shape != w.shape:
            raise RuntimeError(f"nm_mask gave {out.dtype} {tuple(out.shape)}")
        if not bool((out.view(-1, 4).sum(-1) == 2).all()):
            raise RuntimeError("nm_mask: some group of 4 does not have exactly 2 True")
        if not torch.equal(out, expected_mask):
            raise RuntimeError("nm_mask differs from the reference mask")
    elif op == "to_sparse24":
        assert isinstance(out, tuple)
        values, meta = out
        dense = step.from_sparse24(values, meta)
        if not torch.equal(dense, torch.where(expected_mask, w, torch.zeros_like(w))):
            raise RuntimeError("from_sparse24(to_sparse24(w)) != where(nm_mask(w), w, 0)")


def skip_reason(op: str, backend: str, w: torch.Tensor) -> str | None:
    """Why ``op`` cannot (or should not) be timed with ``backend`` on ``w``; None if it can."""
    rows, k = w.shape
    if op == "to_sparse24":
        if w.dtype not in (torch.float16, torch.bfloat16):
            return "to_sparse24 takes float16/bfloat16 only"
        if rows % 32 or k % 64:
            return "to_sparse24 needs rows % 32 == 0 and K % 64 == 0"
    if k % 4:
        return "K % 4 != 0"
    return common.backend_skip_reason(backend, DISPATCH_NAMES[op], w.device)


def resolved_backend(op: str, backend: str, w: torch.Tensor) -> str:
    """The backend that actually runs ``op`` when ``backend`` is requested."""
    return common.resolve_backend(backend, DISPATCH_NAMES[op], w.device, w)


# ---------------------------------------------------------------- the run


def record(
    op: str, backend: str, resolved: str, w: torch.Tensor, times: list[float]
) -> dict[str, object]:
    """One measurement as a JSON-ready dict (ratio to copy filled in later)."""
    rows, k = w.shape
    nbytes = op_bytes(op, rows, k, w.element_size())
    return {
        "op": op,
        "rows": rows,
        "k": k,
        "dtype": str(w.dtype).removeprefix("torch."),
        "backend": backend,
        "resolved_backend": resolved,
        "bytes": nbytes,
        **common.timing_stats(times, nbytes),
    }


def call_with(op: str, backend: str, w: torch.Tensor) -> Callable[[], object]:
    """A no-argument function running ``op`` on ``w`` with ``backend`` forced
    (``"auto"``: automatic choice, whatever ``STEP_BACKEND`` says)."""

    def call() -> object:
        with common.backend_context(backend):
            return run_op(op, w)

    return call


def summary_rows(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """One shape and dtype's rows for a session summary: each op and backend against the
    copy of the same weight (skipped ones with the reason)."""
    copy = next(r for r in records if r["op"] == "copy")
    case = f"{copy['rows']}x{copy['k']} {copy['dtype']}"
    return [
        common.compare(case, f"{r['op']} ({common.backend_label(r)})", "copy", r, copy)
        for r in records
        if r["op"] != "copy"
    ]


def run(
    args: argparse.Namespace, device: torch.device, log: common.CaseLog | None = None
) -> list[dict[str, object]]:
    """All measurements for ``args``: per shape and dtype, the copy and every op/backend,
    timed interleaved; a record with ``skipped`` for each op/backend that cannot run.
    Each shape and dtype's records also go to ``log`` as they are measured."""
    flush = common.l2_flush_buffer(device)
    records: list[dict[str, object]] = []
    for rows, k in args.shapes:
        for dtype_name in args.dtypes:
            gen = torch.Generator(device=device).manual_seed(0)
            w = torch.randn(rows, k, generator=gen, device=device).to(getattr(torch, dtype_name))
            cases = [("copy", "torch", "torch")]
            skipped: list[dict[str, object]] = []
            for op in OPS:
                for backend in args.backends:
                    reason = skip_reason(op, backend, w)
                    if reason is not None:
                        skipped.append(
                            {
                                "op": op,
                                "rows": rows,
                                "k": k,
                                "dtype": dtype_name,
                                "backend": backend,
                                "skipped": reason,
                            }
                        )
                        continue
                    check_output(op, w, call_with(op, backend, w)())
                    cases.append((op, backend, resolved_backend(op, backend, w)))
            fns = [call_with(op, backend, w) for op, backend, _ in cases]
            times = common.time_interleaved(fns, args.reps, args.warmup, flush)
            measured = [record(*case, w, t) for case, t in zip(cases, times, strict=True)]
            copy_gbps = measured[0]["gbps"]
            for rec in measured:
                rec["ratio_to_copy"] = rec["gbps"] / copy_gbps
            records += measured + skipped
            if log is not None:
                log.case(measured + skipped, summary_rows(measured + skipped))
            del w
    return records


def markdown(head: dict, records: list[dict[str, object]]) -> str:
    """The header and a table of ``records`` in Markdown."""
    lines = [
        *common.markdown_intro(head),
        common.markdown_timer(head),
        "- GB/s = minimal bytes / median time (1 GB = 1e9 B); ratio = op GB/s / copy GB/s",
        "",
        "| shape | dtype | op | backend | ms | MB moved | GB/s | / copy |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        shape = f"{r['rows']}x{r['k']}"
        backend = common.backend_label(r)
        if "skipped" in r:
            skip = f"skipped: {r['skipped']}"
            lines.append(f"| {shape} | {r['dtype']} | {r['op']} | {backend} | {skip} | | | |")
            continue
        lines.append(
            f"| {shape} | {r['dtype']} | {r['op']} | {backend} | {r['median_ms']:.4g} "
            f"| {r['bytes'] / 1e6:.1f} | {r['gbps']:.4g} | {r['ratio_to_copy']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, torch.device]:
    """Parse the command line and fill device-dependent defaults; refuse CUDA without a GPU."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_device_arg(parser)
    parser.add_argument(
        "--shapes",
        type=common.parse_shapes,
        default=None,
        help=f"comma-separated ROWSxK (default cuda: {CUDA_SHAPES}; cpu: {CPU_SHAPES})",
    )
    parser.add_argument(
        "--dtypes",
        default=None,
        help="comma-separated torch dtypes (float16, bfloat16, float32; default "
        "float16,bfloat16, quick float16)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"shapes {QUICK['shapes']}, {QUICK['dtypes']}, 20 reps after 3 warm-up calls "
        "(options given explicitly win)",
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated from auto,"
        + ",".join(BACKENDS)
        + " (default cuda: auto,cuda,triton,reference; cpu: reference)",
    )
    common.add_run_args(parser)
    args = parser.parse_args(argv)

    common.resolve_device(parser, args)
    on_gpu = args.device == "cuda"
    if args.shapes is None:
        default_shapes = QUICK["shapes"] if args.quick else CUDA_SHAPES if on_gpu else CPU_SHAPES
        args.shapes = common.parse_shapes(default_shapes)
    dtypes = args.dtypes or (QUICK["dtypes"] if args.quick else "float16,bfloat16")
    args.dtypes = common.parse_choices(parser, "--dtypes", dtypes, DTYPES)
    default_backends = "auto,cuda,triton,reference" if on_gpu else "reference"
    args.backends = common.parse_backends(parser, args.backends or default_backends)
    common.fill_timing_defaults(args)
    common.check_run_args(parser, args)
    common.apply_threads(args)
    return args, torch.device(args.device)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON and Markdown to ``--out``."""
    args, device = parse_args(argv)
    head = common.header("sparsify", device, args, common.local_now(), turns="ops")
    log = common.CaseLog(args.jsonl, head, len(args.shapes) * len(args.dtypes))
    records = run(args, device, log)
    table = markdown(head, records)
    return common.publish(args.out, head, records, table)


if __name__ == "__main__":
    sys.exit(main())
