"""step-sparsity: N:M structured sparsity for PyTorch.

Public API (stable names):

    step.nm_mask(w, n, m)            bool mask, groups along the last dim
    step.nm_compress(w, n, m)        -> step.NMCompressed; step.nm_decompress(c)
    step.to_sparse24(w)              -> (values, meta) in the CUTLASS layout
    step.from_sparse24(values, meta) -> dense
    step.sparse24_linear(x, values, meta, bias=None)
    step.masked_linear(x, w, n, m, bias=None)   autograd with the STE
    step.backends(device=None)       which backends can run, and why not
"""

from . import nn, optim
from ._version import __version__
from .ops import (
    BackendError,
    BackendStatus,
    NMCompressed,
    backends,
    from_sparse24,
    masked_linear,
    nm_compress,
    nm_decompress,
    nm_mask,
    sparse24_linear,
    to_sparse24,
    use_backend,
)

__all__ = [
    "__version__",
    "nn",
    "optim",
    "BackendError",
    "BackendStatus",
    "NMCompressed",
    "backends",
    "from_sparse24",
    "masked_linear",
    "nm_compress",
    "nm_decompress",
    "nm_mask",
    "sparse24_linear",
    "to_sparse24",
    "use_backend",
]
