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
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import step
from step.ops.dispatch import BACKENDS, backend_status, choose, implementations, use_backend
from step.ops.nm_mask import nm_mask_ref

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
CUDA_SHAPES = "8192x8192,4096x4096,4096x11008,11008x4096"
CPU_SHAPES = "1024x1024,2048x2048"
L2_FLUSH_BYTES = 256 * 2**20
OPS = ("nm_mask", "to_sparse24")
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


# ---------------------------------------------------------------- timing


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
    torch.cuda.synchronize()
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
    torch.cuda.synchronize()
    return [[start.elapsed_time(end) for start, end in fn_events] for fn_events in events]


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
    if backend == "auto":
        return None
    name = DISPATCH_NAMES[op]
    if backend not in implementations(name):
        return f"no {backend} implementation of step::{name}"
    if backend == "triton" and w.device.type == "cpu":
        return "Triton on CPU is the interpreter, a functional emulator: not timed"
    status = backend_status(backend, w.device)
    return None if status.available else status.reason


def resolved_backend(op: str, backend: str, w: torch.Tensor) -> str:
    """The backend that actually runs ``op`` when ``backend`` is requested."""
    if backend != "auto":
        return backend
    with use_backend(None):
        return choose(DISPATCH_NAMES[op], w.device, w)[0]


# ---------------------------------------------------------------- environment


def git_state() -> dict[str, object]:
    """The repository's HEAD commit and whether the work tree has changes (None if unknown)."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else ``platform.processor()``."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def header(device: torch.device, args: argparse.Namespace, now: datetime.datetime) -> dict:
    """Run metadata: device, versions, date, commit, timing method."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        extra = {
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda_runtime": torch.version.cuda,
            "timer": "CUDA events, L2 flushed before each call, ops round-robin",
            "l2_flush_bytes": L2_FLUSH_BYTES,
        }
    else:
        name = cpu_name()
        extra = {
            "torch_threads": torch.get_num_threads(),
            "timer": "time.perf_counter, ops round-robin",
        }
    return {
        "benchmark": "sparsify",
        "device_type": device.type,
        "device_name": name,
        "date": now.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "step": step.__version__,
        **git_state(),
        "platform": platform.platform(),
        "reps": args.reps,
        "warmup": args.warmup,
        "statistic": "median",
        "units": {"time": "ms", "bandwidth": "GB/s (1e9 B/s)", "bytes": "B"},
        **extra,
    }


