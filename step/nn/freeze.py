"""``step.freeze``: fix every sparse layer's mask and prune its weight for inference."""

from __future__ import annotations

from torch import nn

from .checks import check_module
from .plan import record_plan
from .sparse_module import SparseWeightMixin


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every sparse layer of ``model`` in place and return it.

    Each weight is pruned to exact N:M (+0.0 at pruned entries) with its current mask
    (the learned mask in STEP's mask-learning phase, ASP's fixed mask, else the magnitude
    mask of the weight), the mask becomes fixed, and linear-like layers keep a compressed
    copy: in ``eval()`` mode they run on it (:func:`step.sparse24_linear` for 2:4 half
    precision, :func:`step.nm_linear` otherwise). ``state_dict`` keeps the dense layout.
    """
    check_module(model)
    layers = [mod for mod in model.modules() if isinstance(mod, SparseWeightMixin)]
    if not layers:
        raise ValueError("the model has no sparse layers to freeze: call step.sparsify first")
    for layer in layers:
        layer.freeze()
    record_plan(model)
    return model
