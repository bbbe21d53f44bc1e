"""``step.sparsify``: convert a model's layers to N:M sparse layers, in place.

Convertible: ``nn.Linear``, ``nn.Conv2d`` and Hugging Face ``Conv1D`` (exact types, so
subclasses with their own forward are not silently changed). Left dense by default (the
usual practice, documented in docs/layers.md): embeddings (never converted), layers named
like an output head (:data:`DEFAULT_DENSE`), a layer whose weight is tied to an
embedding, the last convertible layer of the model (the classifier or LM head), and
``nn.MultiheadAttention``'s projections (its forward reads the weights directly).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from torch import nn

from ..ops.checks import check_nm
from .checks import check_module, check_patterns
from .plan import record_plan
from .sparse_conv import SparseConv2d
from .sparse_conv1d import SparseConv1D, is_hf_conv1d
from .sparse_linear import SparseLinear
from .sparse_module import SparseWeightMixin
from .summary import summarize

DEFAULT_DENSE = (
    "lm_head", "*.lm_head", "classifier", "*.classifier", "classifier.*", "*.classifier.*",
    "score", "*.score", "head", "*.head", "cls.*", "*.cls.*", "pooler.*", "*.pooler.*",
)  # fmt: skip
"""Name patterns of layers left dense unless ``include`` names them."""


def convertible(module: nn.Module) -> bool:
    """Whether :func:`sparsify` can convert ``module`` (Linear, Conv2d, HF Conv1D)."""
    return type(module) in (nn.Linear, nn.Conv2d) or is_hf_conv1d(module)


def _to_sparse(module: nn.Module, n: int, m: int) -> SparseWeightMixin:
    if type(module) is nn.Linear:
        return SparseLinear.from_linear(module, n, m)
    if type(module) is nn.Conv2d:
        return SparseConv2d.from_conv(module, n, m)
    return SparseConv1D.from_conv1d(module, n, m)


def _reduction_size(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels // module.groups
    return module.weight.shape[0]  # Conv1D: [in, out]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Convertible modules by qualified name, first name of each, skipping attention."""
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()
    attention = {
        id(child) for mod in model.modules() if isinstance(mod, nn.MultiheadAttention)
        for child in mod.modules()
    }  # fmt: skip
    for name, mod in model.named_modules():
        if convertible(mod) and id(mod) not in seen and id(mod) not in attention:
            seen.add(id(mod))
            found[name] = mod
    return found


def _default_dense(model: nn.Module, candidates: dict[str, nn.Module]) -> set[str]:
    tied = {id(mod.weight) for mod in model.modules() if isinstance(mod, nn.Embedding)}
    dense = {
        name for name, mod in candidates.items()
        if _matches(name, DEFAULT_DENSE) or id(mod.weight) in tied
    }  # fmt: skip
    if candidates:
        dense.add(list(candidates)[-1])
    return dense


def _pattern_for(name: str, overrides: Mapping[str, tuple[int, int] | None], default):
    for pattern, nm in overrides.items():
        if fnmatchcase(name, pattern):
            return nm
    return default


