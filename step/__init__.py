"""step-sparsity: N:M structured sparsity for PyTorch.

Public API (stable names):

    step.nm_mask(w, n, m)            bool mask, groups along the last dim
    step.nm_compress(w, n, m)        -> step.NMCompressed; step.nm_decompress(c)
    step.to_sparse24(w)              -> (values, meta) in the CUTLASS layout
    step.from_sparse24(values, meta) -> dense
    step.sparse24_linear(x, values, meta, bias=None)
    step.masked_linear(x, w, n, m, bias=None)   autograd with the STE
    step.nm_linear(x, c, bias=None)  x @ W.T + bias, W an NMCompressed
    step.sparsify(model, n=2, m=4, include=None, exclude=None)   in place
    step.freeze(model)               fix masks, prune, compressed inference in eval()
    step.summarize(model)            table of the sparse layers
    step.export(model, path, format="dense"|"compressed")
    step.load_sparse(path, model=None, device="cpu")
    step.backends(device=None)       which backends can run, and why not
"""

from . import nn, optim
from ._version import __version__
from .export import export, load_sparse
from .native import register as _register_native  # noqa: F401  (CUDA and C backends)
from .nn import freeze, restore_sparsity, sparsify, summarize
from .ops import (
    BackendError,
    BackendStatus,
    NMCompressed,
    backends,
    from_sparse24,
    masked_linear,
    nm_compress,
    nm_decompress,
    nm_linear,
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
    "export",
    "freeze",
    "load_sparse",
    "nm_linear",
    "restore_sparsity",
    "sparsify",
    "summarize",
    "from_sparse24",
    "masked_linear",
    "nm_compress",
    "nm_decompress",
    "nm_mask",
    "sparse24_linear",
    "to_sparse24",
    "use_backend",
]
