"""Importing this registers every native implementation with ``step.ops.dispatch``
(``import step`` does)."""

from .cpu import adam_update  # noqa: F401  (the C backend of adam_update on CPU)
from .cuda import (
    masked_linear,  # noqa: F401  (2:4 mask-learning forward on mma.sp, forced only)
    sparse24,  # noqa: F401  (to_sparse24 / from_sparse24)
    sparse24_gemm,  # noqa: F401  (mma.sp sparse24_linear, forced only)
)
