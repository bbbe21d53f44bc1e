"""``step.export``: write a sparse model as a dense or compressed safetensors checkpoint."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from ..kernels.shapes import as_matrix
from ..nn.checks import check_module, check_path
from ..nn.freeze import warn_pending_masks
from ..nn.plan import sparsity_plan
from ..nn.sparse_module import SparseWeightMixin
from ..nn.sparsity import NMSparsity
from ..ops.compressed_weight import compress_weight
from .format import (
    COMPRESSED_FORMAT,
    COMPRESSED_WEIGHTS,
    DENSE_FORMAT,
    DENSE_SIDECAR,
    DENSE_WEIGHTS,
    FORMAT_VERSION,
    META_SUFFIX,
    dtype_name,
    sha256,
)
from .tensors import ModelTensors, model_tensors

FORMATS = ("dense", "compressed")


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote: files, bytes, and bytes at dense size."""

    path: Path
    format: str
    files: list[Path]
    tensor_bytes: int
    dense_bytes: int
    sparse_layers: int
    layers: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    """Per sparse weight: (name, N:M, layout, dense bytes, stored bytes)."""

    @property
    def ratio(self) -> float:
        return self.tensor_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def __str__(self) -> str:
        return (
            f"{self.format} export to {self.path}: {self.sparse_layers} sparse weights, "
            f"{self.tensor_bytes:,} tensor bytes = {100 * self.ratio:.1f}% of the dense "
            f"{self.dense_bytes:,}"
        )


def _save_config(model: nn.Module, path: Path) -> list[Path]:
    """``config.json`` (and ``generation_config.json``) of a Hugging Face model."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        return []
    config = copy.deepcopy(config)
    config.architectures = [type(model).__name__]  # as save_pretrained records it
    config.save_pretrained(path)
    files = [path / "config.json"]
    generation = getattr(model, "generation_config", None)
    if generation is not None and hasattr(generation, "save_pretrained"):
        generation.save_pretrained(path)
        files.append(path / "generation_config.json")
    return files


def _save_safetensors(tensors: dict, file: Path, metadata: dict[str, str]) -> None:
    """``safetensors`` ``save_file`` with the permissions any other file gets: the mode
    an existing file has, or the umask's for a new one (``save_file`` makes a new
    file 0600, whatever the umask, so a server running as another user could not read
    it)."""
    fd = os.open(file, os.O_WRONLY | os.O_CREAT, 0o666)  # the mode open() would give
    try:
        mode = os.fstat(fd).st_mode & 0o7777
    finally:
        os.close(fd)
    save_file(tensors, file, metadata=metadata)
    os.chmod(file, mode)


def _export_dense(tensors: ModelTensors, plan: dict, path: Path) -> tuple[list[Path], int, list]:
    out = dict(tensors.dense)
    out.update({k: s.pruned for k, s in tensors.sparse.items()})
    _save_safetensors(out, path / DENSE_WEIGHTS, metadata={"format": "pt"})
    sidecar = {
        "format": DENSE_FORMAT,
        "format_version": FORMAT_VERSION,
        "plan": plan,
        "tensors": {k: {"n": s.n, "m": s.m, "axis": s.axis} for k, s in tensors.sparse.items()},
        "aliases": tensors.aliases,
        "sha256": {k: sha256(t) for k, t in out.items()},
    }
    (path / DENSE_SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    rows = [(k, f"{s.n}:{s.m}", "dense", s.pruned.nbytes, s.pruned.nbytes)
            for k, s in tensors.sparse.items()]  # fmt: skip
    return [path / DENSE_WEIGHTS, path / DENSE_SIDECAR], tensors.dense_bytes(), rows


def _export_compressed(tensors: ModelTensors, plan: dict, path: Path):
    out = dict(tensors.dense)
    header, rows = {}, []
    for key, s in tensors.sparse.items():
        rows_k = as_matrix(NMSparsity(s.n, s.m, axis=s.axis).grouped(s.pruned))
        cw = compress_weight(rows_k, s.n, s.m)
        values, meta = cw.file_tensors()
        out[f"{key}.values"], out[f"{key}.{META_SUFFIX[cw.layout]}"] = values, meta
        header[key] = {"n": s.n, "m": s.m, "shape": list(s.pruned.shape),
                       "dtype": dtype_name(s.pruned.dtype), "layout": cw.layout,
                       "axis": s.axis}  # fmt: skip
        rows.append((key, f"{s.n}:{s.m}", cw.layout, s.pruned.nbytes, values.nbytes + meta.nbytes))
    metadata = {
        "format": COMPRESSED_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "sparse": json.dumps(header),
        "aliases": json.dumps(tensors.aliases),
        "plan": json.dumps(plan),
        "sha256": json.dumps({k: sha256(t) for k, t in out.items()}),
    }
    _save_safetensors(out, path / COMPRESSED_WEIGHTS, metadata=metadata)
    stored = sum(t.numel() * t.element_size() for t in out.values())
    return [path / COMPRESSED_WEIGHTS], stored, rows


def export(model: nn.Module, path: str | Path, format: str = "dense") -> ExportReport:
    """Write ``model`` (with its sparse layers) to the directory ``path``.

    Args:
        model: a model with sparse layers (:func:`step.sparsify`); each sparse weight is
            pruned with the mask in force (the learned mask, ASP's fixed mask, or the
            magnitude mask of a layer still in dense mode). The model is not changed.
        path: a directory, created if needed.
        format: ``"dense"``: ``model.safetensors`` that plain ``load_state_dict`` or a
            Hugging Face ``from_pretrained`` of the original class loads, pruned entries
            +0.0, plus ``sparsity.json``. ``"compressed"``: values + metadata per
            sparse weight (about 56% of the dense bytes for float16 2:4) in
            ``sparse_model.safetensors``. Formats: docs/formats.md.

    No file holds -0.0: pruned entries, kept weights that are -0.0 and any -0.0 of the
    dense tensors (biases, norms) are written as +0.0. The files' permissions follow the
    umask (or an existing file's mode), as for the JSON files.

    Warns (``UserWarning``, naming the fix), as :func:`step.freeze` does, when an
    optimizer over the model has not learned the masks yet: a ``step.optim.STEP`` still in
    its precondition phase, whose layers are then written pruned by weight magnitude.

    Returns:
        :class:`ExportReport` (print it for a one-line summary).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``path`` not a path or ``format``
            not a string.
        ValueError: unknown ``format``, no sparse layers, a sparse weight tied to a
            dense one stored first, or weights on the meta device; nothing is written.
    """
    check_module(model)
    path = check_path(path)
    if not isinstance(format, str):
        raise TypeError(f"format must be a str, one of {FORMATS}, got {type(format).__name__}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    tensors = model_tensors(model)
    if not tensors.sparse:
        raise ValueError("the model has no sparse layers: call step.sparsify first")
    warn_pending_masks([m for m in model.modules() if isinstance(m, SparseWeightMixin)],
                       "step.export")  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    plan = sparsity_plan(model)
    writer = _export_dense if format == "dense" else _export_compressed
    files, stored, rows = writer(tensors, plan, path)
    files += _save_config(model, path)
    return ExportReport(path, format, files, stored, tensors.dense_bytes(), len(rows), rows)
