"""Frozen 2:4 linear layers as PyTorch ``SparseSemiStructuredTensor`` weights (sm80+)."""

from __future__ import annotations

import torch
from torch import nn

from ..nn.sparse_conv1d import SparseConv1D
from ..nn.sparse_linear import SparseLinear
from ..ops.checks import HALF_DTYPES


def check_semi_structured_device(device: torch.device | str) -> None:
    """``device`` is an sm80+ CUDA GPU (else ``ValueError``)."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        raise ValueError(f"semi_structured=True needs an sm80+ CUDA GPU, not {device}")


def check_semi_structured_dtype(name: str, dtype: torch.dtype) -> None:
    """A 2:4 linear layer's weight can be semi-structured: float16/bfloat16."""
    if dtype not in HALF_DTYPES:
        raise ValueError(f"{name}: semi-structured weights must be float16/bfloat16, got "
                         f"{dtype}; convert the model first (model.half())")  # fmt: skip


def to_semi_structured(model: nn.Module) -> nn.Module:
    """Replace every frozen 2:4 half-precision :class:`~step.nn.SparseLinear` /
    :class:`~step.nn.SparseConv1D` of ``model`` by an ``nn.Linear`` whose weight is
    ``torch.sparse.to_sparse_semi_structured`` of the pruned weight. Inference only."""
    layers = {
        name: mod for name, mod in model.named_modules()
        if isinstance(mod, SparseLinear | SparseConv1D) and mod.frozen
        and (mod.sparsity.n, mod.sparsity.m) == (2, 4)
    }  # fmt: skip
    for name, layer in layers.items():
        w = layer.sparsity.grouped(layer.weight.detach())  # [out, in]
        if w.device.type != "cuda" or torch.cuda.get_device_capability(w.device) < (8, 0):
            raise ValueError(f"{name}: semi_structured=True needs an sm80+ CUDA GPU; the "
                             f"weight is on {w.device}")  # fmt: skip
        check_semi_structured_dtype(name, w.dtype)
        linear = nn.Linear(w.shape[1], w.shape[0], device="meta")
        linear.weight = nn.Parameter(
            torch.sparse.to_sparse_semi_structured(w.contiguous()), requires_grad=False
        )
        linear.bias = layer.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, linear)
    return model.eval()
