"""The sparsity plan of a model: which layers are N:M, in which mode, whether frozen.

``{"format_version": 1, "layers": {name: {"n", "m", "mode"}}, "frozen": bool}``, and
``"beta"`` for a layer in mode ``"soft"`` (S-STE's scale: the forward needs it). Kept in
a Hugging Face ``model.config`` as ``step_sparsity`` (so ``save_pretrained`` writes it to
``config.json``), and in exported checkpoints. :func:`step.restore_sparsity`
(:mod:`step.nn.restore`) applies it to a freshly loaded dense model.

The config holds a *live* plan: serialising the config (which deep-copies it) reads the
layers as they are at that moment, so the phase switch of the optimizer, made after
``sparsify``, is what ``save_pretrained`` writes.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from .sparse_module import SparseWeightMixin

PLAN_VERSION = 1
CONFIG_KEY = "step_sparsity"


def sparsity_plan(model: nn.Module) -> dict[str, Any]:
    """The plan of ``model``'s sparse layers as they are now."""
    layers, frozen = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, SparseWeightMixin):
            state = mod.sparsity
            layers[name] = {"n": state.n, "m": state.m, "mode": state.mode}
            if state.mode == "soft" and state.beta is not None:
                layers[name]["beta"] = state.beta
            frozen.append(mod.frozen)
    frozen_all = bool(frozen) and all(frozen)
    return {"format_version": PLAN_VERSION, "layers": layers, "frozen": frozen_all}


class _LivePlan(dict):
    """The plan as a dict that deep-copies (and so serialises) to the model's plan now."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(sparsity_plan(model))
        self._model = weakref.ref(model)

    def __deepcopy__(self, memo) -> dict[str, Any]:
        model = self._model()
        plan = sparsity_plan(model) if model is not None else dict(self)
        self.clear()
        self.update(plan)
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in plan.items()}

    def __reduce__(self):
        return dict, (self.__deepcopy__({}),)


def record_plan(model: nn.Module) -> None:
    """Keep the live plan in ``model.config`` if it is a Hugging Face config."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        setattr(config, CONFIG_KEY, _LivePlan(model))


def check_plan(plan: object, source: str) -> dict[str, Any]:
    """``plan`` is a well-formed plan (else ``ValueError`` naming ``source``)."""
    if not isinstance(plan, dict) or not isinstance(plan.get("layers"), dict):
        raise ValueError(f"{source}: not a step sparsity plan (expected a 'layers' mapping)")
    if plan.get("format_version") != PLAN_VERSION:
        raise ValueError(
            f"{source}: sparsity plan format_version {plan.get('format_version')!r} is not "
            f"supported (this step-sparsity reads version {PLAN_VERSION}); upgrade step-sparsity"
        )
    for name, spec in plan["layers"].items():
        if not isinstance(spec, dict) or not {"n", "m"} <= set(spec):
            raise ValueError(f"{source}: layer {name!r} needs 'n' and 'm', got {spec!r}")
    return plan
