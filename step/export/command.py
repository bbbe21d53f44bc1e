"""``step-sparsity export``: a saved sparse model in, dense and/or compressed exports out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from ..nn.plan import CONFIG_KEY
from ..nn.restore import restore_sparsity
from ..text_table import format_table
from .format import COMPRESSED_WEIGHTS, DENSE_SIDECAR, DTYPES
from .load import load_sparse
from .save import FORMATS, ExportReport, export


def load_source(src: Path) -> nn.Module:
    """A step export (either format), or a Hugging Face ``save_pretrained`` directory of a
    sparsified model (``config.json`` with ``step_sparsity``, e.g. a training checkpoint)."""
    if (src / COMPRESSED_WEIGHTS).is_file() or (src / DENSE_SIDECAR).is_file() or src.is_file():
        return load_sparse(src)
    config_file = src / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{src}: neither a step export nor a Hugging Face model directory")
    config = json.loads(config_file.read_text())
    if CONFIG_KEY not in config:
        raise ValueError(f"{config_file} has no {CONFIG_KEY!r} plan: this model was not "
                         "sparsified with step.sparsify")  # fmt: skip
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


def run(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got "
                         f"{args.format!r}")  # fmt: skip
    model = load_source(Path(args.src))
    if args.dtype:
        model = model.to(DTYPES[args.dtype])
    reports = []
    for fmt in formats:
        out = Path(args.out) / fmt if len(formats) > 1 else Path(args.out)
        reports.append(export(model, out, format=fmt))
    print(export_table(reports))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a sparse model (training checkpoint or export) to dense/compressed",
        description="Load a sparsified Hugging Face model directory (save_pretrained of a "
        "model converted with step.sparsify, e.g. a training checkpoint) or a step export, "
        "and write it in the chosen formats (docs/formats.md) with a size table.",
    )
    p.add_argument("src", help="model directory (or an export's .safetensors file)")
    p.add_argument("out", help="output directory (one subdirectory per format if several)")
    p.add_argument("--format", default="dense,compressed",
                   help="comma-separated: dense, compressed (default: both)")  # fmt: skip
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast the model first (e.g. float16)")
    p.set_defaults(func=run)
