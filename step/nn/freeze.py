"""``step.freeze``: fix every sparse layer's mask and prune its weight for inference."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from .checks import check_module
from .plan import record_plan
from .sparse_module import SparseWeightMixin
from .sparsity import sparsity_of


def mark_pending_masks(param: torch.Tensor, why: Callable[[], str | None]) -> None:
    """Record that an optimizer is to learn ``param``'s mask later.

    ``why()`` returns, while the mask is not learned yet, a sentence saying so and how to
    fix it; None once it is. :func:`freeze` asks it for each layer still in mode
    ``"dense"`` and warns with the answer, instead of pruning by magnitude in silence. A
    recipe above this layer (``step.optim.STEP``) calls this, so nn never imports optim.
    """
    sparsity = sparsity_of(param)
    if sparsity is None:
        raise ValueError(f"a parameter of shape {tuple(param.shape)} has no N:M sparsity to mark")
    sparsity.pending_masks = why


def warn_pending_masks(layers: list[SparseWeightMixin], caller: str) -> None:
    """One ``UserWarning`` if an optimizer has still to learn some of ``layers``' masks.

    ``caller`` (``"step.freeze"``, ``"step.export"``) starts the message; the warning
    points at the line that called ``caller``, which must call this directly.
    """
    reasons = []
    for layer in layers:
        why = layer.sparsity.pending_masks
        if layer.sparsity.mode == "dense" and why is not None:
            reason = why()
            if reason is not None:
                reasons.append(reason)
    if reasons:
        warnings.warn(
            f"{caller}: {len(reasons)} of {len(layers)} sparse layers are pruned by weight "
            f"magnitude: {reasons[0]}",
            UserWarning,
            stacklevel=3,
        )


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every sparse layer of ``model`` in place and return it.

    Each weight is pruned to exact N:M (+0.0 at pruned entries) with its current mask
    (the learned mask in STEP's mask-learning phase, ASP's fixed mask, else the magnitude
    mask of the weight), the mask becomes fixed, and linear-like layers keep a compressed
    copy: in ``eval()`` mode they run on it (:func:`step.sparse24_linear` for 2:4 half
    precision, :func:`step.nm_linear` otherwise). ``state_dict`` keeps the dense layout.

    Warns (``UserWarning``, naming the fix) when an optimizer over the model has not
    learned the masks yet: a ``step.optim.STEP`` still in its precondition phase.
    """
    check_module(model)
    layers = [mod for mod in model.modules() if isinstance(mod, SparseWeightMixin)]
    if not layers:
        raise ValueError("the model has no sparse layers to freeze: call step.sparsify first")
    warn_pending_masks(layers, "step.freeze")
    for layer in layers:
        layer.freeze()
    record_plan(model)
    return model
