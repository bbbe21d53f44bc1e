"""``unchanged_on_failure(model)``: all of a model change, or none of it.

Loaders validate everything they can before they touch a model, but some failures can
only happen while the model changes (a device running out of memory, a kernel that
cannot run, PyTorch refusing a layout). Inside ``with unchanged_on_failure(model):`` any
exception first puts every module of ``model`` back as it was: its attributes, children,
parameters and buffers (the very objects), the N:M state of its sparse layers, and the
sparsity plan of a Hugging Face config. It is then raised unchanged.

The body must *assign* new tensors (``load_state_dict(..., assign=True)``, new
parameters) rather than write into the model's tensors in place: restoring puts the
old objects back, it does not copy their data.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .plan import CONFIG_KEY
from .sparse_module import SparseWeightMixin

_CONTAINERS = ("_modules", "_parameters", "_buffers")
_ABSENT = object()


@dataclass
class _SavedModule:
    module: nn.Module
    attributes: dict
    containers: dict[str, dict]
    non_persistent: set
    sparsity: dict | None  # the fields of a sparse layer's NMSparsity (shared, mutable)

    @classmethod
    def of(cls, module: nn.Module) -> _SavedModule:
        state = module.__dict__
        sparsity = None
        if isinstance(module, SparseWeightMixin):
            sparsity = copy.copy(vars(module.sparsity))
        return cls(module, dict(state), {k: dict(state[k]) for k in _CONTAINERS},
                   set(module._non_persistent_buffers_set), sparsity)  # fmt: skip

    def restore(self) -> None:
        state = self.module.__dict__
        state.clear()
        state.update(self.attributes)
        for key, saved in self.containers.items():  # the same dict objects, refilled
            state[key].clear()
            state[key].update(saved)
        self.module._non_persistent_buffers_set.clear()
        self.module._non_persistent_buffers_set.update(self.non_persistent)
        if self.sparsity is not None:
            vars(self.module.sparsity).update(self.sparsity)


@contextlib.contextmanager
def unchanged_on_failure(model: nn.Module) -> Iterator[None]:
    """Undo the body's changes to ``model`` if it raises (module docstring)."""
    saved = [_SavedModule.of(mod) for mod in model.modules()]
    config = getattr(model, "config", None)
    plan = getattr(config, CONFIG_KEY, _ABSENT) if config is not None else _ABSENT
    try:
        yield
    except BaseException:
        for entry in saved:
            entry.restore()
        if config is not None:
            if plan is _ABSENT:
                with contextlib.suppress(AttributeError):
                    delattr(config, CONFIG_KEY)
            else:
                setattr(config, CONFIG_KEY, plan)
        raise
