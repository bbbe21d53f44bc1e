"""Training checkpoints without pickle: tensors in safetensors, the rest in JSON.

A run's state (model, optimizer, LR schedule, RNG, step) is a nested structure of dicts,
lists, numbers, strings and tensors; :func:`save` stores its tensors in
``state.safetensors`` under their path (``optimizer/state/3/exp_avg``) and everything
else in ``state.json``, where a tensor is ``{"__tensor__": path}`` and a dict whose keys
are not all strings is ``{"__items__": [[key, value], ...]}`` (optimizer states are keyed
by int). :func:`load` rebuilds the structure exactly, so a resumed run continues
bit-identically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS, TREE = "state.safetensors", "state.json"


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
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


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save(state: dict[str, Any], directory: Path) -> None:
    """Write ``state`` to ``directory`` (replacing a previous checkpoint atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    tmp_tensors, tmp_tree = directory / (TENSORS + ".tmp"), directory / (TREE + ".tmp")
    save_file(tensors, tmp_tensors)
    tmp_tree.write_text(json.dumps(tree))
    tmp_tensors.replace(directory / TENSORS)
    tmp_tree.replace(directory / TREE)


def load(directory: Path) -> dict[str, Any]:
    """The state :func:`save` wrote to ``directory``."""
    if not (directory / TREE).is_file() or not (directory / TENSORS).is_file():
        raise FileNotFoundError(f"{directory} holds no checkpoint ({TREE}, {TENSORS})")
    return _unflatten(json.loads((directory / TREE).read_text()), load_file(directory / TENSORS))
