"""``NMAdamW``: AdamW over dense and N:M-sparse parameters, the engine of every recipe.

Dense parameters (biases, norms, embeddings, excluded layers) always get plain AdamW.
Sparse parameters are those with ``nm=(n, m)`` in their param group or an
:class:`~step.nn.NMSparsity` attached by a sparse layer; a recipe subclass decides how
each step treats them (:meth:`NMAdamW._update_sparse`). All updates go through the fused
multi-tensor op ``step::adam_update``: one call per param group and kind, not per tensor.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch

from ..nn.flip_rate import FlipRate
from ..nn.sparsity import attach_sparsity, sparsity_of
from ..ops.adam_update import adam_update
from .checks import check_group_nm, check_hyperparameters, check_int, check_real, describe

RECIPE_KEY = "recipe"
"""Key of the recipe's own state (step count, phase...) in ``optimizer.state``."""


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "srste_decay")

ADAM_STATE = {"step": "count", "exp_avg": "moment", "exp_avg_sq": "moment"}
"""AdamW's state of a parameter: key -> kind (see :func:`_check_state_value`)."""


def _saved_params(saved: list[dict], groups: list[dict]) -> dict:
    """Parameter id in a state_dict -> this optimizer's parameter (as torch maps them)."""
    ids = (i for g in saved for i in g["params"])
    return dict(zip(ids, (p for g in groups for p in g["params"]), strict=True))


def _check_state_value(value: object, kind: str, shape: tuple[int, ...], name: str) -> None:
    """A saved state value of ``kind``: "count" an int >= 0; "real" a finite float >= 0;
    "moment" a floating tensor and "mask" a bool tensor, both of the parameter's ``shape``."""
    if kind == "count":
        check_int(value, name, low=0)
        return
    if kind == "real":
        check_real(value, name, low=0.0)
        return
    dtypes = "a bool" if kind == "mask" else "a floating-point"
    if not isinstance(value, torch.Tensor) or (
        value.dtype != torch.bool if kind == "mask" else not value.is_floating_point()
    ):
        raise ValueError(f"{name} must be {dtypes} tensor; got {describe(value)[:200]}")
    if tuple(value.shape) != shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, its parameter {shape}: the state of "
            "another model"
        )


def _restore_tensors(state: dict, saved: dict, device: torch.device) -> None:
    """Put ``saved``'s tensors back into ``state`` as they were saved: torch's loader casts
    floating-point state to the parameter's dtype and a bool mask to float; AdamW moments
    are float32 whatever the parameter, masks stay bool."""
    for key, value in saved.items():
        if isinstance(value, torch.Tensor):
            dtype = torch.float32 if ADAM_STATE.get(key) == "moment" else value.dtype
            state[key] = value.to(device, dtype, copy=True)


def _sparse_nm(p: torch.Tensor, nm: tuple[int, int] | None, name: str) -> tuple[int, int] | None:
    """The N:M of parameter ``p`` in a group with ``nm`` (None: dense), or the error."""
    attached = sparsity_of(p)
    if attached is not None:
        if nm is not None and (attached.n, attached.m) != nm:
            raise ValueError(
                f"{name} is already N:M {attached.n}:{attached.m} (from its sparse layer), "
                f"not its group's nm={nm}: drop 'nm' from that group, or give it "
                f"({attached.n}, {attached.m})"
            )
        return attached.n, attached.m
    if nm is not None and (p.dim() < 1 or p.shape[-1] % nm[1]):
        raise ValueError(
            f"{name} has shape {tuple(p.shape)}: N:M {nm[0]}:{nm[1]} groups run along the "
            f"last (reduction) dim, which is not divisible by m={nm[1]}. Leave this "
            "parameter out of the sparse group, or choose another m"
        )
    return nm


