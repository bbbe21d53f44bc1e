"""``step-sparsity bench``: the kernel and optimizer microbenchmarks suited to the device.

Each case is checked once, then timed against its baseline in the same run (round-robin,
median of ``--reps`` after ``--warmup``): ``nm_mask`` and ``to_sparse24`` against a copy
of the weight, a frozen 2:4 linear layer against ``nn.Linear``, one STEP step in each
phase against ``AdamW``. Prints a table of the ratios (baseline ms / ours ms) and writes
JSON: to ``--out`` (an existing file only with ``--overwrite``), or by default to
``bench-<device>[-quick]-<date>.json``, suffixed ``-2``, ``-3``... where that exists (and
said so): no result is ever overwritten silently. The standalone runners in
``benchmarks/`` measure more (backends, dtypes, shapes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from .._version import __version__
from ..environment import device_name, dist_version
from ..text_table import format_table
from . import cases

CASES = ("mask", "compress", "linear", "optimizer")
SIZES = {
    "cuda": {"weight": [8192, 8192], "linear": [4096, 4096], "tokens": [1, 16, 2048],
             "model": [4096, 11008], "reps": 100, "warmup": 10},
    "cpu": {"weight": [1024, 1024], "linear": [1024, 1024], "tokens": [1, 16, 256],
            "model": [512, 2048], "reps": 20, "warmup": 3},
    "quick": {"weight": [128, 128], "linear": [128, 128], "tokens": [1, 16],
              "model": [64, 256], "reps": 3, "warmup": 1},
}  # fmt: skip
"""Per device (or ``--quick``): the ``[rows, K]`` weight of mask/compress, the linear
layer's ``[N, K]`` and token counts, the transformer block's ``[d, ff]`` of the optimizer
(q, k, v, o ``[d, d]``, up ``[ff, d]``, down ``[d, ff]``), and the default reps/warm-up."""


def _device(text: str) -> str:
    if text not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from cpu, cuda)")
    if text == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"no CUDA GPU is visible to PyTorch (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); run on a GPU machine or use --device cpu"
        )
    return text


def _cases(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in CASES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose a comma-separated subset of "
                                         f"{','.join(CASES)}")  # fmt: skip
    return [c for c in CASES if c in names]


def _count(minimum: int):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}")
        return int(text)

    return parse


def add_parser(sub) -> None:
    """Add the ``bench`` subcommand to the subparsers ``sub``."""
    p = sub.add_parser(
        "bench",
        help="microbenchmarks of masks, compression, frozen layers and STEP vs baselines",
        description="Check, then time against its baseline in the same run: nm_mask and "
        "to_sparse24 vs a copy, a frozen 2:4 linear layer vs nn.Linear, one STEP step per "
        "phase vs AdamW. Prints the ratios (baseline ms / ours ms) and writes JSON.",
    )
    p.add_argument(
        "--device",
        type=_device,
        metavar="{cpu,cuda}",
        default=None,
        help="cpu or cuda (default: cuda if a GPU is visible, else cpu)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few reps (CI, tests)")
    p.add_argument("--reps", type=_count(1), help="timed reps (default cuda 100, cpu 20, quick 3)")
    p.add_argument("--warmup", type=_count(0), help="warm-up calls (default 10, 3, quick 1)")
    p.add_argument(
        "--threads",
        type=_count(0),
        default=1,
        help="CPU only: torch.set_num_threads (default 1; 0 keeps PyTorch's)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="JSON file (default ./bench-<device>[-quick]-<date>.json, with -2, -3... "
        "added if it exists); an existing --out is refused unless --overwrite",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--cases",
        type=_cases,
        metavar="LIST",
        default=list(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    p.set_defaults(func=run)


def header(device, reps: int, warmup: int, quick: bool, sizes: dict, names: list, now) -> dict:
    timer = ("CUDA events, L2 flushed before each call" if device.type == "cuda"
             else "time.perf_counter")  # fmt: skip
    return {
        "device_type": device.type,
        "device_name": device_name(device),
        "date": now.isoformat(timespec="seconds"),
        "step": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": dist_version("triton"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "reps": reps,
        "warmup": warmup,
        "quick": quick,
        "timer": f"{timer}; ours and baseline round-robin; median",
        "ratio": "baseline ms / ours ms (> 1: ours took less time)",
        "sizes": sizes,
        "cases": names,
    }


def default_out(device_type: str, quick: bool, date: datetime.date) -> Path:
    """``bench-<device>-<date>.json``, or ``bench-<device>-quick-<date>.json`` for
    ``--quick``: a smoke test never takes a full run's name."""
    kind = f"{device_type}-quick" if quick else device_type
    return Path(f"bench-{kind}-{date.isoformat()}.json")


