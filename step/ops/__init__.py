"""The ``step::`` operators: one ``torch.library`` op per operation.

Each op module holds the op's pure-PyTorch reference (``*_ref``), its input checks, its
fake (meta) implementation and its registration with :mod:`step.ops.dispatch`.
"""

from ..kernels.nm_positions import pack_positions, position_bits, unpack_positions
from .adam_update import adam_update, adam_update_ref
from .dispatch import BackendError, BackendStatus, backends, registered_ops, use_backend
from .masked_linear import masked_linear, masked_linear_dx_ref, masked_linear_ref
from .nm_compress import (
    NMCompressed,
    nm_compress,
    nm_compress_ref,
    nm_decompress,
    nm_decompress_ref,
)
from .nm_linear import nm_linear, nm_linear_ref
from .nm_mask import nm_mask, nm_mask_ref
from .nm_soft_threshold import nm_soft_threshold, nm_soft_threshold_ref
from .sparse24 import (
    cutlass_meta_offsets_ref,
    from_sparse24,
    from_sparse24_ref,
    to_sparse24,
    to_sparse24_ref,
)
from .sparse24_linear import sparse24_linear, sparse24_linear_ref

OPS = registered_ops()
"""Names of the ``step::`` ops (``torch.ops.step.<name>``), as their modules registered them."""

__all__ = [
    "adam_update",
    "adam_update_ref",
    "OPS",
    "BackendError",
    "BackendStatus",
    "NMCompressed",
    "backends",
    "cutlass_meta_offsets_ref",
    "from_sparse24",
    "from_sparse24_ref",
    "masked_linear",
    "masked_linear_dx_ref",
    "masked_linear_ref",
    "nm_compress",
    "nm_compress_ref",
    "nm_decompress",
    "nm_decompress_ref",
    "nm_linear",
    "nm_linear_ref",
    "nm_mask",
    "nm_mask_ref",
    "nm_soft_threshold",
    "nm_soft_threshold_ref",
    "pack_positions",
    "position_bits",
    "unpack_positions",
    "sparse24_linear",
    "sparse24_linear_ref",
    "to_sparse24",
    "to_sparse24_ref",
    "use_backend",
]
