"""The ``step-sparsity`` command.

Subcommands: ``train`` (the main job: a task's model trained sparse and exported),
``info`` (versions, backends and why not, GPU), ``export`` (a saved sparse model to the
dense / compressed formats), ``bench`` (microbenchmarks against the baselines).

Errors: a user error (a bad argument or file, a missing device, a backend that cannot
run: :func:`is_user_error`) is reported once, here, as one line on stderr with exit
status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__
from . import bench as bench_command
from .environment import dist_version, versions
from .export import command as export_command
from .ops.dispatch import BackendError, backends, check_device
from .train import command as train_command
from .train.runs import export_source


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
    export_command.add_parser(sub, run_source=export_source)  # run directories: train layer
    bench_command.add_parser(sub)
    return parser


ENVIRONMENT_ERRORS = (OSError, BackendError)
"""The user's or the machine's wherever raised: missing files, permissions, devices and
backends that cannot run."""

CHECK_ERRORS = (ValueError,)
"""The user's when step's own checks raise them (a bad value, a bad file); raised
anywhere else they are bugs, and keep their traceback. ``TypeError`` is not here: the
command's arguments are strings that argparse and the checks turn into values, so a
``TypeError`` can only come from a bug."""

_PACKAGE = Path(__file__).resolve().parent


def _raised_by_step(error: BaseException) -> bool:
    """Whether the innermost frame that raised ``error`` is code of this package."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def is_user_error(error: BaseException) -> bool:
    """Whether the command should report ``error`` in one line rather than a traceback."""
    if isinstance(error, ENVIRONMENT_ERRORS):
        return True
    return isinstance(error, CHECK_ERRORS) and _raised_by_step(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a user error (:func:`is_user_error`) is one line on stderr and
    exit status 1, any other exception keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:  # before any work starts
            check_device(args.device, "--device")
        return args.func(args)
    except (*ENVIRONMENT_ERRORS, *CHECK_ERRORS) as e:
        if not is_user_error(e):
            raise
        print(f"step-sparsity {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
