"""Functional forms of the sparse layers (autograd-aware where training needs it)."""

from .ops.masked_linear import masked_linear
from .ops.sparse24_linear import sparse24_linear

__all__ = ["masked_linear", "sparse24_linear"]
