"""Training checkpoints without pickle, committed atomically and durably.

Format
    A checkpoint is one file, ``checkpoint/state.safetensors``. A run's state (model,
    optimizer, LR schedule, RNG, step) is a nested structure of dicts, lists, numbers,
    strings and tensors: its tensors are stored under their path
    (``optimizer/state/3/exp_avg``); the structure is JSON in the header's metadata
    (``tree``), where a tensor is ``{"__tensor__": path}`` and a dict whose keys are not
    all strings is ``{"__items__": [[key, value], ...]}`` (optimizer states are keyed by
    int). The metadata also holds the format (``step-sparsity.checkpoint``), the ``step``
    and ``sha256``, a digest of every tensor's name, dtype, shape and bytes. :func:`load`
    rebuilds the structure exactly, so a resumed run continues bit-identically.

Commit point
    :func:`save` writes ``state.safetensors.tmp``, fsyncs it, renames it over
    ``state.safetensors`` (``os.replace``, atomic) and fsyncs the directory. The rename is
    the one commit point: a run killed before it still has its previous checkpoint
    intact, one killed after it has the new one complete, and the directory fsync makes
    the rename itself survive a power loss. Being one file, a checkpoint cannot mix the
    parts of two saves (the two-file format of step-sparsity 0.1.0 could: its
    ``state.json`` and ``state.safetensors`` were renamed one after the other).

What :func:`load` refuses (:class:`CheckpointError`, naming the file and the fix)
    a file safetensors cannot parse; one without this format's metadata (e.g. the 0.1.0
    format); a format version it does not know; tensors whose digest differs from the
    recorded one (damaged or edited outside :func:`save`); a tree that names a tensor the
    file lacks. ``*.tmp`` files are leftovers of an interrupted save: ignored, and
    overwritten by the next save. :func:`exists` says whether a committed checkpoint is
    there at all (a run killed during its first save has none).

:func:`write_durably` is the same protocol for any small file (the run's
``config.json``, the rewritten ``metrics.jsonl``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize

FILE = "state.safetensors"
FORMAT_KEY, FORMAT = "step-sparsity.checkpoint", "2"
TMP_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (the message names the file and the fix)."""


# ---------------------------------------------------------------- durable writes


def _write_all(file: BinaryIO, data: bytes) -> None:
    """Write ``data`` to the open ``file`` (the one place bytes go to disk here)."""
    file.write(data)


def _fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable. Windows has no
    directory handles to fsync; NTFS journals renames itself."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: Path) -> None:
    """Create ``directory`` (and its parents) with its entry in the parent made durable."""
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    _fsync_directory(directory.parent)


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably: ``path.tmp`` written and
    fsynced, renamed over ``path`` (the commit point), the directory fsynced."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with tmp.open("wb") as file:
        _write_all(file, data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


# ---------------------------------------------------------------- the state tree


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON, its tensors moved into ``tensors`` under their path."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj:
            return {k: _flatten(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint {type(obj).__name__} at {path}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor], file: Path) -> Any:
    """Inverse of :func:`_flatten`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if obj["__tensor__"] not in tensors:
                raise CheckpointError(
                    f"{file}: its tree names tensor {obj['__tensor__']!r}, which the file "
                    "does not hold; the file is damaged: resume from another copy, or start "
                    "the run again"
                )
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: _unflatten(v, tensors, file) for k, v in obj["__items__"]}
        return {k: _unflatten(v, tensors, file) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, file) for v in obj]
    return obj


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ---------------------------------------------------------------- save and load


def save(state: dict[str, Any], directory: Path) -> None:
    """Commit ``state`` as the checkpoint in ``directory``, replacing the previous one
    atomically (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    metadata = {FORMAT_KEY: FORMAT, "step": str(state.get("step")), "tree": json.dumps(tree),
                "sha256": _digest(tensors)}  # fmt: skip
    make_directory(directory)
    write_durably(directory / FILE, serialize(tensors, metadata))


def exists(directory: Path) -> bool:
    """Whether ``directory`` holds a committed checkpoint (complete by construction)."""
    return (directory / FILE).is_file()


def _read(file: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of the safetensors ``file``."""
    try:
        with safe_open(file, "pt") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except SafetensorError as e:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({e}); it was not written by a "
            "completed save: resume from another copy, or start the run again"
        ) from None


def load(directory: Path) -> dict[str, Any]:
    """The state :func:`save` committed to ``directory``; refuses what the module
    docstring lists."""
    file = directory / FILE
    if not exists(directory):
        raise CheckpointError(
            f"{directory} holds no committed checkpoint ({FILE}); a run stopped during its "
            "first save has none: start it again"
        )
    metadata, tensors = _read(file)
    version = metadata.get(FORMAT_KEY)
    if version is None:
        raise CheckpointError(
            f"{file} has no {FORMAT_KEY!r} metadata: it is not a step-sparsity training "
            "checkpoint, or it is the two-file format of step-sparsity 0.1.0, whose "
            "parts cannot be verified to belong together; finish that run with 0.1.0, "
            "or start it again"
        )
    if version != FORMAT:
        raise CheckpointError(
            f"{file} is checkpoint format {version!r}; this step-sparsity reads format "
            f"{FORMAT!r}: resume it with the version that wrote it"
        )
    missing = [key for key in ("tree", "sha256") if key not in metadata]
    if missing:
        raise CheckpointError(
            f"{file} lacks the metadata {missing} of format {FORMAT!r}; the file was edited "
            "after it was committed: resume from another copy, or start the run again"
        )
    if _digest(tensors) != metadata["sha256"]:
        raise CheckpointError(
            f"{file}: its tensors do not match the digest recorded with them (the file was "
            "damaged or edited after it was committed): resume from another copy, or "
            "start the run again"
        )
    return _unflatten(json.loads(metadata["tree"]), tensors, file)
