"""``step.load_sparse``: an exported checkpoint back into a model, in inference mode.

Everything is validated before the model is touched: the arguments, the header (format
version, N:M, layouts, the plan listing the same sparse layers as the entries), the
tensors against the model (missing, extra, shapes, dtypes, sparse layers), checksums
(truncated or corrupted files), and the sparse data itself (2:4 metadata codes, N:M
positions, exact N:M of dense weights). The model then changes inside
:func:`~step.nn.rollback.unchanged_on_failure`, on new tensors, so a failure while it
changes leaves it as it was. Only safetensors and JSON are read: no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..nn.checks import check_module, check_path
from ..nn.convert import convert, convertible
from ..nn.rollback import unchanged_on_failure
from ..nn.sparse_module import SparseWeightMixin
from ..nn.sparsity import NMSparsity
from ..ops.compressed_weight import CUTLASS_2TO4, CompressedWeight, from_file_tensors
from ..ops.dispatch import check_device
from ..ops.nm_compress import NMCompressed
from .format import (
    DTYPES,
    check_cutlass_meta,
    expected_compressed_shapes,
    ungrouped,
    weight_key,
)
from .reader import Checkpoint, read_checkpoint
from .semi_structured import (
    check_semi_structured_device,
    check_semi_structured_dtype,
    to_semi_structured,
)


def _build_model(ckpt: Checkpoint) -> nn.Module:
    """The Hugging Face model described by the checkpoint's ``config.json``."""
    config_file = ckpt.directory / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{ckpt.directory} has no config.json to build the model from (it is not the "
            "export of a Hugging Face model): pass model= (a fresh instance of the exported "
            "model's class); for a step-sparsity train run's export, "
            "step.train.runs.load_run(RUN_DIR) builds the model from the run's task"
        )
    try:
        import transformers
    except ImportError:
        raise ImportError("building a model from config.json needs transformers: pip install "
                          "transformers, or pass model=") from None  # fmt: skip
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        raise ValueError(f"{config_file}: unknown architectures {architectures!r}; pass model=")
    model = cls(transformers.AutoConfig.from_pretrained(ckpt.directory))
    return model.to(ckpt.sparse_dtype) if ckpt.sparse_dtype is not None else model


def _check_against_model(ckpt: Checkpoint, model: nn.Module) -> None:
    src = str(ckpt.file)
    expected = model.state_dict()
    stored_for = {}  # logical name -> (shape, dtype) as it will load
    for weight, spec in ckpt.sparse.items():
        stored_for[weight] = (tuple(spec["shape"]), DTYPES[spec["dtype"]])
    claimed = {n for w in ckpt.sparse for n in ckpt.stored_names(w).values()}
    for name, (shape, dtype) in ckpt.stored.items():
        if name not in claimed:
            stored_for[name] = (shape, dtype)
    logical = set(stored_for) | set(ckpt.aliases)
    missing, extra = sorted(set(expected) - logical), sorted(logical - set(expected))
    if missing:
        raise ValueError(
            f"{src}: missing tensors the model needs: {missing[:8]}"
            + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        )
    if extra:
        raise ValueError(
            f"{src}: tensors the model does not have: {extra[:8]}"
            + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
        )
    for alias, target in ckpt.aliases.items():
        if target not in stored_for:
            raise ValueError(f"{src}: alias {alias!r} points to {target!r}, which is not stored")
    for name, (shape, dtype) in stored_for.items():
        want = expected[name]
        if tuple(want.shape) != shape:
            raise ValueError(f"{src}: tensor {name!r} has shape {shape} but the model's is "
                             f"{tuple(want.shape)}")  # fmt: skip
        if want.dtype != dtype:
            raise ValueError(
                f"{src}: tensor {name!r} is {dtype} but the model's is {want.dtype}; convert "
                f"the model first (model.to({dtype}))"
            )
    modules = dict(model.named_modules())
    for weight, spec in ckpt.sparse.items():
        _check_layer(src, weight, spec, modules.get(weight.rpartition(".")[0]))
        if ckpt.format == "compressed":
            for role, (shape, dtype) in expected_compressed_shapes(spec).items():
                name = ckpt.stored_names(weight)[role]
                if ckpt.stored.get(name) != (shape, dtype):
                    raise ValueError(f"{src}: {name!r} should be {dtype} {shape}, found "
                                     f"{ckpt.stored.get(name, 'nothing')}")  # fmt: skip
    _check_model_sparse_layers(ckpt, modules)