def _check_out(out: Path | None, overwrite: bool) -> None:
    """An explicit ``--out`` that exists is refused before any timing, unless
    ``--overwrite``."""
    if out is not None and out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: step-sparsity bench does not overwrite "
                              "a result; choose another --out, or pass --overwrite")  # fmt: skip


def _write_new(base: Path, text: str) -> Path:
    """Write ``text`` to ``base``, or, if that exists, to the first free ``<stem>-2``,
    ``<stem>-3``... beside it (created exclusively: never over a file). Returns the path."""
    base.parent.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:
        path = base if suffix == 1 else base.with_name(f"{base.stem}-{suffix}{base.suffix}")
        try:
            with path.open("x") as file:
                file.write(text)
            return path
        except FileExistsError:
            suffix += 1


def write_result(out: Path | None, overwrite: bool, default: Path, text: str) -> str:
    """Write the JSON ``text`` to ``out`` (``--out``) or a free name from ``default``;
    the line that says where it went (and why not to ``default``, if not there)."""
    if out is None:
        path = _write_new(default, text)
        moved = f" ({default} already exists)" if path != default else ""
        return f"wrote {path}{moved}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w" if overwrite else "x") as file:  # "x": appeared while timing
        file.write(text)
    return f"wrote {out}"


def _ms(value: float) -> str:
    return f"{value:.4g}" if value >= 0.01 else f"{value:.2e}"


def results_table(records: list[dict]) -> str:
    rows = [("case", "shape / params", "dtype", "ours", "ours ms", "baseline", "baseline ms",
             "ratio", "GB/s ours", "GB/s base")]  # fmt: skip
    for r in records:
        gbps = [f"{r[k]:.3g}" if r[k] is not None else "-" for k in ("gbps", "baseline_gbps")]
        rows.append((r["case"], r["shape"], r["dtype"], r["ours"], _ms(r["ours_ms"]),
                     r["baseline"], _ms(r["baseline_ms"]), f"{r['ratio']:.3g}", *gbps))  # fmt: skip
    return format_table(rows, right={4, 6, 7, 8, 9})  # numbers right-aligned


def _progress(names: list[str], device: torch.device) -> None:
    print(f"bench: checking and timing {', '.join(names)} on {device.type}", file=sys.stderr,
          flush=True)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    _check_out(args.out, args.overwrite)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = SIZES["quick" if args.quick else device.type]
    sizes = {k: v for k, v in preset.items() if k not in ("reps", "warmup")}
    reps = preset["reps"] if args.reps is None else args.reps
    warmup = preset["warmup"] if args.warmup is None else args.warmup
    threads = torch.get_num_threads()
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    try:
        now = datetime.datetime.now().astimezone()
        head = header(device, reps, warmup, args.quick, sizes, args.cases, now)
        timer = cases.Timer(device, reps, warmup)
        records: list[dict] = []
        kernels = [c for c in args.cases if c in ("mask", "compress")]
        if kernels:
            _progress(kernels, device)
            records += cases.kernels(timer, *sizes["weight"], kernels)
        if "linear" in args.cases:
            _progress(["linear"], device)
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            records += cases.linear(timer, *sizes["linear"], tuple(sizes["tokens"]), dtype)
        if "optimizer" in args.cases:
            _progress(["optimizer"], device)
            records += cases.optimizer(timer, *sizes["model"])
    finally:
        torch.set_num_threads(threads)
    print(f"step-sparsity bench on {head['device_name']} ({device.type}), "
          f"{head['date']}, torch {head['torch']}, step {head['step']}")  # fmt: skip
    threads_note = f", {head['threads']} CPU thread(s)" if device.type == "cpu" else ""
    print(f"median of {reps} reps after {warmup} warm-up, {head['timer']}{threads_note}")
    print(results_table(records))
    print("ratio = baseline ms / ours ms (> 1: ours took less time); GB/s = minimal bytes / "
          "median time")  # fmt: skip
    text = json.dumps({"header": head, "records": records}, indent=2) + "\n"
    print(write_result(args.out, args.overwrite, default_out(device.type, args.quick, now.date()),
                       text))  # fmt: skip
    return 0
