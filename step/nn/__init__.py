"""Sparse layers."""

from .sparse_linear import SparseLinear
from .sparsity import NMSparsity, attach_sparsity, sparsity_of

__all__ = ["NMSparsity", "SparseLinear", "attach_sparsity", "sparsity_of"]