class NMAdamW(torch.optim.Optimizer):
    """AdamW with N:M-aware handling of sparse weights; see the recipes in
    :mod:`step.optim.recipes`. Param groups may carry ``nm=(n, m)``."""

    RECIPE = "nm_adamw"
    """The recipe's name, kept in its state: a state_dict loads only into its own recipe."""

    _RECIPE_KEYS: tuple[str, ...] = ("name", "t")
    """Keys of the recipe's state (``state_dict()["state"]["recipe"]``)."""

    _SPARSE_STATE: dict[str, str] = {}
    """State a sparse parameter may hold beyond AdamW's: key -> kind ("count", "mask")."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        srste_decay: float = 2e-4,
    ) -> None:
        hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                     srste_decay=srste_decay)  # fmt: skip
        super().__init__(params, {**check_hyperparameters(hyper), "nm": None})
        for p, (n, m) in self._plan_sparse():  # every group checked before any change
            attach_sparsity(p, n, m)
        self.state[RECIPE_KEY] = {"name": self.RECIPE, "t": 0}
        self._flips = FlipRate(self.sparse_params())

    # ------------------------------------------------------------ sparse parameters

    def _plan_sparse(self) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Check every param group (normalising its values) and return the sparse
        parameters with their N:M; changes no parameter."""
        plan = []
        for gi, group in enumerate(self.param_groups):
            where = f"param_groups[{gi}]"
            group.update(check_hyperparameters(group, where))
            group["nm"] = check_group_nm(group["nm"], f"{where}['nm']")
            for pi, p in enumerate(group["params"]):
                nm = _sparse_nm(p, group["nm"], f"{where}['params'][{pi}]")
                if nm is not None:
                    plan.append((p, nm))
        return plan

    def sparse_params(self) -> list[torch.Tensor]:
        """All sparse parameters, in param-group order."""
        return [p for g in self.param_groups for p in g["params"] if sparsity_of(p) is not None]

    def flip_rate(self) -> float | None:
        """The mask flip rate of this optimizer's sparse weights since the previous call
        (or construction): the fraction of mask entries that changed per mask update,
        over all of them (:class:`step.nn.FlipRate`; per layer: ``FlipRate(model)``).
        None where no two masks were compared (a dense phase, fixed masks). One host
        sync per sparse weight: call it at logging intervals."""
        if getattr(self, "_flips", None) is None:  # unpickled: Optimizer keeps no extras
            self._flips = FlipRate(self.sparse_params())
        return self._flips.read().overall

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
        v_floors: list[float] | None = None,
    ) -> torch.Tensor | None:
        """Fused AdamW step of ``params``; with ``want_z`` returns ``[sum|dv|, sum v, count]``.

        Tensors are bucketed by what one fused call must share (step counts, N:M). The
        SR-STE term's mask is the layer's (the one its forward pass used): for weights
        grouped along their last dim the fused kernels rank it again in registers, and the
        cached masks go along for the reference to use instead of ranking; where the
        groups run along another dim the masks are passed alone.
        """
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
                nm = (s.n, s.m) if last else (-1, -1)  # -1: the masks alone
            buckets[(state["step"], v_step, nm)].append(i)
        beta1, beta2 = group["betas"]
        total = None
        for (step, v_step, (n, m)), idx in buckets.items():
            ps = [params[i] for i in idx]
            masks = None
            if n == -1:
                masks = [sparsity_of(p).current_mask(_local(p)) for p in ps]
                n = m = 0
            elif n:
                cached = [sparsity_of(p).cached_mask(_local(p)) for p in ps]
                masks = None if any(c is None for c in cached) else cached
            result = adam_update(
                [_local(p) for p in ps],
                [_local(grads[i] if grads is not None else params[i].grad) for i in idx],
                [self.state[p]["exp_avg"] for p in ps],
                [self.state[p]["exp_avg_sq"] for p in ps],
                lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], step=step, v_step=v_step,
                update_v=update_v, srste_decay=srste_decay, n=n, m=m, want_z=want_z,
                masks=masks, v_floors=None if v_floors is None else [v_floors[i] for i in idx],
            )  # fmt: skip
            if want_z:
                count = sum(_local(p).numel() for p in ps)
                part = torch.cat([result, result.new_tensor([float(count)])])
                total = part if total is None else total + part
        return total

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict:
        self._save_recipe_state(self.state[RECIPE_KEY])
        state_dict = super().state_dict()
        # a copy: the live recipe state changes with every step
        state_dict["state"][RECIPE_KEY] = copy.deepcopy(state_dict["state"][RECIPE_KEY])
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what :meth:`state_dict` returned. A state_dict of another model (state
        shapes), recipe or optimizer is refused with a ``ValueError`` naming what differs,
        before anything changes."""
        self._check_state_dict(state_dict)
        super().load_state_dict(state_dict)
        saved = state_dict["state"]
        self.state[RECIPE_KEY] = copy.deepcopy(saved[RECIPE_KEY])
        params = _saved_params(state_dict["param_groups"], self.param_groups)
        for key, entry in saved.items():
            if key != RECIPE_KEY:
                _restore_tensors(self.state[params[key]], entry, _local(params[key]).device)
        self._load_recipe_state(self.state[RECIPE_KEY])

    def _check_state_dict(self, state_dict: object) -> None:
        """Refuse a state_dict this optimizer cannot continue from (see load_state_dict)."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError(
                "state_dict must be what Optimizer.state_dict() returns, a dict with 'state' "
                f"and 'param_groups'; got {describe(state_dict)[:200]}"
            )
        self._check_recipe_state(state_dict["state"].get(RECIPE_KEY), "state_dict['state']")
        self._check_groups(state_dict["param_groups"])
        params = _saved_params(state_dict["param_groups"], self.param_groups)
        for key, entry in state_dict["state"].items():
            if key == RECIPE_KEY:
                continue
            if key not in params:
                raise ValueError(
                    f"state_dict['state'] has an entry {key!r} for none of the parameter ids "
                    "in its param_groups: it is not a state_dict() of this optimizer"
                )
            self._check_param_state(entry, params[key], f"state_dict['state'][{key!r}]")

    def _check_recipe_state(self, recipe: object, where: str) -> None:
        """The recipe's state has this recipe's name and keys; subclasses check values."""
        if not isinstance(recipe, dict):
            raise ValueError(
                f"{where} has no {RECIPE_KEY!r} entry: it was saved by another optimizer "
                f"(e.g. torch.optim.AdamW), not by a step.optim recipe; {type(self).__name__} "
                "cannot continue from it. Load it into the optimizer that saved it"
            )
        where = f"{where}[{RECIPE_KEY!r}]"
        if recipe.get("name") != self.RECIPE:
            raise ValueError(
                f"{where}['name'] is {recipe.get('name')!r}: the state of another recipe, "
                f"which this {type(self).__name__} (recipe {self.RECIPE!r}) cannot continue. "
                f"Load it into the recipe that saved it"
            )
        missing = [key for key in self._RECIPE_KEYS if key not in recipe]
        if missing:
            raise ValueError(f"{where} lacks {missing}, which recipe {self.RECIPE!r} keeps")
        check_int(recipe["t"], f"{where}['t']", low=0)

    def _check_groups(self, saved: object) -> None:
        """The saved param groups match this optimizer's in number, sizes and N:M, and
        hold valid hyperparameters."""
        if not isinstance(saved, list) or len(saved) != len(self.param_groups):
            count = len(saved) if isinstance(saved, list) else describe(saved)
            raise ValueError(
                f"state_dict['param_groups'] has {count} groups, this optimizer "
                f"{len(self.param_groups)}: it was saved for another model or grouping"
            )
        for gi, (group, mine) in enumerate(zip(saved, self.param_groups, strict=True)):
            where = f"state_dict['param_groups'][{gi}]"
            missing = [k for k in (*HYPERPARAMETERS, "nm", "params") if k not in group]
            if missing:
                raise ValueError(f"{where} lacks {missing}: it was not saved by a step.optim "
                                 "recipe")  # fmt: skip
            if len(group["params"]) != len(mine["params"]):
                raise ValueError(
                    f"{where} has {len(group['params'])} parameters, this optimizer's group "
                    f"{gi} {len(mine['params'])}: it was saved for another model"
                )
            check_hyperparameters(group, where)
            nm = check_group_nm(group["nm"], f"{where}['nm']")
            if nm != mine["nm"]:
                raise ValueError(f"{where}['nm'] is {nm}, this optimizer's group {gi} has "
                                 f"nm={mine['nm']}: it was saved for another sparsity")  # fmt: skip

    def _check_param_state(self, entry: object, p: torch.Tensor, where: str) -> None:
        """A parameter's saved state has this recipe's keys, each of the right kind, and
        tensors of the parameter's (local) shape."""
        sparse = sparsity_of(p) is not None
        extra = self._SPARSE_STATE if sparse else {}
        allowed = {**ADAM_STATE, **extra}
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a dict of {sorted(allowed)}; got {describe(entry)}")
        adam = [key for key in ADAM_STATE if key in entry]
        unknown = sorted(set(entry) - set(allowed), key=str)
        if unknown or adam not in ([], list(ADAM_STATE)):
            raise ValueError(
                f"{where} has the keys {sorted(entry, key=str)}; a "
                f"{'sparse' if sparse else 'dense'} parameter of recipe {self.RECIPE!r} has "
                f"{list(ADAM_STATE)} (all or none) and may have {sorted(extra)}: the state "
                "of another recipe or model"
            )
        for key, value in entry.items():
            _check_state_value(value, allowed[key], tuple(_local(p).shape), f"{where}[{key!r}]")

    def _save_recipe_state(self, recipe: dict) -> None:
        """Put what the recipe keeps outside ``self.state`` into ``recipe``."""

    def _load_recipe_state(self, recipe: dict) -> None:
        """Restore the recipe (and the layers' forward modes) from ``recipe``."""
