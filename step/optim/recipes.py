"""The training recipes for N:M sparse weights, all on the same fused AdamW engine.

``STEP``   (``step_recipe.py``) precondition (dense AdamW) until AutoSwitch fires, then
           frozen v, masked (STE) forward and the SR-STE term. The recipe this package
           exists for.
``SRSTE``  masked STE forward and SR-STE term from step 1; v keeps updating.
``ASP``    dense AdamW until ``prune_at``, a one-shot magnitude prune to N:M, then the
           mask fixed (pruned weights stay zero, their gradients are masked).
``DenseAdamW``  AdamW with no masks: the dense baseline on the same layers.
``SSTE``   (``sste.py``) S-STE: soft-threshold forward with a fixed per-tensor scale,
           straight-through gradient, plain AdamW.

``make(recipe, params, **kwargs)`` builds one by name.
"""

from __future__ import annotations

import inspect

import torch

from ..nn.sparsity import sparsity_of
from .checks import check_choice, check_int, describe, is_int, is_real
from .nm_adamw import RECIPE_KEY, NMAdamW, _local
from .sste import SSTE
from .step_recipe import STEP


class SRSTE(NMAdamW):
    """SR-STE (Zhou et al., 2021) under AdamW: masked STE forward and the SR-STE term
    from step 1, v updating throughout."""

    RECIPE = "srste"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 srste_decay=2e-4) -> None:  # fmt: skip
        super().__init__(params, lr, betas, eps, weight_decay, srste_decay)
        self._set_modes("ste")

    def _update_sparse(self, group, params, t):
        self._adam(group, params, srste_decay=group["srste_decay"])


def _prune_step(prune_at: object, total_steps: object) -> int:
    """ASP's prune step from ``prune_at`` (a step, or a fraction of ``total_steps``)."""
    if total_steps is not None:
        total_steps = check_int(total_steps, "total_steps", low=1)
    if is_int(prune_at):
        return check_int(prune_at, "prune_at", low=1, hint=" (a step) or a float in (0, 1]")
    if not is_real(prune_at):
        raise TypeError(f"prune_at must be a step (int >= 1) or a fraction of total_steps "
                        f"(float in (0, 1]); got {describe(prune_at)}")  # fmt: skip
    if not 0.0 < prune_at <= 1.0:  # NaN fails this too
        raise ValueError(f"prune_at={prune_at!r} as a fraction of the run must lie in (0, 1]")
    if total_steps is None:
        raise ValueError(f"prune_at={prune_at!r} is a fraction of the run: pass total_steps=..., "
                         "or give prune_at as a step (int)")  # fmt: skip
    return max(1, round(prune_at * total_steps))


class ASP(NMAdamW):
    """ASP's from-scratch budget variant: dense AdamW, a one-shot magnitude prune to N:M
    at the end of step ``prune_at``, then training with the mask fixed.

    ``prune_at``: a step count (int) or a fraction of ``total_steps`` (float in (0, 1]).
    """

    RECIPE = "asp"
    _RECIPE_KEYS = (*NMAdamW._RECIPE_KEYS, "prune_at")
    _SPARSE_STATE = {"mask": "mask"}  # the mask fixed at the prune step

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 prune_at: int | float = 0.5, total_steps: int | None = None) -> None:  # fmt: skip
        prune_at = _prune_step(prune_at, total_steps)  # checked before the parameters
        super().__init__(params, lr, betas, eps, weight_decay, srste_decay=0.0)
        self.state["recipe"].update(prune_at=prune_at)
        self._set_modes("dense")

    @property
    def pruned(self) -> bool:
        return self.t >= self.state["recipe"]["prune_at"]

    @property
    def phase(self) -> str:
        """``"dense"`` until the prune step's end, then ``"pruned"`` (the mask fixed)."""
        return "pruned" if self.pruned else "dense"

    def _update_sparse(self, group, params, t):
        if t <= self.state["recipe"]["prune_at"]:  # dense, the prune step included
            self._adam(group, params)
            return
        masks = [sparsity_of(p).mask for p in params]
        grads = [
            torch.where(mask, _local(p.grad), 0) for p, mask in zip(params, masks, strict=True)
        ]
        self._adam(group, params, grads=grads)
        for p, mask in zip(params, masks, strict=True):
            _local(p).masked_fill_(~mask, 0)

    def _after_step(self, t, stats):
        if t == self.state["recipe"]["prune_at"]:
            self._prune()

    def _prune(self) -> None:
        for p in self.sparse_params():
            s = sparsity_of(p)
            mask = s.compute_mask(_local(p))
            _local(p).masked_fill_(~mask, 0)
            self.state[p]["mask"] = mask
            s.set_mode("fixed", mask)

    def _check_recipe_state(self, recipe, where):
        super()._check_recipe_state(recipe, where)
        check_int(recipe["prune_at"], f"{where}[{RECIPE_KEY!r}]['prune_at']", low=1)

    def _load_recipe_state(self, recipe):
        for p in self.sparse_params():
            mask = self.state[p].get("mask")
            sparsity_of(p).set_mode("dense" if mask is None else "fixed", mask)


class DenseAdamW(NMAdamW):
    """AdamW without masks on the same layers and engine: the dense baseline."""

    RECIPE = "dense"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, srste_decay=0.0)
        self._set_modes("dense")


RECIPES = {"step": STEP, "srste": SRSTE, "asp": ASP, "dense": DenseAdamW, "sste": SSTE}


def make(recipe: str, params, **kwargs) -> NMAdamW:
    """Build a recipe's optimizer by name: ``"step"``, ``"srste"``, ``"asp"``, ``"dense"``,
    ``"sste"`` (S-STE, :mod:`step.optim.sste`)."""
    cls = RECIPES[check_choice(recipe, "recipe", tuple(sorted(RECIPES)))]
    takes = [name for name in inspect.signature(cls).parameters if name != "params"]
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise TypeError(f"recipe {recipe!r} ({cls.__name__}) takes no argument {unknown}; "
                        f"it takes {takes}")  # fmt: skip
    return cls(params, **kwargs)
