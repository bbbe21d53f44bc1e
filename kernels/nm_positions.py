"""Bit-packed N:M positions: what :func:`step.nm_linear` streams besides the values.

:func:`step.nm_compress` gives one uint8 position (0..m-1) per kept value. Kernels read
them packed, ``b = position_bits(m) = ceil(log2 m)`` bits each (1 bit for m=2, 2 for
m=4, 3 for m=8, 5 for m=32): the positions of one row form a little-endian bit stream,
entry ``j`` at bits ``[j*b, (j+1)*b)``, stored in int32 words ``[rows, words_per_row]``,
``words_per_row = ceil(kept * b / 32)``. With ``b`` not a power of two an entry may
straddle two words; readers combine word ``i`` and ``i + 1`` into 64 bits. For an fp16
weight at 1:4 this moves 2 bytes + 2 bits per 4 weights: 28% of the dense bytes, against
37.5% with a byte per position.
"""

from __future__ import annotations

import torch

WORD_BITS = 32


def position_bits(m: int) -> int:
    """Bits per packed position for groups of ``m``: ``ceil(log2 m)`` (at least 1)."""
    return max(1, (m - 1).bit_length())


def words_per_row(kept: int, m: int) -> int:
    """int32 words holding the ``kept`` positions of one row."""
    return -(-kept * position_bits(m) // WORD_BITS)


def _bit_offsets(kept: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.arange(kept, device=device, dtype=torch.int64) * position_bits(m)
    return offsets // WORD_BITS, offsets % WORD_BITS


def pack_positions(indices: torch.Tensor, m: int) -> torch.Tensor:
    """uint8 positions ``[rows, kept]`` (each < m) -> int32 words ``[rows, words_per_row]``."""
    rows, kept = indices.shape
    word, shift = _bit_offsets(kept, m, indices.device)
    pos = indices.to(torch.int64)
    width = words_per_row(kept, m)
    acc = torch.zeros((rows, width + 1), dtype=torch.int64, device=indices.device)
    # bits of different entries never overlap, so adding them is OR-ing them
    low = (pos << shift) & 0xFFFFFFFF
    high = pos >> (WORD_BITS - shift)  # the part that spills into the next word
    acc.scatter_add_(1, word.expand(rows, kept), low)
    acc.scatter_add_(1, (word + 1).expand(rows, kept), high)
    words = acc[:, :width]
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_positions(words: torch.Tensor, m: int, kept: int) -> torch.Tensor:
    """int32 words ``[rows, words_per_row]`` -> uint8 positions ``[rows, kept]``."""
    rows = words.shape[0]
    word, shift = _bit_offsets(kept, m, words.device)
    unsigned = words.to(torch.int64) & 0xFFFFFFFF
    padded = torch.cat([unsigned, unsigned.new_zeros((rows, 1))], dim=1)
    pair = padded[:, word] | (padded[:, word + 1] << WORD_BITS)
    return ((pair >> shift) & ((1 << position_bits(m)) - 1)).to(torch.uint8)
