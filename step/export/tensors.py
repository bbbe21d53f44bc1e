"""What an export writes: the model's tensors, tied ones once, sparse weights pruned."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn.sparse_module import SparseWeightMixin
from .format import positive_zeros


@dataclass(frozen=True)
class SparseTensor:
    """A sparse weight to export: pruned to exact N:M (+0.0 at pruned entries, and at
    kept -0.0 entries: exports never hold -0.0)."""

    pruned: torch.Tensor
    mask: torch.Tensor
    n: int
    m: int
    axis: int


@dataclass(frozen=True)
class ModelTensors:
    dense: dict[str, torch.Tensor]
    sparse: dict[str, SparseTensor]
    aliases: dict[str, str]  # tied state_dict key -> the key it is stored under

    def dense_bytes(self) -> int:
        """Bytes of every stored tensor at full (dense) size."""
        tensors = [*self.dense.values(), *(s.pruned for s in self.sparse.values())]
        return sum(t.numel() * t.element_size() for t in tensors)


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            t.stride(), t.dtype)  # fmt: skip


@torch.no_grad()
def model_tensors(model: nn.Module) -> ModelTensors:
    """Split ``model.state_dict()`` into dense tensors, sparse weights and aliases.

    Tied tensors (same storage, shape and strides) are kept once, under the first key in
    ``state_dict`` order, as Hugging Face's ``save_pretrained`` does. Every -0.0 becomes
    +0.0 (:func:`~step.export.format.positive_zeros`); the model is not changed.
    """
    layers = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, SparseWeightMixin):
            layers[f"{name}.weight" if name else "weight"] = mod
    dense, sparse, aliases, first = {}, {}, {}, {}
    for key, t in model.state_dict().items():
        if t.is_meta:
            raise ValueError(f"{key} is on the meta device: load real weights before exporting")
        skey = _storage_key(t)
        if skey in first:
            aliases[key] = first[skey]
            continue
        first[skey] = key
        layer = layers.get(key)
        if layer is None:  # safetensors stores contiguous tensors only
            dense[key] = positive_zeros(t).contiguous().cpu()
            continue
        mask = layer.current_mask()
        s = layer.sparsity
        pruned = positive_zeros(
            torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device))
        )
        # the mask of a layer grouped along a dim other than the last (Conv2d) is a
        # movedim view, so ``pruned`` takes its strides: make it contiguous for safetensors
        sparse[key] = SparseTensor(
            pruned.contiguous().cpu(), mask.cpu(), s.n, s.m, s.axis % t.dim()
        )
    _check_sparse_not_tied_to_dense(layers, dense, aliases)
    return ModelTensors(dense, sparse, aliases)


def _check_sparse_not_tied_to_dense(
    layers: dict[str, SparseWeightMixin], dense: dict[str, torch.Tensor], aliases: dict[str, str]
) -> None:
    """A sparse layer's weight tied to a tensor stored first as a dense one (an embedding
    before its tied head) would be written unpruned and load as a dense layer."""
    for key in layers:
        if aliases.get(key) in dense:
            raise ValueError(
                f"{key} is N:M sparse but tied to {aliases[key]}, which comes first in "
                "state_dict and is not sparse, so the export cannot prune it; leave the "
                "layer dense (step.sparsify's default for weights tied to an embedding) or "
                "untie the weights"
            )
