"""``step-sparsity export``: a saved sparse model in, dense and/or compressed exports out.

The source is a step export, a Hugging Face ``save_pretrained`` directory of a sparsified
model, or, through ``run_source`` (which the CLI passes down from the train layer: this
layer knows no tasks), a ``step-sparsity train`` run directory or one of its parts.
Everything is checked and the model loaded before anything is written; an output
directory that already holds files is refused.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..nn.plan import CONFIG_KEY
from ..nn.restore import restore_sparsity
from ..text_table import format_table
from .format import COMPRESSED_WEIGHTS, DENSE_SIDECAR, DENSE_WEIGHTS, DTYPES
from .load import load_sparse
from .save import FORMATS, ExportReport, export

RunSource = Callable[[Path], nn.Module | None]
"""Reads a training run directory (or a part of one) into its frozen model; None when the
path is no run. :func:`step.train.runs.export_source` is the CLI's."""

SOURCES = (
    "a step-sparsity train run directory (config.json, checkpoint/, export/) or its "
    "checkpoint/, export/dense or export/compressed; a step export (sparse_model.safetensors, "
    f"or {DENSE_WEIGHTS} with {DENSE_SIDECAR}); or a Hugging Face save_pretrained directory "
    f"whose config.json holds a {CONFIG_KEY!r} plan"
)
"""What ``SRC`` may be, for the messages."""


def _is_export(src: Path) -> bool:
    return src.is_file() or (src / COMPRESSED_WEIGHTS).is_file() or (src / DENSE_SIDECAR).is_file()


def load_source(src: Path, run_source: RunSource | None = None) -> nn.Module:
    """The model in ``src`` (see :data:`SOURCES`), frozen, in ``eval()``, on the CPU.

    Raises ``FileNotFoundError`` (nothing there, or nothing this command reads) or
    ``ValueError`` (a file or directory that cannot be read as what it claims to be),
    naming the path and what was expected."""
    if run_source is not None:
        model = run_source(src)
        if model is not None:
            return model
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory; SRC is {SOURCES}")
    config_file = (src.parent if src.is_file() else src) / "config.json"
    if _is_export(src):
        if not config_file.is_file():
            raise ValueError(
                f"{src} is the export of a model that is not a Hugging Face model (no "
                "config.json next to it), so this command cannot build its model; if it is "
                "a step-sparsity train run's, pass the run directory. Otherwise convert it "
                "in Python: step.export(step.load_sparse(SRC, model=YourModel()), OUT, "
                "format=...)"
            )
        return load_sparse(src)
    if not config_file.is_file():
        raise FileNotFoundError(f"{src} holds nothing step-sparsity export reads; SRC is {SOURCES}")
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file} is not valid JSON ({e})") from None
    if CONFIG_KEY not in config:
        raise ValueError(f"{config_file} has no {CONFIG_KEY!r} plan: this model was not "
                         f"sparsified with step.sparsify; SRC is {SOURCES}")  # fmt: skip
    import transformers

    architectures = config.get("architectures") or [None]
    cls = getattr(transformers, architectures[0] or "", None)
    if cls is None:
        raise ValueError(f"{config_file}: unknown architectures {architectures!r}")
    return restore_sparsity(cls.from_pretrained(src)).eval()


def export_table(reports: list[ExportReport]) -> str:
    rows = [("weight", "N:M", "format", "layout", "dense bytes", "stored bytes")]
    for r in reports:
        for name, nm, layout, dense, stored in r.layers:
            rows.append((name, nm, r.format, layout, f"{dense:,}", f"{stored:,}"))
    return "\n".join([format_table(rows, right={4, 5}), *map(str, reports)])


def _check_targets(targets: list[Path]) -> None:
    """Every output directory is new or empty: an export never writes over files (a
    source inside ``OUT`` included)."""
    for target in targets:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(f"{target} already exists and is not an empty directory: "
                                  "step-sparsity export writes only into new or empty "
                                  "directories; choose another OUT or remove it")  # fmt: skip


def run(args: argparse.Namespace, run_source: RunSource | None = None) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got "
                         f"{args.format!r}")  # fmt: skip
    out = Path(args.out)
    targets = [out / fmt for fmt in formats] if len(formats) > 1 else [out]
    _check_targets(targets)
    model = load_source(Path(args.src), run_source)
    if args.dtype:
        model = model.to(DTYPES[args.dtype])
    reports = [
        export(model, target, format=fmt) for fmt, target in zip(formats, targets, strict=True)
    ]
    print(export_table(reports))
    return 0


def add_parser(sub, run_source: RunSource | None = None) -> None:
    """Add the ``export`` subcommand to the subparsers ``sub``; ``run_source`` reads
    training run directories (without it, ``SRC`` is an export or a Hugging Face
    directory only)."""
    p = sub.add_parser(
        "export",
        help="export a sparse model (a training run, an export, a sparsified Hugging Face "
        "model) to dense/compressed",
        description="Load a step-sparsity train run directory (or its checkpoint/, "
        "export/dense, export/compressed), a step export, or a sparsified Hugging Face "
        "model directory (save_pretrained of a model converted with step.sparsify), and "
        "write it in the chosen formats (docs/formats.md) with a size table.",
    )
    p.add_argument("src", help="run directory, model directory, or an export's .safetensors file")
    p.add_argument("out", help="output directory (one subdirectory per format if several)")
    p.add_argument("--format", default="dense,compressed",
                   help="comma-separated: dense, compressed (default: both)")  # fmt: skip
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast the model first (e.g. float16)")
    p.set_defaults(func=functools.partial(run, run_source=run_source))
