"""Sparse layers, whole-model conversion, freezing for inference."""

from .convert import DEFAULT_DENSE, convert, sparsify
from .flip_rate import FlipRate, FlipReading
from .freeze import freeze
from .plan import sparsity_plan
from .restore import restore_sparsity
from .sparse_conv import SparseConv2d
from .sparse_conv1d import SparseConv1D, is_hf_conv1d
from .sparse_linear import SparseLinear
from .sparse_module import SparseWeightMixin
from .sparsity import NMSparsity, attach_sparsity, sparsity_of
from .summary import SparsitySummary, summarize

__all__ = [
    "DEFAULT_DENSE",
    "FlipRate",
    "FlipReading",
    "NMSparsity",
    "SparseConv1D",
    "SparseConv2d",
    "SparseLinear",
    "SparseWeightMixin",
    "SparsitySummary",
    "attach_sparsity",
    "convert",
    "freeze",
    "is_hf_conv1d",
    "restore_sparsity",
    "sparsify",
    "sparsity_of",
    "sparsity_plan",
    "summarize",
]
