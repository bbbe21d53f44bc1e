"""S-STE (Hu, Zhu, Chen, "S-STE: Continuous Pruning Function for Efficient 2:4 Sparse
Pre-training", NeurIPS 2024, arXiv 2409.09099) on the fused AdamW engine.

The forward pass uses ``beta * S(W)`` instead of ``W * mask``: ``S`` is the soft threshold
(:func:`step.ops.nm_soft_threshold`: in each group of ``m``, the ``n`` largest ``|w|``
shrunk by the largest pruned magnitude, the rest zero), continuous in ``W``; ``beta`` is
one scale per weight tensor, the least-squares fit of ``W`` by ``beta * S(W)``, computed
once from the weights the optimizer is built over and then fixed. The gradient of the
forward weight reaches ``W`` unchanged (straight through, not scaled by ``beta``), and
``W`` gets plain AdamW: no SR-STE decay term.
"""

from __future__ import annotations

import math

import torch

from ..nn.sparsity import sparsity_of
from .checks import describe
from .nm_adamw import RECIPE_KEY, NMAdamW, _local


def _fitted_scales(params: list[torch.Tensor]) -> list[float]:
    """``beta = <W, S(W)> / <S(W), S(W)>`` of each parameter (1.0 where ``S(W)`` is zero),
    the sums in float64; a sharded parameter's (FSDP2) over all its shards."""
    if not params:
        return []
    rows = []
    for p in params:
        w = _local(p).detach()
        soft, _ = sparsity_of(p).soft_threshold(w)
        soft = soft.double()
        rows.append(torch.stack([(w.double() * soft).sum(), soft.square().sum()]).cpu())
    sums = torch.stack(rows)
    sharded = [i for i, p in enumerate(params) if hasattr(p, "to_local")]
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        device = _local(params[sharded[0]]).device
        part = sums[sharded].to(device)
        torch.distributed.all_reduce(part)
        sums[sharded] = part.cpu()
    scales = []
    for p, (dot, norm) in zip(params, sums.tolist(), strict=True):
        beta = dot / norm if norm > 0 else 1.0
        if not math.isfinite(beta) or beta <= 0:
            raise ValueError(
                f"a sparse weight of shape {tuple(p.shape)} gives the S-STE scale beta = "
                f"{dot!r} / {norm!r}: it holds NaN or inf. Initialise the weights with "
                "finite values before building SSTE"
            )
        scales.append(beta)
    return scales


class SSTE(NMAdamW):
    """S-STE under AdamW: sparse layers in mode ``"soft"`` (forward ``beta * S(W)``,
    straight-through gradient to ``W``) from step 1, plain AdamW on the dense ``W``.

    ``beta`` is fitted per sparse weight when the optimizer is constructed, from the
    weights as they are then (build it after loading pretrained weights), and fixed for
    the rest of the run; it is kept in the state_dict, so a resumed run continues with
    the same scales. :attr:`scales` lists them.

    Args:
        params: parameters or param groups; sparse ones are recognised from sparse layers
            (``step.nn.SparseLinear``...); with ``nm=(n, m)`` groups, a parameter gets its
            :class:`~step.nn.NMSparsity` here and its forward mode only matters to a
            sparse layer.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled decay, on ``W``).
    """

    RECIPE = "sste"
    _RECIPE_KEYS = (*NMAdamW._RECIPE_KEYS, "beta")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, srste_decay=0.0)
        scales = _fitted_scales(self.sparse_params())
        self.state[RECIPE_KEY]["beta"] = scales
        self._set_scales(scales)

    @property
    def scales(self) -> list[float]:
        """The fixed scale ``beta`` of each sparse parameter, in :meth:`sparse_params`
        order."""
        return list(self.state[RECIPE_KEY]["beta"])

    def _set_scales(self, scales: list[float]) -> None:
        for p, beta in zip(self.sparse_params(), scales, strict=True):
            state = sparsity_of(p)
            state.beta = float(beta)
            state.set_mode("soft")

    def _check_recipe_state(self, recipe, where):
        super()._check_recipe_state(recipe, where)
        where = f"{where}[{RECIPE_KEY!r}]['beta']"
        scales, count = recipe["beta"], len(self.sparse_params())
        if not isinstance(scales, list | tuple) or len(scales) != count:
            raise ValueError(
                f"{where} must list one scale per sparse parameter ({count}); got "
                f"{describe(scales)[:200]}: the state of another model"
            )
        for i, beta in enumerate(scales):
            if (
                isinstance(beta, bool)
                or not isinstance(beta, int | float)
                or not (math.isfinite(beta) and beta > 0)
            ):
                raise ValueError(f"{where}[{i}] must be a finite float > 0; got "
                                 f"{describe(beta)[:200]}")  # fmt: skip

    def _load_recipe_state(self, recipe):
        recipe["beta"] = [float(beta) for beta in recipe["beta"]]
        self._set_scales(recipe["beta"])
