"""STEP: Adam-aware N:M mask learning, the recipe this package exists for (the spec:
docs/algorithm.md). A precondition phase of dense AdamW until AutoSwitch fires, then the
second moment frozen (with its guard, docs/optim.md), masked (STE) forward and the SR-STE
term; and what ``step.freeze`` asks it about masks not learned yet.
"""

from __future__ import annotations

import copy
import weakref

import torch

from ..nn.freeze import mark_pending_masks
from .autoswitch import AutoSwitch
from .checks import check_betas, check_int, check_real, describe, is_int
from .nm_adamw import RECIPE_KEY, NMAdamW

PHASES = ("precondition", "mask_learning")


def _reduce_stats(stats: list[torch.Tensor]) -> tuple[float, float]:
    """Means of |dv| and v over every sparse element, summed across ranks if distributed."""
    total = torch.stack(stats).sum(0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    dv_sum, v_sum, count = total.tolist()
    return dv_sum / count, v_sum / count


def _autoswitch(value: object, total_steps: int | None, beta2: float) -> AutoSwitch:
    """STEP's ``autoswitch`` argument as an :class:`AutoSwitch` (not attached yet).

    None gives :meth:`AutoSwitch.for_run` when the run's length ``total_steps`` is known,
    else ``AutoSwitch()``. An explicit one is used as given; with ``total_steps`` it must be
    able to switch within the run.
    """
    if value is None:
        switch = AutoSwitch() if total_steps is None else AutoSwitch.for_run(total_steps, beta2)
    elif isinstance(value, AutoSwitch):
        switch = value
    elif not is_int(value):
        raise TypeError(
            "autoswitch must be an AutoSwitch, an int step (a fixed switch) or None (the "
            f"default AutoSwitch()); got {describe(value)}"
        )
    elif value < 1:
        raise ValueError(f"autoswitch: a fixed switch step must be >= 1, got {value}")
    else:
        switch = AutoSwitch(t_min=int(value), t_max=int(value))
    if total_steps is None:
        return switch
    if switch.total_steps not in (None, total_steps):
        raise ValueError(
            f"STEP(total_steps={total_steps}) and its {switch!r} with total_steps="
            f"{switch.total_steps} disagree on the run's length; give it once"
        )
    probe = copy.copy(switch)  # the caller's AutoSwitch changes only once STEP is built
    probe.attach(beta2)
    reason = probe.cannot_switch_within(total_steps)
    if reason is not None:
        raise ValueError(
            f"autoswitch={value!r} cannot switch within the run of total_steps={total_steps} "
            f"steps ({reason}), so STEP would never learn masks: leave autoswitch out "
            f"(AutoSwitch.for_run(total_steps) is the default then), or give t_max <= "
            f"{total_steps}"
        )
    return switch


VARIANCE_FLOOR = 1e-2
"""STEP's default guard: at the switch, elements whose v* lies below this fraction of
their tensor's mean v* keep estimating v (docs/optim.md, "The variance guard")."""


def _variance_floors(opt: NMAdamW, params: list[torch.Tensor], fraction: float) -> list[float]:
    """``fraction`` times each tensor's mean v (over all ranks' elements), as float32
    values (all backends compare v with the same floor). A tensor that saw no gradient at
    all (mean v 0: an expert never routed to, a zero-initialised branch) takes the floor
    of all the sparse tensors together, or the smallest normal float32 if none saw any,
    so its zeros keep estimating instead of dividing by eps."""
    sums = torch.stack([
        torch.stack([opt.state[p]["exp_avg_sq"].double().sum(),
                     torch.tensor(float(opt.state[p]["exp_avg_sq"].numel()), dtype=torch.float64,
                                  device=opt.state[p]["exp_avg_sq"].device)])
        for p in params
    ])  # fmt: skip
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)  # sharded (FSDP2) or replicated (DDP): same mean
    means = (sums[:, 0] / sums[:, 1].clamp(min=1)).tolist()
    total = sums.sum(0)
    overall = (total[0] / total[1].clamp(min=1)).item()
    tiny = torch.finfo(torch.float32).tiny
    floors = []
    for mean in means:
        floor = float(torch.tensor(fraction * (mean or overall), dtype=torch.float32))
        floors.append(floor if floor > 0 else tiny)
    return floors


