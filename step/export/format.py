"""The exported checkpoint formats (docs/formats.md): names, headers, validation.

Dense (``format="dense"``), a Hugging Face-style directory:
    ``model.safetensors``  every tensor; sparse weights pruned (+0.0) to exact N:M
    ``sparsity.json``      ``{"format", "format_version", "plan", "tensors": {weight:
                           {"n", "m", "axis"}}, "sha256": {tensor: hex}}``
    ``config.json``        Hugging Face models only (``save_pretrained``)

Compressed (``format="compressed"``):
    ``sparse_model.safetensors``  dense tensors under their names; each sparse weight
    ``W`` as ``W.values`` + ``W.meta`` (layout ``cutlass_2to4``) or ``W.values`` +
    ``W.indices`` (layout ``nm_positions``), compressed along its reduction axis viewed
    as 2-D ``[rows, K]``. The safetensors header's ``__metadata__`` holds ``format``,
    ``format_version`` and JSON strings ``sparse`` (``{W: {"n", "m", "shape", "dtype",
    "layout", "axis"}}``), ``aliases`` (tied tensors stored once), ``plan``, ``sha256``.
    ``config.json`` as above.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ..ops.compressed_weight import CUTLASS_2TO4, LAYOUTS, NM_POSITIONS

FORMAT_VERSION = 1
DENSE_FORMAT = "step-sparsity-dense"
COMPRESSED_FORMAT = "step-sparsity-compressed"
DENSE_WEIGHTS = "model.safetensors"
DENSE_SIDECAR = "sparsity.json"
COMPRESSED_WEIGHTS = "sparse_model.safetensors"
META_SUFFIX = {CUTLASS_2TO4: "meta", NM_POSITIONS: "indices"}
LEGAL_NIBBLES = (0x4, 0x8, 0xC, 0x9, 0xD, 0xE)
"""The six 2:4 metadata codes ``i0 | i1 << 2`` with ``i0 < i1``."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sha256(t: torch.Tensor) -> str:
    """Digest of a tensor's bytes (detects corrupted data on load)."""
    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def positive_zeros(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every -0.0 made +0.0, all other values (NaN payloads included) bit for
    bit; ``t`` itself when it holds no -0.0 (or is not floating point). Exports never
    write -0.0, and :func:`step.load_sparse` reads one as +0.0 (docs/formats.md)."""
    if not t.is_floating_point():
        return t
    negative_zero = (t == 0) & torch.signbit(t)
    if not bool(negative_zero.any()):
        return t
    return t.masked_fill(negative_zero, 0.0)


def ungrouped(w2d: torch.Tensor, shape: tuple[int, ...], axis: int) -> torch.Tensor:
    """Inverse of ``as_matrix(NMSparsity.grouped(w))`` for a weight of ``shape``: the
    ``[rows, K]`` rows back in ``shape``, the grouping ``axis`` back in place."""
    moved_shape = list(shape)
    moved_shape.append(moved_shape.pop(axis))
    return w2d.reshape(moved_shape).movedim(-1, axis).contiguous()


def check_version(header: dict[str, Any], expected_format: str, source: str) -> None:
    fmt, version = header.get("format"), header.get("format_version")
    if fmt != expected_format:
        raise ValueError(f"{source}: format {fmt!r} is not {expected_format!r}")
    if str(version) != str(FORMAT_VERSION):
        raise ValueError(
            f"{source}: format_version {version!r} is unknown (this step-sparsity reads "
            f"version {FORMAT_VERSION}); upgrade step-sparsity to load it"
        )


def json_field(header: dict[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(header[key])
    except KeyError:
        raise ValueError(f"{source}: the header has no {key!r} entry") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: the header's {key!r} entry is not valid JSON: {e}") from None


def check_sparse_entry(
    name: str, spec: object, source: str, layouts: tuple[str, ...] = LAYOUTS
) -> dict[str, Any]:
    """One ``sparse`` header entry is complete and legal."""
    keys = {"n", "m", "shape", "dtype", "layout", "axis"}
    if not isinstance(spec, dict) or not keys <= set(spec):
        raise ValueError(f"{source}: sparse entry {name!r} needs {sorted(keys)}, got {spec!r}")
    n, m = spec["n"], spec["m"]
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m <= 32):
        raise ValueError(f"{source}: {name} has invalid N:M {n!r}:{m!r}")
    if spec["layout"] not in layouts:
        raise ValueError(f"{source}: {name} has unknown layout {spec['layout']!r}; "
                         f"known: {layouts}")  # fmt: skip
    if spec["layout"] == CUTLASS_2TO4 and (n, m) != (2, 4):
        raise ValueError(f"{source}: {name} is in layout cutlass_2to4 but N:M is {n}:{m}")
    if spec["dtype"] not in DTYPES:
        raise ValueError(f"{source}: {name} has unsupported dtype {spec['dtype']!r}")
    shape = spec["shape"]
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ValueError(f"{source}: {name} has invalid shape {shape!r}")
    axis = spec["axis"]
    if not (isinstance(axis, int) and -len(shape) <= axis < len(shape)) or shape[axis] % m:
        raise ValueError(f"{source}: {name}: axis {axis!r} of shape {shape} does not split "
                         f"into groups of m={m}")  # fmt: skip
    return spec


def weight_key(layer: str) -> str:
    """The ``state_dict`` key of a layer's weight (``"weight"`` for the root module)."""
    return f"{layer}.weight" if layer else "weight"


def check_plan_matches(
    sparse: dict[str, dict[str, Any]],
    plan: dict[str, Any],
    aliases: dict[str, str],
    source: str,
    entries: str,
) -> None:
    """The plan's sparse layers and the file's sparse weight entries (``entries`` names
    where they are listed) are the same layers with the same N:M. A layer in one but
    not the other would load as a dense layer holding N:M data (or the reverse)."""
    listed = {}
    for layer, spec in plan["layers"].items():
        key = weight_key(layer)
        entry = sparse.get(aliases.get(key, key))
        if entry is None:
            raise ValueError(
                f"{source}: layer {layer!r} is {spec['n']}:{spec['m']} sparse in the plan but "
                f"its weight {key!r} has no entry in {entries}, so it would load as a dense "
                "layer; the file is incomplete or was edited: export the model again"
            )
        if (entry["n"], entry["m"]) != (spec["n"], spec["m"]):
            raise ValueError(f"{source}: layer {layer!r} is {spec['n']}:{spec['m']} in the plan "
                             f"but {entry['n']}:{entry['m']} in {entries}")  # fmt: skip
        listed[aliases.get(key, key)] = layer
    unplanned = sorted(set(sparse) - set(listed))
    if unplanned:
        raise ValueError(
            f"{source}: {entries} lists sparse weight(s) {unplanned[:8]} whose layers are not "
            "in the plan; the file is incomplete or was edited: export the model again"
        )


def expected_compressed_shapes(spec: dict[str, Any]) -> dict[str, tuple[tuple, torch.dtype]]:
    """Shapes and dtypes of the stored tensors of one sparse weight, by suffix."""
    shape, axis, n, m = spec["shape"], spec["axis"], spec["n"], spec["m"]
    k = shape[axis]
    rows = 1
    for d in shape:
        rows *= d
    rows //= k
    dtype = DTYPES[spec["dtype"]]
    if spec["layout"] == CUTLASS_2TO4:
        return {"values": ((rows, k // 2), dtype), "meta": ((rows, k // 16), torch.int16)}
    return {"values": ((rows, k // m * n), dtype), "indices": ((rows, k // m * n), torch.uint8)}


def check_cutlass_meta(meta: torch.Tensor, name: str, source: str) -> None:
    """Every 4-bit code of a 2:4 metadata tensor is one of the six legal ones."""
    words = meta.to(torch.int32) & 0xFFFF
    legal = torch.zeros(16, dtype=torch.bool)
    legal[list(LEGAL_NIBBLES)] = True
    for shift in (0, 4, 8, 12):
        nibbles = (words >> shift) & 0xF
        bad = ~legal[nibbles.long()]
        if bad.any():
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{source}: {name} holds invalid 2:4 metadata: code {int(nibbles[where]):#x} "
                f"at word {where} (bits {shift}..{shift + 3}); legal codes are "
                f"{', '.join(hex(c) for c in LEGAL_NIBBLES)}"
            )
