"""Floats as integers: the bit views the mask rule and the kernels compare.

For IEEE floats, clearing the sign bit gives an integer that orders like ``|w|``;
clamping it at the bit pattern of +inf makes NaN rank like (and tie with) +inf.
"""

import torch

MAGNITUDE_BITS = {
    # dtype: (integer view of the same width, mask clearing the sign, bits of +inf)
    torch.float16: (torch.int16, 0x7FFF, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80),
    torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
}


DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
"""The ``KIND`` code of a float dtype in the kernels that convert raw bits
(``float_jit.py``, the C optimizer step)."""


def bits_view(t: torch.Tensor) -> torch.Tensor:
    """The same memory as integers of the same width (no copy)."""
    return t.view(MAGNITUDE_BITS[t.dtype][0])


def magnitude_constants(dtype: torch.dtype) -> tuple[int, int]:
    """``(abs_mask, inf_bits)`` of ``dtype``."""
    _, abs_mask, inf_bits = MAGNITUDE_BITS[dtype]
    return abs_mask, inf_bits
