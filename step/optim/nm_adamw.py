"""``NMAdamW``: AdamW over dense and N:M-sparse parameters, the engine of every recipe.

Dense parameters (biases, norms, embeddings, excluded layers) always get plain AdamW.
Sparse parameters are those with ``nm=(n, m)`` in their param group or an
:class:`~step.nn.NMSparsity` attached by a sparse layer; a recipe subclass decides how
each step treats them (:meth:`NMAdamW._update_sparse`). All updates go through the fused
multi-tensor op ``step::adam_update``: one call per param group and kind, not per tensor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch

from ..nn.sparsity import attach_sparsity, sparsity_of
from ..ops.adam_update import adam_update
from ..ops.checks import check_nm
from ..ops.dispatch import choose

RECIPE_KEY = "recipe"
"""Key of the recipe's own state (step count, phase...) in ``optimizer.state``."""


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def check_hyperparameters(lr, betas, eps, weight_decay, srste_decay) -> None:
    if not isinstance(lr, int | float) or lr < 0:
        raise ValueError(f"lr must be a float >= 0, got {lr!r}")
    if not isinstance(eps, int | float) or eps < 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two floats in [0, 1), got {betas!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if srste_decay < 0:
        raise ValueError(f"srste_decay must be >= 0, got {srste_decay!r}")


class NMAdamW(torch.optim.Optimizer):
    """AdamW with N:M-aware handling of sparse weights; see the recipes in
    :mod:`step.optim.recipes`. Param groups may carry ``nm=(n, m)``."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        srste_decay: float = 2e-4,
    ) -> None:
        check_hyperparameters(lr, betas, eps, weight_decay, srste_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        srste_decay=srste_decay, nm=None)  # fmt: skip
        super().__init__(params, defaults)
        for gi, group in enumerate(self.param_groups):
            check_hyperparameters(group["lr"], group["betas"], group["eps"],
                                  group["weight_decay"], group["srste_decay"])  # fmt: skip
            for pi, p in enumerate(group["params"]):
                self._register_sparse(gi, pi, group, p)
        self.state[RECIPE_KEY] = {"t": 0}

    # ------------------------------------------------------------ sparse parameters

    def _register_sparse(self, gi: int, pi: int, group: dict, p: torch.Tensor) -> None:
        attached = sparsity_of(p)
        nm = group["nm"]
        if nm is None:
            if attached is None:
                return
            nm = (attached.n, attached.m)
        n, m = check_nm(*nm)
        if attached is None and (p.dim() < 1 or p.shape[-1] % m):
            raise ValueError(
                f"param_groups[{gi}]['params'][{pi}] has shape {tuple(p.shape)}: N:M {n}:{m} "
                f"groups run along the last (reduction) dim, which is not divisible by m={m}. "
                "Leave this parameter out of the sparse group, or choose another m"
            )
        attach_sparsity(p, n, m)

    def sparse_params(self) -> list[torch.Tensor]:
        """All sparse parameters, in param-group order."""
        return [p for g in self.param_groups for p in g["params"] if sparsity_of(p) is not None]

    def _set_modes(self, mode: str) -> None:
        for p in self.sparse_params():
            sparsity_of(p).set_mode(mode)

    # ------------------------------------------------------------ the step

    @property
    def t(self) -> int:
        """Optimizer steps taken (skipped GradScaler steps do not count)."""
        return self.state[RECIPE_KEY]["t"]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for group in self.param_groups:
            dense, sparse = [], []
            for p in group["params"]:
                if p.grad is not None:
                    (sparse if sparsity_of(p) is not None else dense).append(p)
            work.append((group, dense, sparse))
        self._check_step([p for _, _, sparse in work for p in sparse])  # before anything moves
        recipe = self.state[RECIPE_KEY]
        recipe["t"] += 1
        stats = []
        for group, dense, sparse in work:
            if dense:
                self._adam(group, dense)
            if sparse:
                result = self._update_sparse(group, sparse, recipe["t"])
                if result is not None:
                    stats.append(result)
        for _, _, sparse in work:
            for p in sparse:
                sparsity_of(p).forget_mask()
        self._after_step(recipe["t"], stats)
        return loss

    def _check_step(self, sparse: list[torch.Tensor]) -> None:
        """Refuse a step the recipe cannot take, before any parameter is updated."""

    def _update_sparse(self, group: dict, params: list[torch.Tensor], t: int):
        """Update the sparse ``params`` of ``group`` at step ``t``; may return the summed
        v statistics ``[sum |dv|, sum v, count]``. Default: plain AdamW."""
        self._adam(group, params)
        return None

    def _after_step(self, t: int, stats: list[torch.Tensor]) -> None:
        """Called once per step after all updates, with what :meth:`_update_sparse` gave."""

    def _adam(
        self,
        group: dict,
        params: list[torch.Tensor],
        *,
        update_v: bool = True,
        srste_decay: float = 0.0,
        want_z: bool = False,
        grads: list[torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """Fused AdamW step of ``params``; with ``want_z`` returns ``[sum|dv|, sum v, count]``.

        Tensors are bucketed by what one fused call must share (step counts, N:M). The
        SR-STE term's mask is computed inside the fused kernel for weights grouped along
        their last dim; the layer's cached mask (the one its forward pass used) is passed
        instead where the groups run along another dim or the reference runs anyway.
        """
        reference = choose("adam_update", _local(params[0]).device, params)[0] == "reference"
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            state = self.state[p]
            if "exp_avg" not in state:
                local = _local(p)
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(local, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(local, dtype=torch.float32)
            state["step"] += 1
            v_step = state["step"] if update_v else state["v_step"]
            nm = (0, 0)
            if srste_decay:
                s = sparsity_of(p)
                last = s.axis in (-1, p.dim() - 1)
                nm = (s.n, s.m) if last and not reference else (-1, -1)  # -1: given masks
            buckets[(state["step"], v_step, nm)].append(i)
        beta1, beta2 = group["betas"]
        total = None
        for (step, v_step, (n, m)), idx in buckets.items():
            ps = [params[i] for i in idx]
            masks = None
            if n == -1:
                masks = [sparsity_of(p).current_mask(_local(p)) for p in ps]
                n = m = 0
            result = adam_update(
                [_local(p) for p in ps],
                [_local(grads[i] if grads is not None else params[i].grad) for i in idx],
                [self.state[p]["exp_avg"] for p in ps],
                [self.state[p]["exp_avg_sq"] for p in ps],
                lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], step=step, v_step=v_step,
                update_v=update_v, srste_decay=srste_decay, n=n, m=m, want_z=want_z,
                masks=masks,
            )  # fmt: skip
            if want_z:
                count = sum(_local(p).numel() for p in ps)
                part = torch.cat([result, result.new_tensor([float(count)])])
                total = part if total is None else total + part
        return total

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict:
        self._save_recipe_state(self.state[RECIPE_KEY])
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch casts floating-point state to each parameter's dtype; AdamW states are
        # float32 whatever the parameter, so restore them exactly from the saved copy.
        params = [p for g in self.param_groups for p in g["params"]]
        for key, saved in state_dict["state"].items():
            if isinstance(key, int):
                state = self.state[params[key]]
                for name in ("exp_avg", "exp_avg_sq"):
                    state[name] = saved[name].to(_local(params[key]).device, torch.float32,
                                                 copy=True)  # fmt: skip
        self._load_recipe_state(self.state[RECIPE_KEY])

    def _save_recipe_state(self, recipe: dict) -> None:
        """Put what the recipe keeps outside ``self.state`` into ``recipe``."""

    def _load_recipe_state(self, recipe: dict) -> None:
        """Restore the recipe (and the layers' forward modes) from ``recipe``."""