def _check_layer(src: str, weight: str, spec: dict, layer: nn.Module | None) -> None:
    if layer is None or not (isinstance(layer, SparseWeightMixin) or convertible(layer)):
        kind = type(layer).__name__ if layer is not None else "nothing"
        raise ValueError(f"{src}: {weight} is sparse but the model has {kind} there, which "
                         "cannot be N:M sparse")  # fmt: skip
    if isinstance(layer, SparseWeightMixin):
        n, m = layer.sparsity.n, layer.sparsity.m
        if (n, m) != (spec["n"], spec["m"]):
            raise ValueError(f"{src}: {weight} is {spec['n']}:{spec['m']} in the file but "
                             f"{n}:{m} in the model")  # fmt: skip
    axis = _layer_axis(layer) % len(spec["shape"])
    if spec["axis"] % len(spec["shape"]) != axis:
        raise ValueError(f"{src}: {weight} is grouped along axis {spec['axis']} in the file "
                         f"but the layer groups along axis {axis}")  # fmt: skip


def _check_model_sparse_layers(ckpt: Checkpoint, modules: dict[str, nn.Module]) -> None:
    """A layer the model already has sparse is sparse in the file too: a dense weight
    loaded into it would run under a mask the file knows nothing of."""
    for name, layer in modules.items():
        key = weight_key(name)
        if isinstance(layer, SparseWeightMixin) and ckpt.aliases.get(key, key) not in ckpt.sparse:
            raise ValueError(
                f"{ckpt.file}: the model's layer {name!r} is {layer.sparsity.n}:"
                f"{layer.sparsity.m} sparse but the file holds {key!r} as a dense tensor; "
                "load into a model without that sparse layer (a fresh instance of its class)"
            )


def _layer_axis(layer: nn.Module) -> int:
    if isinstance(layer, SparseWeightMixin):
        return layer.AXIS
    return {nn.Linear: -1, nn.Conv2d: 1}.get(type(layer), 0)


def _read_sparse(ckpt: Checkpoint, weight: str, spec: dict):
    """(dense weight, kept mask, CompressedWeight or None) of one sparse weight, checked."""
    n, m, axis, shape = spec["n"], spec["m"], spec["axis"], tuple(spec["shape"])
    if ckpt.format == "dense":
        dense = ckpt.tensor(weight)
        groups = NMSparsity(n, m, axis=axis).grouped(dense).reshape(-1, m)
        worst = int((groups != 0).sum(1).max()) if groups.numel() else 0
        if worst > n:
            raise ValueError(f"{ckpt.file}: {weight} is not {n}:{m} sparse (a group holds "
                             f"{worst} nonzeros)")  # fmt: skip
        return dense, None, None
    names = ckpt.stored_names(weight)
    values = ckpt.tensor(names["values"])
    meta = ckpt.tensor(names["meta" if spec["layout"] == CUTLASS_2TO4 else "indices"])
    if spec["layout"] == CUTLASS_2TO4:
        check_cutlass_meta(meta, names["meta"], str(ckpt.file))
    else:
        try:
            NMCompressed(values, meta, n, m).validate()
        except ValueError as e:
            raise ValueError(f"{ckpt.file}: {names['indices']}: {e}") from None
    cw = from_file_tensors(spec["layout"], values, meta, n, m)
    kept = CompressedWeight(cw.layout, torch.ones_like(values), cw.meta, n, m).dense() != 0
    return ungrouped(cw.dense(), shape, axis), ungrouped(kept, shape, axis), cw


def verify_export(path: str | Path) -> int:
    """Read an export of either format and check every sparse weight's data as
    :func:`load_sparse` does (checksums, metadata codes, positions, exact N:M), without a
    model. Returns how many sparse weights were checked; raises ``ValueError``."""
    ckpt = read_checkpoint(check_path(path))
    for weight, spec in ckpt.sparse.items():
        _read_sparse(ckpt, weight, spec)
    return len(ckpt.sparse)