class STEP(NMAdamW):
    """STEP: Adam-aware N:M mask learning (docs/algorithm.md).

    Args:
        params: parameters or param groups; sparse ones are recognised from sparse layers
            (``step.nn.SparseLinear``) or from groups with ``nm=(n, m)``.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled decay).
        srste_decay: ``lambda_w`` of the SR-STE term in the mask-learning phase (0: STE).
        autoswitch: an :class:`AutoSwitch`, an ``int`` (switch at the end of that step),
            or None: ``AutoSwitch.for_run(total_steps, beta2)`` if ``total_steps`` is
            given (window fitted to the run, switch between 10% and 50% of it), else
            ``AutoSwitch()`` (window ``1/(1-beta2)``, no cap: it cannot switch before
            step ``2/(1-beta2)``, 2000 for beta2 = 0.999, and may never).
        total_steps: the run's length in optimizer steps. Give it: with the default
            AutoSwitch it makes STEP learn masks in a run of any length. With an explicit
            ``autoswitch`` it only checks that one can switch within the run.
        variance_floor: the guard against a frozen v that is no usable estimate (an
            element that saw almost no gradient before the switch): at the switch, each
            sparse tensor's floor is this fraction of its mean v*; elements below it keep
            updating v (as AdamW) until they reach it. 0 turns the guard off (the spec's
            update exactly). Default 1e-2 (docs/optim.md, "The variance guard").

    Raises ``ValueError`` when ``autoswitch`` cannot switch within ``total_steps``.
    ``step.freeze`` warns about a model whose STEP optimizer has not switched yet.

    Properties ``phase`` (``"precondition"`` / ``"mask_learning"``) and ``switch_step``.
    """

    RECIPE = "step"
    _RECIPE_KEYS = (*NMAdamW._RECIPE_KEYS, "phase", "switch_step", "autoswitch")
    _SPARSE_STATE = {"v_step": "count", "v_floor": "real"}  # frozen at; the guard's floor

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        srste_decay: float = 2e-4,
        autoswitch: AutoSwitch | int | None = None,
        total_steps: int | None = None,
        variance_floor: float = VARIANCE_FLOOR,
    ) -> None:
        if total_steps is not None:  # all checked before the parameters are touched
            total_steps = check_int(total_steps, "total_steps", hint=" (the run's optimizer steps)")
        self.variance_floor = check_real(variance_floor, "variance_floor", low=0.0, example="1e-2")
        switch = _autoswitch(autoswitch, total_steps, check_betas(betas)[1])
        super().__init__(params, lr, betas, eps, weight_decay, srste_decay)
        self.autoswitch = switch
        self.autoswitch.attach(self.defaults["betas"][1])
        self.state["recipe"].update(phase="precondition", switch_step=None)
        self._set_modes("dense")
        pending = _PendingMasks(self)
        for p in self.sparse_params():
            mark_pending_masks(p, pending)

    @property
    def phase(self) -> str:
        return self.state["recipe"]["phase"]

    @property
    def switch_step(self) -> int | None:
        """The step at whose end v was frozen (None before the switch)."""
        return self.state["recipe"]["switch_step"]

    def _update_sparse(self, group, params, t):
        if self.phase == "precondition":
            return self._adam(group, params, want_z=True)
        floors = [self.state[p].get("v_floor", 0.0) for p in params]  # absent: saved unguarded
        self._adam(group, params, update_v=False, srste_decay=group["srste_decay"],
                   v_floors=floors if any(floors) else None)  # fmt: skip
        return None

    def frozen_v(self, p: torch.Tensor) -> torch.Tensor:
        """Where ``p``'s v is frozen now (bool, v's shape): everywhere after the switch but
        below the guard's floor (those elements still estimate v); nowhere before it."""
        state = self.state[p]
        v = state["exp_avg_sq"]
        if "v_step" not in state:
            return torch.zeros_like(v, dtype=torch.bool)
        return v >= state.get("v_floor", 0.0)

    def _check_step(self, sparse):
        if self.phase == "mask_learning":
            for p in sparse:
                if "v_step" not in self.state[p]:
                    raise RuntimeError(
                        f"a sparse parameter of shape {tuple(p.shape)} got its first gradient "
                        "after the switch: STEP has no variance estimate to freeze for it. "
                        "Give every sparse parameter gradients during the precondition phase"
                    )

    def _after_step(self, t, stats):
        if self.phase != "precondition" or not stats:
            return
        z, v = _reduce_stats(stats)
        if self.autoswitch.observe(t, z, v):
            self.switch_now()

    def switch_now(self) -> None:
        """End the precondition phase now (AutoSwitch calls this; so may a user)."""
        if self.phase != "precondition":
            raise RuntimeError(f"STEP already switched at step {self.switch_step}")
        recipe = self.state["recipe"]
        if recipe["t"] == 0:
            raise RuntimeError("switch_now() before the first step: v has no estimate yet")
        recipe.update(phase="mask_learning", switch_step=recipe["t"])
        if not self.autoswitch.switched:
            self.autoswitch.switch_step = recipe["t"]
        started = [p for p in self.sparse_params() if "step" in self.state[p]]
        for p in started:  # v* = v_{t0}: never written again (but where the guard says)
            self.state[p]["v_step"] = self.state[p]["step"]
        if self.variance_floor and started:
            floors = _variance_floors(self, started, self.variance_floor)
            for p, floor in zip(started, floors, strict=True):
                self.state[p]["v_floor"] = floor
        self._set_modes("ste")

    def _save_recipe_state(self, recipe):
        recipe["autoswitch"] = self.autoswitch.state_dict()

    def _check_recipe_state(self, recipe, where):
        super()._check_recipe_state(recipe, where)
        where = f"{where}[{RECIPE_KEY!r}]"
        if recipe["phase"] not in PHASES:
            raise ValueError(f"{where}['phase'] is {recipe['phase']!r}; STEP's phases are "
                             f"{PHASES}")  # fmt: skip
        switched = recipe["phase"] == "mask_learning"
        if switched:
            check_int(recipe["switch_step"], f"{where}['switch_step']", low=1)
        elif recipe["switch_step"] is not None:
            raise ValueError(f"{where}['switch_step'] is {recipe['switch_step']!r} in phase "
                             "'precondition'; it must be None before the switch")  # fmt: skip
        self.autoswitch.check_state_dict(recipe["autoswitch"], f"{where}['autoswitch']")

    def _load_recipe_state(self, recipe):
        self.autoswitch.load_state_dict(recipe["autoswitch"])
        self._set_modes("ste" if recipe["phase"] == "mask_learning" else "dense")


