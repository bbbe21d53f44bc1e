"""``step-sparsity train``: flags and config file in, runs and a summary out."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..ops.dispatch import check_device
from ..tasks import TASKS, MissingDataError
from ..text_table import format_table
from .checkpoint import TMP_SUFFIX, CheckpointError
from .config import ConfigError, TrainConfig, build, load_saved, read_file
from .loop import train
from .result import RunResult

_FLAGS = {  # flag -> (config field, type, help)
    "--task": ("task", str, f"one of {', '.join(TASKS)} (default shakespeare)"),
    "--recipe": ("recipe", str, "step (default), dense, srste, asp or sste (S-STE)"),
    "--nm": ("nm", str, "the N:M pattern (default 2:4)"),
    "--steps": ("steps", int, "optimizer steps (default: the task's)"),
    "--batch-size": ("batch_size", int, "default: the task's"),
    "--lr": ("lr", float, "peak learning rate (default: the task's); warm-up then cosine"),
    "--weight-decay": ("weight_decay", float, "AdamW decoupled weight decay (default 0)"),
    "--srste-decay": ("srste_decay", float, "SR-STE lambda_w (default 2e-4)"),
    "--variance-floor": (
        "variance_floor",
        float,
        "STEP's guard of its frozen v (default 1e-2; 0: off, docs/optim.md)",
    ),
    "--criterion": ("criterion", str, "AutoSwitch criterion: plateau (default) or paper"),
    "--threshold": ("threshold", float, "AutoSwitch threshold (needed by 'paper')"),
    "--t-min": ("t_min", float, "earliest switch: fraction of steps or a step (default 0.1)"),
    "--t-max": ("t_max", float, "latest switch: fraction of steps or a step (default 0.5)"),
    "--window": ("window", int, "AutoSwitch window (default max(5, steps/20))"),
    "--prune-at": ("prune_at", float, "ASP prune step: fraction or step (default 0.5)"),
    "--eval-every": ("eval_every", int, "validation and checkpoint interval (default steps/10)"),
    "--seed": ("seed", int, "seed of the model and the data order (default 0)"),
    "--device": ("device", str, "cpu (default) or cuda"),
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with a recipe, evaluate it, export the sparse checkpoint",
        description="Train a task's model sparsified to N:M with a recipe (STEP by default), "
        "evaluate it, and export it in both formats. Runs offline on a CPU by default.",
    )
    for flag, (_, kind, text) in _FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--config", type=Path, help="a TOML (or YAML) file of the same settings")
    p.add_argument(
        "--compare",
        help="comma-separated recipes to run on the same budget and "
        "seed, e.g. dense,asp,srste,step,sste",
    )
    p.add_argument("--out", type=Path, help="run directory (default runs/<task>-<recipe>-...)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _default_out(cfg: TrainConfig) -> Path:
    what = "compare" if cfg.compare else cfg.recipe
    return Path("runs") / f"{cfg.task}-{what}-{cfg.nm.replace(':', 'x')}-seed{cfg.seed}"


def _print_result(result: RunResult, metric: str) -> None:
    final = result.final
    print(f"{result.recipe}: validation {metric} {final[metric]:.4g} (loss {final['val_loss']:.4f})"
          + (f", switched at step {result.switch_step}" if result.switch_step else ""))  # fmt: skip
    if result.exports:
        c, d = result.exports["compressed"], result.exports["dense"]
        print(f"  N:M verified on all {result.exports['nm_verified']} sparse weights; exports: "
              f"dense {d['bytes']:,} B, compressed {c['bytes']:,} B "
              f"({100 * c['bytes'] / d['bytes']:.1f}%) in {result.run_dir / 'export'}")  # fmt: skip
    print(f"  run directory: {result.run_dir} ({result.seconds:.0f} s)")


def _compare_table(results: list[RunResult], metric: str) -> str:
    rows = [("recipe", f"val {metric}", "val loss", "switch step", "sparsity check", "time s")]
    for r in results:
        check = f"N:M ok ({r.exports['nm_verified']} weights)" if r.exports else "dense"
        rows.append((r.recipe, f"{r.final[metric]:.4g}", f"{r.final['val_loss']:.4f}",
                     str(r.switch_step or "-"), check, f"{r.seconds:.0f}"))  # fmt: skip
    return format_table(rows)


def _check_unused(out: Path) -> None:
    """``out`` may take a new run: absent, empty, or holding only the ``*.tmp`` leftovers
    of a run stopped while writing its ``config.json``."""
    if (out / "config.json").is_file():
        raise ConfigError(f"{out} already holds a run: continue it with --resume {out}, "
                          "or choose another --out")  # fmt: skip
    if not out.is_dir():
        return
    used = sorted(p.name for p in out.iterdir() if not p.name.endswith(TMP_SUFFIX))
    if used:
        raise ConfigError(f"{out} is not empty (it holds {', '.join(used[:5])}) and is not a "
                          "run directory: choose another --out")  # fmt: skip


def _check_resumable(run_dir: Path) -> None:
    """A run stopped before its ``config.json`` was committed cannot be resumed: say so."""
    if not (run_dir / "config.json").is_file() and (run_dir / "config.json.tmp").is_file():
        raise ConfigError(f"{run_dir} was stopped before its configuration was saved: start "
                          f"it again with the same settings and --out {run_dir}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        if args.resume is not None:
            given = [
                f
                for f, (key, _, _) in _FLAGS.items()
                if getattr(args, key) is not None and f != "--device"
            ]
            if given or args.config or args.compare or args.out:
                extra = ", ".join(given) or "--config/--compare/--out"
                raise ConfigError(f"--resume continues a run as it was configured; drop {extra}")
            _check_resumable(args.resume)
            cfg = load_saved(args.resume)
            if args.device:
                cfg = dataclasses.replace(cfg, device=args.device)
            runs = [(cfg, args.resume, True)]
        else:
            flags = {key: getattr(args, key) for key, _, _ in _FLAGS.values()}
            if args.compare:
                flags["compare"] = [r.strip() for r in args.compare.split(",") if r.strip()]
            cfg = build(read_file(args.config) if args.config else {}, flags).resolved()
            out = args.out or _default_out(cfg)
            _check_unused(out)
            recipes = cfg.compare or [cfg.recipe]
            runs = [(dataclasses.replace(cfg, recipe=r, compare=[]),
                     out / r if cfg.compare else out, False) for r in recipes]  # fmt: skip
        # the device may come from a config file or the resumed run: check it before any work
        check_device(cfg.device, "device (from --device, --config or the resumed run)")
        from ..tasks import task_class

        metric = task_class(cfg.task).metric
        results = []
        for run_cfg, run_dir, resume in runs:
            results.append(train(run_cfg, run_dir, resume=resume, quiet=args.quiet))
            _print_result(results[-1], metric)
        if len(results) > 1:
            print(_compare_table(results, metric))
    except (ConfigError, MissingDataError, CheckpointError) as e:
        raise SystemExit(f"step-sparsity train: {e}") from None
    return 0