# ---------------------------------------------------------------- the run


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"8192x8192,4096x11008"`` -> ``[(8192, 8192), (4096, 11008)]``."""
    shapes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", item)
        if not match:
            raise argparse.ArgumentTypeError(f"shape {item!r}: expected ROWSxK, e.g. 4096x11008")
        shapes.append((int(match.group(1)), int(match.group(2))))
    return shapes


def record(
    op: str, backend: str, resolved: str, w: torch.Tensor, times: list[float]
) -> dict[str, object]:
    """One measurement as a JSON-ready dict (ratio to copy filled in later)."""
    rows, k = w.shape
    nbytes = op_bytes(op, rows, k, w.element_size())
    median = statistics.median(times)
    return {
        "op": op,
        "rows": rows,
        "k": k,
        "dtype": str(w.dtype).removeprefix("torch."),
        "backend": backend,
        "resolved_backend": resolved,
        "bytes": nbytes,
        "median_ms": median,
        "min_ms": min(times),
        "max_ms": max(times),
        "reps": len(times),
        "gbps": nbytes / (median * 1e-3) / 1e9,
    }


def call_with(op: str, backend: str, w: torch.Tensor) -> Callable[[], object]:
    """A no-argument function running ``op`` on ``w`` with ``backend`` forced
    (``"auto"``: automatic choice, whatever ``STEP_BACKEND`` says)."""
    spec = None if backend in ("auto", "torch") else backend

    def call() -> object:
        with use_backend(spec):
            return run_op(op, w)

    return call


def run(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    """All measurements for ``args``: per shape and dtype, the copy and every op/backend,
    timed interleaved; a record with ``skipped`` for each op/backend that cannot run."""
    flush = None
    if device.type == "cuda":
        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
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
            times = time_interleaved(fns, args.reps, args.warmup, flush)
            measured = [record(*case, w, t) for case, t in zip(cases, times, strict=True)]
            copy_gbps = measured[0]["gbps"]
            for rec in measured:
                rec["ratio_to_copy"] = rec["gbps"] / copy_gbps
            records += measured + skipped
            del w
    return records


def markdown(head: dict, records: list[dict[str, object]]) -> str:
    """The header and a table of ``records`` in Markdown."""
    lines = [
        f"# sparsify benchmark: {head['device_name']}",
        "",
        f"- date: {head['date']}; commit: {head['commit']}"
        + (" (work tree modified)" if head["dirty"] else ""),
        f"- torch {head['torch']}, triton {head['triton']}, Python {head['python']}, "
        f"step {head['step']}",
        f"- timer: {head['timer']}; median of {head['reps']} reps after {head['warmup']} warm-up",
        "- GB/s = minimal bytes / median time (1 GB = 1e9 B); ratio = op GB/s / copy GB/s",
        "",
        "| shape | dtype | op | backend | ms | MB moved | GB/s | / copy |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        shape = f"{r['rows']}x{r['k']}"
        backend = str(r["backend"])
        if "skipped" in r:
            skip = f"skipped: {r['skipped']}"
            lines.append(f"| {shape} | {r['dtype']} | {r['op']} | {backend} | {skip} | | | |")
            continue
        if r["backend"] == "auto":
            backend = f"auto ({r['resolved_backend']})"
        lines.append(
            f"| {shape} | {r['dtype']} | {r['op']} | {backend} | {r['median_ms']:.4g} "
            f"| {r['bytes'] / 1e6:.1f} | {r['gbps']:.4g} | {r['ratio_to_copy']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def device_slug(head: dict) -> str:
    """``cpu``, or ``cuda-`` plus the GPU name in lowercase with dashes."""
    if head["device_type"] == "cpu":
        return "cpu"
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", str(head["device_name"]).lower()).strip("-")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, torch.device]:
    """Parse the command line and fill device-dependent defaults; refuse CUDA without a GPU."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="default: cuda if a GPU is visible, else cpu",
    )
    parser.add_argument(
        "--shapes",
        type=parse_shapes,
        default=None,
        help=f"comma-separated ROWSxK (default cuda: {CUDA_SHAPES}; cpu: {CPU_SHAPES})",
    )
    parser.add_argument(
        "--dtypes",
        default="float16,bfloat16",
        help="comma-separated torch dtypes (float16, bfloat16, float32)",
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated from auto,"
        + ",".join(BACKENDS)
        + " (default cuda: auto,cuda,triton,reference; cpu: reference)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--reps", type=int, default=None, help="timed reps (default cuda 100, cpu 20)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up calls (default cuda 10, cpu 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU only: torch.set_num_threads (default 1, for repeatable numbers; "
        "0 keeps PyTorch's default)",
    )
    args = parser.parse_args(argv)

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}, CUDA build: {torch.version.cuda}). "
            "Run on a GPU machine, or use --device cpu."
        )
    on_gpu = args.device == "cuda"
    if args.shapes is None:
        args.shapes = parse_shapes(CUDA_SHAPES if on_gpu else CPU_SHAPES)
    args.dtypes = [d.strip() for d in args.dtypes.split(",")]
    for name in args.dtypes:
        if name not in ("float16", "bfloat16", "float32"):
            parser.error(f"--dtypes: {name!r} is not one of float16, bfloat16, float32")
    default_backends = "auto,cuda,triton,reference" if on_gpu else "reference"
    args.backends = [b.strip() for b in (args.backends or default_backends).split(",")]
    for name in args.backends:
        if name != "auto" and name not in BACKENDS:
            parser.error(f"--backends: {name!r} is not one of auto, {', '.join(BACKENDS)}")
    args.reps = args.reps if args.reps is not None else (100 if on_gpu else 20)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 3)
    if args.reps < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--reps must be >= 1, --warmup >= 0 and --threads >= 0")
    if not on_gpu and args.threads:
        torch.set_num_threads(args.threads)
    return args, torch.device(args.device)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON and Markdown to ``--out``."""
    args, device = parse_args(argv)
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    head = header(device, args, now)
    records = run(args, device)
    table = markdown(head, records)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"sparsify-{device_slug(head)}-{now.date().isoformat()}"
    Path(f"{stem}.json").write_text(
        json.dumps({"header": head, "records": records}, indent=2) + "\n"
    )
    Path(f"{stem}.md").write_text(table)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