class _PendingMasks:
    """Why the masks of a STEP optimizer's weights are not learned yet, with the fix (None
    once they are): what ``step.freeze`` warns with (:func:`step.nn.freeze.mark_pending_masks`).

    Holds the optimizer weakly; a copied or pickled model (deepcopy, ``torch.save``) keeps
    the question but not the optimizer, and answers as for a discarded one.
    """

    def __init__(self, opt: STEP) -> None:
        self._ref = weakref.ref(opt)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._ref = _gone

    def __call__(self) -> str | None:
        opt = self._ref()
        if opt is not None and opt.phase != "precondition":
            return None
        fix = (
            "tell STEP the run's length, STEP(params, ..., total_steps=N), so that it "
            "switches by half the run at the latest, or call opt.switch_now() and train on"
        )
        if opt is None:
            where = "was discarded in its precondition phase"
        else:
            switch = opt.autoswitch
            reason = switch.cannot_switch_within(opt.t) or "its criterion has not fired yet"
            where = f"is still in its precondition phase after {opt.t} steps ({reason}; {switch!r})"
            if switch.t_max is not None:
                fix = (
                    f"train on (it switches at step {switch.t_max} at the latest), or call "
                    "opt.switch_now() and train on"
                )
        return (
            f"the STEP optimizer over this model {where}: its masks were never learned. "
            f"To learn them, {fix}"
        )


def _gone() -> None:
    """A dead reference: what a copied :class:`_PendingMasks` holds."""
    return None
