"""The ``step-sparsity`` command.

Subcommands: ``train`` (the main job: a task's model trained sparse and exported),
``info`` (versions, backends and why not, GPU), ``export`` (a saved sparse model to the
dense / compressed formats), ``bench`` (microbenchmarks against the baselines).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from . import __version__
from . import bench as bench_command
from .environment import dist_version, versions
from .export import command as export_command
from .ops.dispatch import backends
from .train import command as train_command


def collect_info() -> dict:
    """Versions, GPU and backend availability, as plain data."""
    cupy_dists = ("cupy-cuda13x", "cupy-cuda12x", "cupy")
    cupy = next((v for d in cupy_dists if (v := dist_version(d))), None)
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append({"index": i, "name": torch.cuda.get_device_name(i),
                         "capability": f"{major}.{minor}"})  # fmt: skip
    devices = ["cpu"] + [f"cuda:{g['index']}" for g in gpus]
    return {
        **versions(),
        "cupy": cupy,
        "gpus": gpus,
        "backends": {
            dev: {
                name: {"available": s.available, "reason": s.reason}
                for name, s in backends(dev).items()
            }  # fmt: skip
            for dev in devices
        },
    }


def _print_info(info: dict) -> None:
    for key in ("step-sparsity", "python", "torch", "torch_cuda", "triton", "cupy"):
        print(f"{key:>14}: {info[key] or 'not installed'}")
    if info["gpus"]:
        for g in info["gpus"]:
            print(
                f"{'gpu':>14}: cuda:{g['index']} {g['name']} (compute capability {g['capability']})"
            )
    else:
        print(f"{'gpu':>14}: none visible to PyTorch")
    for dev, table in info["backends"].items():
        print(f"backends on {dev}:")
        for name, s in table.items():
            mark = "yes" if s["available"] else "no "
            print(f"  {name:<10} {mark}  {s['reason']}")


def _cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="step-sparsity",
        description="N:M structured sparsity for PyTorch: STEP training, kernels, export.",
    )
    parser.add_argument("--version", action="version", version=f"step-sparsity {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, GPU, and which backends can run (and why not)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)
    train_command.add_parser(sub)
    export_command.add_parser(sub)
    bench_command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
