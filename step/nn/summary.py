"""``summarize(model)``: which layers are N:M sparse, and how many weights they keep."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..text_table import format_table
from .checks import check_module
from .sparse_module import SparseWeightMixin


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    shape: tuple[int, ...]
    n: int
    m: int
    mode: str
    frozen: bool

    @property
    def params(self) -> int:
        total = 1
        for d in self.shape:
            total *= d
        return total

    @property
    def kept(self) -> int:
        return self.params // self.m * self.n


@dataclass(frozen=True)
class SparsitySummary:
    """Rows for the sparse layers, and parameter counts of the whole model."""

    layers: list[LayerRow] = field(default_factory=list)
    total_params: int = 0

    @property
    def sparse_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def pruned_params(self) -> int:
        return sum(r.params - r.kept for r in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of all parameters that are pruned."""
        return self.pruned_params / self.total_params if self.total_params else 0.0

    def __str__(self) -> str:
        head = ("layer", "type", "weight shape", "N:M", "mode", "params")
        rows = [head] + [
            (r.name, r.kind, "x".join(map(str, r.shape)), f"{r.n}:{r.m}",
             r.mode + (" (frozen)" if r.frozen else ""), f"{r.params:,}")
            for r in self.layers
        ]  # fmt: skip
        lines = [format_table(rows)]
        lines.append(
            f"{len(self.layers)} sparse layers, {self.sparse_params:,} of {self.total_params:,} "
            f"parameters N:M sparse, {self.pruned_params:,} pruned "
            f"({100 * self.sparsity:.1f}% of the model)"
        )
        return "\n".join(lines)


def summarize(model: nn.Module) -> SparsitySummary:
    """A :class:`SparsitySummary` of ``model`` (print it for a table)."""
    check_module(model)
    rows = [
        LayerRow(
            name,
            type(mod).__name__,
            tuple(mod.weight.shape),
            mod.sparsity.n,
            mod.sparsity.m,
            mod.sparsity.mode,
            mod.frozen,
        )  # fmt: skip
        for name, mod in model.named_modules()
        if isinstance(mod, SparseWeightMixin)
    ]
    total = sum(p.numel() for p in model.parameters())
    return SparsitySummary(rows, total)
