"""``step.restore_sparsity``: re-apply a sparsity plan (:mod:`step.nn.plan`) to a model."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .checks import check_module
from .convert import convert
from .freeze import freeze
from .plan import CONFIG_KEY, check_plan


def restore_sparsity(model: nn.Module, plan: dict[str, Any] | None = None) -> nn.Module:
    """Re-apply a sparsity plan to ``model`` (default: ``model.config.step_sparsity``,
    as after ``from_pretrained``): the same layers become N:M sparse, frozen if they were.

    Returns ``model``. Raises ``ValueError`` if there is no plan or it does not fit.
    """
    check_module(model)
    if plan is None:
        plan = getattr(getattr(model, "config", None), CONFIG_KEY, None)
        if plan is None:
            raise ValueError(
                "the model carries no sparsity plan (model.config.step_sparsity); pass plan="
            )
    check_plan(plan, "sparsity plan")
    convert(model, {name: (s["n"], s["m"]) for name, s in plan["layers"].items()})
    modules = dict(model.named_modules())
    for name, spec in plan["layers"].items():
        layer, mode = modules[name], spec.get("mode", "dense")
        if mode == "fixed":  # pruned entries were zeroed: the magnitude mask finds them
            layer.sparsity.set_mode("fixed", layer.sparsity.compute_mask(layer.weight))
        elif mode in ("dense", "ste"):
            layer.sparsity.set_mode(mode)
        elif mode == "soft":  # S-STE mid-training: its scale is in the plan
            beta = spec.get("beta")
            if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
                raise ValueError(f"sparsity plan: layer {name!r} is in mode 'soft' but its "
                                 f"beta is {beta!r}; it must be a finite number > 0")  # fmt: skip
            layer.sparsity.set_mode(mode)
            layer.sparsity.beta = float(beta)
        else:
            raise ValueError(f"sparsity plan: layer {name!r} has unknown mode {mode!r}")
    if plan.get("frozen"):
        freeze(model)
    return model
