"""Raw float bits <-> float32 inside Triton kernels, exactly and with round-to-nearest-even
(the kernels that must match PyTorch bit for bit load raw bits: the Triton interpreter
truncates on ``.to(tl.bfloat16)``, a GPU rounds; integer rounding does the same on both).

``KIND`` is the dtype's code in :data:`float_bits.DTYPE_CODES` (0 fp32, 1 fp16, 2 bf16);
bits are int32 for fp32 and int16 for fp16/bf16.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def widen(bits, KIND: tl.constexpr):
    """Raw bits -> float32, exactly."""
    if KIND == 0:
        return bits.to(tl.float32, bitcast=True)
    elif KIND == 1:
        return bits.to(tl.float16, bitcast=True).to(tl.float32)
    else:
        return (bits.to(tl.int32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def narrow(x, KIND: tl.constexpr):
    """float32 -> raw bits of the dtype, rounded to nearest even (a NaN becomes the quiet
    NaN 0x7FC0 in bf16; PyTorch's own conversion may keep another NaN payload)."""
    if KIND == 0:
        return x.to(tl.int32, bitcast=True)
    elif KIND == 1:
        return x.to(tl.float16).to(tl.int16, bitcast=True)
    else:
        u = x.to(tl.uint32, bitcast=True)
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return tl.where(x != x, 0x7FC0, rounded.to(tl.int32)).to(tl.int16)