def _check_overrides(overrides: object) -> dict[str, tuple[int, int] | None]:
    """``overrides`` is None or a mapping of pattern strings to ``(n, m)`` or None."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict {{pattern: (n, m) or None}}, got "
                        f"{type(overrides).__name__} {overrides!r}")  # fmt: skip
    check_patterns(list(overrides), "overrides")
    for pattern, nm in overrides.items():
        if nm is not None:
            if not (isinstance(nm, tuple | list) and len(nm) == 2):
                raise TypeError(f"overrides[{pattern!r}] must be (n, m) or None, got {nm!r}")
            check_nm(*nm)
    return {p: (None if nm is None else tuple(nm)) for p, nm in overrides.items()}


def _check_patterns_match(layers: list[str], patterns: dict[str, list[str]]) -> None:
    """Every pattern names at least one layer (convertible or already sparse)."""
    for label, given in patterns.items():
        unused = [p for p in given if not any(fnmatchcase(name, p) for name in layers)]
        if unused:
            raise ValueError(
                f"{label} pattern(s) {unused} match no convertible or sparse layer; those "
                f"layers are: {', '.join(layers) or 'none'}. Fix the pattern (fnmatch on "
                "qualified module names) or drop it"
            )


def _check_already_sparse(
    sparse: dict[str, SparseWeightMixin],
    include: list[str] | None,
    exclude: list[str],
    overrides: Mapping[str, tuple[int, int] | None],
    default: tuple[int, int],
) -> None:
    """No layer that is already sparse is asked for another N:M or for dense: sparsify
    never changes a sparse layer, and says so rather than ignore the request."""
    conflicts = []
    for name, layer in sparse.items():
        if include is not None and not _matches(name, include):
            continue
        have = (layer.sparsity.n, layer.sparsity.m)
        want = None if _matches(name, exclude) else _pattern_for(name, overrides, default)
        if want != have:
            asked = "dense" if want is None else f"{want[0]}:{want[1]}"
            conflicts.append(f"{name} (is {have[0]}:{have[1]}, asked {asked})")
    if conflicts:
        raise ValueError(
            "these layers are already N:M sparse and sparsify does not change a sparse "
            f"layer: {'; '.join(conflicts)}. Start from the dense model to change them, or "
            "leave them out (include only the layers to convert, or give them their own "
            "pattern in overrides)"
        )


def sparsify(
    model: nn.Module,
    n: int = 2,
    m: int = 4,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, tuple[int, int] | None] | None = None,
    skip_indivisible: bool = False,
    verbose: bool = False,
) -> nn.Module:
    """Replace ``model``'s Linear / Conv2d / HF Conv1D layers by N:M sparse ones, in place.

    The new layers share the old parameters (no copy; same ``state_dict`` keys). They run
    dense until an optimizer recipe (``step.optim.STEP``...) switches their mode.

    Args:
        model: any ``nn.Module``; returned, converted.
        n, m: the default pattern (2:4).
        include: ``fnmatch`` patterns of qualified module names (``"encoder.*"``): only
            these are converted, and the default dense rules do not apply to them.
        exclude: patterns of names to leave dense (applied after ``include``).
        overrides: ``{pattern: (n, m)}`` per-layer patterns (first match wins); ``None``
            as the value leaves matching layers dense.
        skip_indivisible: leave layers whose reduction dim is not divisible by their
            ``m`` dense, with a warning listing them; by default they raise ``ValueError``.
        verbose: print :func:`step.nn.summarize`'s table.

    Layers that are already sparse (a second call) keep their N:M: asking one of them
    for another pattern (through ``n``/``m``, ``overrides`` or ``exclude``) raises
    ``ValueError`` naming it; asking for its own pattern leaves it as it is, so calling
    ``sparsify`` twice with the same arguments is harmless.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or a pattern argument is not a list
            of strings (a single string is refused).
        ValueError: a layer cannot take its N:M (named, with the fix), a pattern in
            ``include``/``exclude``/``overrides`` matches no layer, or an already sparse
            layer is asked for another N:M. Nothing is changed then.
    """
    check_module(model)
    check_nm(n, m)
    include = check_patterns(include, "include")
    exclude = check_patterns(exclude, "exclude") or []
    overrides = _check_overrides(overrides)
    candidates = _candidates(model)
    sparse = {name: mod for name, mod in model.named_modules()
              if isinstance(mod, SparseWeightMixin)}  # fmt: skip
    patterns = {"include": include or [], "exclude": exclude, "overrides": list(overrides)}
    _check_patterns_match([*candidates, *sparse], patterns)
    _check_already_sparse(sparse, include, exclude, overrides, (n, m))
    default_dense = _default_dense(model, candidates) if include is None else set()
    targets: dict[str, tuple[int, int]] = {}
    for name in candidates:
        if include is not None and not _matches(name, include):
            continue
        if name in default_dense or _matches(name, exclude):
            continue
        nm = _pattern_for(name, overrides, (n, m))
        if nm is not None:
            targets[name] = nm
    bad = [
        f"{name} ({type(candidates[name]).__name__}, reduction dim "
        f"{_reduction_size(candidates[name])}, m={nm[1]})"
        for name, nm in targets.items() if _reduction_size(candidates[name]) % nm[1]
    ]  # fmt: skip
    if bad and not skip_indivisible:
        raise ValueError(
            "these layers cannot be N:M sparse, their reduction dim is not divisible by m: "
            + "; ".join(bad)
            + ". Pass skip_indivisible=True to leave them dense, or exclude them"
        )
    if bad:
        warnings.warn("left dense (reduction dim not divisible by m): " + "; ".join(bad),
                      stacklevel=2)  # fmt: skip
        targets = {k: v for k, v in targets.items() if _reduction_size(candidates[k]) % v[1] == 0}
    convert(model, targets)
    if verbose:
        print(summarize(model))
    return model


def convert(model: nn.Module, targets: Mapping[str, tuple[int, int]]) -> nn.Module:
    """Convert exactly the modules named in ``targets`` (``{name: (n, m)}``), in place.

    Already sparse layers with the same N:M are left as they are. Records the plan in a
    Hugging Face ``model.config`` (see :mod:`step.nn.plan`).
    """
    modules = dict(model.named_modules())
    for name, (n, m) in targets.items():
        mod = modules.get(name)
        if mod is None:
            raise ValueError(f"the model has no module named {name!r}")
        if isinstance(mod, SparseWeightMixin):
            if (mod.sparsity.n, mod.sparsity.m) != (n, m):
                raise ValueError(f"{name} is already {mod.sparsity.n}:{mod.sparsity.m} sparse")
            continue
        if not convertible(mod):
            raise ValueError(f"{name} is a {type(mod).__name__}; only Linear, Conv2d and "
                             "transformers Conv1D layers can be made N:M sparse")  # fmt: skip
        new = _to_sparse(mod, n, m)
        for parent in modules.values():  # every place the module is used
            for child_name, child in list(parent._modules.items()):  # with repeats
                if child is mod:
                    setattr(parent, child_name, new)
    record_plan(model)
    return model