def load_sparse(
    path: str | Path,
    model: nn.Module | None = None,
    device: torch.device | str = "cpu",
    semi_structured: bool = False,
) -> nn.Module:
    """Load an export of :func:`step.export` into an inference-mode model.

    Args:
        path: the export directory (or its ``.safetensors`` file); dense or compressed.
        model: an instance of the exported model's class (dense or already sparsified,
            any weights) to fill in place; None builds the Hugging Face model described
            by the directory's ``config.json``. (The export of a ``step-sparsity train``
            run has none: :func:`step.train.runs.load_run` builds its task's model.)
        device: where the model ends up.
        semi_structured: on sm80+ CUDA GPUs, run 2:4 float16/bfloat16 linear layers as
            PyTorch ``SparseSemiStructuredTensor`` weights instead of step's kernels.

    Returns:
        The model with the exported layers N:M sparse and frozen, in ``eval()`` mode.
        Its parameters are new tensors read from the file (the old ones are never
        written to). A -0.0 in the file is read as +0.0 (exports never write one).

    Raises:
        TypeError: an argument of the wrong type (named). ValueError: a device that
            cannot be used, or anything in the file that does not fit the model
            (named). FileNotFoundError: no export at ``path``. All are raised before
            the model is changed; and should anything fail while it changes (a kernel
            that cannot run, memory), the model is put back as it was.
    """
    path, dev = _check_load_args(path, model, device, semi_structured)
    ckpt = read_checkpoint(path)
    if model is None:
        model = _build_model(ckpt)
    _check_against_model(ckpt, model)
    if semi_structured:
        _check_semi_structured_layers(ckpt, model)
    sparse = {w: _read_sparse(ckpt, w, spec) for w, spec in ckpt.sparse.items()}
    state = _new_state(ckpt, sparse, model, dev)
    # validated: from here on the model changes, all of it or (on failure) none of it
    with unchanged_on_failure(model):
        model.load_state_dict(state, strict=True, assign=True)
        convert(model, {w.rpartition(".")[0]: (s["n"], s["m"]) for w, s in ckpt.sparse.items()})
        model.to(dev)
        _freeze_loaded(model, sparse, dev)
        if semi_structured:
            to_semi_structured(model)
    return model.eval()


def _check_load_args(
    path: object, model: object, device: object, semi_structured: object
) -> tuple[Path, torch.device]:
    """:func:`load_sparse`'s arguments, checked before anything is read."""
    path = check_path(path)
    if model is not None:
        check_module(model)
    dev = check_device(device)
    if not isinstance(semi_structured, bool):
        raise TypeError(f"semi_structured must be True or False, got "
                        f"{type(semi_structured).__name__} {semi_structured!r}")  # fmt: skip
    if semi_structured:
        check_semi_structured_device(dev)
    return path, dev


def _check_semi_structured_layers(ckpt: Checkpoint, model: nn.Module) -> None:
    """Every layer that ``semi_structured=True`` converts (2:4, linear-like) is half."""
    modules = dict(model.named_modules())
    for weight, spec in ckpt.sparse.items():
        layer = modules[weight.rpartition(".")[0]]
        if (spec["n"], spec["m"]) == (2, 4) and not isinstance(layer, nn.Conv2d):
            check_semi_structured_dtype(weight, DTYPES[spec["dtype"]])


def _new_state(
    ckpt: Checkpoint, sparse: dict[str, tuple], model: nn.Module, device: torch.device
) -> dict[str, torch.Tensor]:
    """Every ``state_dict`` entry of ``model`` as a new tensor on ``device`` (a new
    ``nn.Parameter`` for a parameter, one per tied group of the model) to assign."""
    claimed = {n for w in ckpt.sparse for n in ckpt.stored_names(w).values()}
    read = {name: ckpt.tensor(name) for name in ckpt.stored if name not in claimed}
    read.update({w: dense for w, (dense, _, _) in sparse.items()})
    made: dict[int, torch.Tensor] = {}  # id of the model's tensor -> its new one
    used: set[int] = set()  # file tensors already given to a model tensor
    state = {}
    for key, current in model.state_dict(keep_vars=True).items():
        if id(current) not in made:
            t = read[ckpt.aliases.get(key, key)]
            t = t.clone() if id(t) in used else t  # tied in the file, not in the model
            used.add(id(t))
            t = t.to(device)
            if isinstance(current, nn.Parameter):
                t = nn.Parameter(t, requires_grad=current.requires_grad)
            made[id(current)] = t
        state[key] = made[id(current)]
    return state


def _freeze_loaded(model: nn.Module, sparse: dict[str, tuple], device: torch.device) -> None:
    """Fix each loaded layer's mask (the file's) and freeze it with the file's
    compressed weight where it has one."""
    modules = dict(model.named_modules())
    for weight, (_, kept, cw) in sparse.items():
        layer = modules[weight.rpartition(".")[0]]
        state = layer.sparsity
        if kept is not None:
            # the file's mask (exactly n ones per group, which nm_mask keeps) made by the
            # layer's own mask function, so its memory layout, and with it a Conv2d's
            # summation order, is that of the masked training layer: bit-identical outputs
            ones = kept.to(device=device, dtype=layer.weight.dtype)
            state.set_mode("fixed", state.compute_mask(ones))
        else:  # dense file: freeze takes the loaded weight's mask, not one the model had
            state.set_mode("dense")
        fits = cw is not None and layer.LINEAR_LIKE
        layer.freeze(compressed=_to_device(cw, device) if fits else None)


def _to_device(cw: CompressedWeight, device) -> CompressedWeight:
    return CompressedWeight(cw.layout, cw.values.to(device), cw.meta.to(device), cw.n, cw.m)
