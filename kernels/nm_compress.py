"""General N:M compression: values plus per-kept-element positions, and its inverse.

References: ``step.ops.nm_compress.nm_compress_ref`` / ``nm_decompress_ref``.
Values are moved as raw bits, so compress/decompress are exact for every float,
-0.0 and NaN payloads included.
"""

import torch
import triton
import triton.language as tl

from .float_bits import bits_view
from .nm_select import (
    group_block,
    group_launch,
    keep_top_n,
    kept_slot,
    magnitude_key,
)


@triton.jit
def _nm_compress_kernel(
    w_bits, values_out, indices_out, n_groups,
    N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BG: tl.constexpr,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr,
):  # fmt: skip
    groups = tl.program_id(0).to(tl.int64) * BG + tl.arange(0, BG)
    lane = tl.arange(0, MP)
    valid = (groups[:, None] < n_groups) & (lane[None, :] < M)
    bits = tl.load(w_bits + groups[:, None] * M + lane[None, :], mask=valid, other=0)
    kept = keep_top_n(magnitude_key(bits, valid, ABS_MASK, INF_BITS), N, MP)
    dst = groups[:, None] * N + kept_slot(kept, MP)
    store = valid & kept
    tl.store(values_out + dst, bits, mask=store)
    positions = tl.zeros([BG, MP], dtype=tl.int32) + lane[None, :]
    tl.store(indices_out + dst, positions.to(tl.uint8), mask=store)


@triton.jit
def _nm_decompress_kernel(
    values_bits, indices, dense_out, n_groups,
    N: tl.constexpr, M: tl.constexpr, NP: tl.constexpr, MP: tl.constexpr, BG: tl.constexpr,
):  # fmt: skip
    groups = tl.program_id(0).to(tl.int64) * BG + tl.arange(0, BG)
    in_range = groups < n_groups
    slot = tl.arange(0, NP)
    src_valid = in_range[:, None] & (slot[None, :] < N)
    src = groups[:, None] * N + slot[None, :]
    bits = tl.load(values_bits + src, mask=src_valid, other=0).to(tl.int32)
    pos = tl.load(indices + src, mask=src_valid, other=255).to(tl.int32)
    lane = tl.arange(0, MP)
    # Each output lane takes the one value whose position matches it; summing the bit
    # patterns with everything else zeroed selects it exactly (no float arithmetic).
    match = pos[:, None, :] == lane[None, :, None]
    out = tl.sum(tl.where(match, bits[:, None, :], 0), axis=2)
    dst_valid = in_range[:, None] & (lane[None, :] < M)
    tl.store(dense_out + groups[:, None] * M + lane[None, :], out, mask=dst_valid)


def nm_compress_triton(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` contiguous [..., K] -> (values [..., K*n/m] of w.dtype, indices uint8 same shape)."""
    out_shape = (*w.shape[:-1], w.shape[-1] // m * n)
    values = torch.empty(out_shape, dtype=w.dtype, device=w.device)
    indices = torch.empty(out_shape, dtype=torch.uint8, device=w.device)
    launch = group_launch(w, m)
    if launch is not None:
        grid, layout = launch
        _nm_compress_kernel[grid](bits_view(w), bits_view(values), indices, N=n, **layout)
    return values, indices


def nm_decompress_triton(
    values: torch.Tensor, indices: torch.Tensor, n: int, m: int
) -> torch.Tensor:
    """(values, indices) contiguous [..., G*n] -> dense [..., G*m], zeros (+0.0) elsewhere."""
    dense = torch.empty((*values.shape[:-1], values.shape[-1] // n * m), dtype=values.dtype,
                        device=values.device)  # fmt: skip
    n_groups = values.numel() // n
    if n_groups:
        mp, np_ = triton.next_power_of_2(m), triton.next_power_of_2(n)
        bg = group_block(mp * np_, budget=4096)  # its [BG, MP, NP] position match
        _nm_decompress_kernel[(triton.cdiv(n_groups, bg),)](
            bits_view(values), indices, bits_view(dense), n_groups,
            N=n, M=m, NP=np_, MP=mp, BG=bg,
        )  # fmt: skip
    return dense
