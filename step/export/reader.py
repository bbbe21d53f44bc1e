"""Reading an exported checkpoint: locate its files, parse and check its header.

Nothing here touches a model; :mod:`step.export.load` validates against the model and
fills it only after everything read here passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..nn.plan import check_plan
from ..ops.compressed_weight import LAYOUTS
from .format import (
    COMPRESSED_FORMAT,
    COMPRESSED_WEIGHTS,
    DENSE_FORMAT,
    DENSE_SIDECAR,
    DENSE_WEIGHTS,
    DTYPES,
    META_SUFFIX,
    check_plan_matches,
    check_sparse_entry,
    check_version,
    json_field,
    positive_zeros,
    sha256,
)

_SAFETENSORS_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


@dataclass
class Checkpoint:
    """An exported checkpoint as read from disk (headers only until :meth:`tensor`)."""

    directory: Path
    file: Path
    format: str  # "dense" or "compressed"
    sparse: dict[str, dict[str, Any]]  # weight name -> header entry
    aliases: dict[str, str]
    plan: dict[str, Any]
    digests: dict[str, str]
    stored: dict[str, tuple[tuple[int, ...], torch.dtype]]  # file tensor -> shape, dtype

    @property
    def sparse_dtype(self) -> torch.dtype | None:
        """The dtype of the sparse weights when they all share one (what a model built to
        load this checkpoint is cast to first), else None."""
        dtypes = {spec["dtype"] for spec in self.sparse.values()}
        return DTYPES[dtypes.pop()] if len(dtypes) == 1 else None

    def stored_names(self, weight: str) -> dict[str, str]:
        """File tensor names of a sparse weight by role (``values``, ``meta``/``indices``)."""
        if self.format == "dense":
            return {"dense": weight}
        suffix = META_SUFFIX[self.sparse[weight]["layout"]]
        return {"values": f"{weight}.values", suffix: f"{weight}.{suffix}"}

    def tensor(self, name: str) -> torch.Tensor:
        """Read one stored tensor, check it against its recorded digest, and give it with
        -0.0 read as +0.0 (:func:`~step.export.format.positive_zeros`)."""
        try:
            with safe_open(self.file, "pt") as f:
                t = f.get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"{self.file}: cannot read tensor {name!r} ({e}); the file is "
                             "truncated or corrupted") from None  # fmt: skip
        if name not in self.digests:
            raise ValueError(f"{self.file}: no checksum recorded for tensor {name!r}")
        if sha256(t) != self.digests[name]:
            raise ValueError(f"{self.file}: tensor {name!r} does not match its checksum: the "
                             "file is corrupted")  # fmt: skip
        return positive_zeros(t)  # files written before exports normalised -0.0 hold some


def _read_safetensors_header(file: Path) -> tuple[dict[str, str], dict]:
    try:
        with safe_open(file, "pt") as f:
            metadata = f.metadata() or {}
            stored = {}
            for name in f.keys():
                s = f.get_slice(name)
                stored[name] = (tuple(s.get_shape()), _SAFETENSORS_DTYPES.get(s.get_dtype()))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{file}: cannot read it as safetensors ({e}); the file is truncated, "
                         "corrupted or not a safetensors file") from None  # fmt: skip
    return metadata, stored


def _locate(path: Path) -> tuple[Path, Path, str]:
    if path.is_file():
        directory = path.parent
        kind = "compressed" if path.name == COMPRESSED_WEIGHTS else "dense"
        return directory, path, kind
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint directory or file")
    if (path / COMPRESSED_WEIGHTS).is_file():
        return path, path / COMPRESSED_WEIGHTS, "compressed"
    if (path / DENSE_WEIGHTS).is_file() and (path / DENSE_SIDECAR).is_file():
        return path, path / DENSE_WEIGHTS, "dense"
    raise FileNotFoundError(
        f"{path} holds no step-sparsity export: expected {COMPRESSED_WEIGHTS}, or "
        f"{DENSE_WEIGHTS} with {DENSE_SIDECAR} (write one with step.export)"
    )


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Locate and parse an export (a directory, or its weights file)."""
    directory, file, kind = _locate(Path(path))
    metadata, stored = _read_safetensors_header(file)
    if kind == "compressed":
        source = str(file)
        check_version(metadata, COMPRESSED_FORMAT, source)
        keys = ("sparse", "aliases", "plan", "sha256")
        fields = {k: json_field(metadata, k, source) for k in keys}
    else:
        source = str(directory / DENSE_SIDECAR)
        try:
            sidecar = json.loads((directory / DENSE_SIDECAR).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{source}: unreadable ({e})") from None
        check_version(sidecar, DENSE_FORMAT, source)
        fields = {k: sidecar.get(k) for k in ("aliases", "plan")}
        fields["sha256"] = sidecar.get("sha256")
        fields["sparse"] = sidecar.get("tensors")
        if isinstance(fields["sparse"], dict):  # complete the entries from the file
            for name, spec in fields["sparse"].items():
                if name not in stored:
                    raise ValueError(f"{file}: missing tensor {name!r} (listed in {source})")
                if isinstance(spec, dict):
                    shape, dtype = stored[name]
                    spec.update(shape=list(shape), layout="dense",
                                dtype=str(dtype).removeprefix("torch."))  # fmt: skip
    for key in ("sparse", "aliases", "sha256"):
        if not isinstance(fields[key], dict):
            raise ValueError(f"{source}: {key!r} must be a mapping, got {fields[key]!r}")
    for key in ("aliases", "sha256"):
        if not all(isinstance(v, str) for v in fields[key].values()):
            raise ValueError(f"{source}: {key!r} must map names to strings")
    layouts = ("dense",) if kind == "dense" else LAYOUTS
    sparse = {
        name: check_sparse_entry(name, spec, source, layouts)
        for name, spec in fields["sparse"].items()
    }
    check_plan(fields["plan"], source)
    entries = "'tensors'" if kind == "dense" else "the header's 'sparse' entry"
    check_plan_matches(sparse, fields["plan"], fields["aliases"], source, entries)
    return Checkpoint(directory, file, kind, sparse, fields["aliases"], fields["plan"],
                      fields["sha256"], stored)  # fmt: skip
