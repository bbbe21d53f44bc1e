"""What the matmul launchers share: x as unit-stride rows, y when nothing is summed, tiles."""

import functools

import torch

from .shapes import as_matrix


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t [..., K]`` -> ``[T, K]`` with unit stride along K (a view where possible)."""
    rows = as_matrix(t)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def linear_output(
    x2: torch.Tensor, n_out: int, bias: torch.Tensor | None
) -> tuple[torch.Tensor, bool]:
    """``(y [T, N] of x2's dtype, done)``. ``done``: y is already final, because it is
    empty or K is 0 (an empty sum: y is the bias, or zeros); no kernel needs to run."""
    y = torch.empty((x2.shape[0], n_out), dtype=x2.dtype, device=x2.device)
    if y.numel() == 0:
        return y, True
    if x2.shape[1] == 0:
        y.copy_(bias.expand_as(y) if bias is not None else torch.zeros_like(y))
        return y, True
    return y, False


def token_tile(n_tokens: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BM, warps)``: tokens per program of the matmul kernels, and warps per program.

    Up to 16 tokens, 16 (decode: a single row of programs reads every weight byte once).
    Up to 64 tokens, or float32 (its IEEE dot runs on the FMA units, operands in
    registers), 64. Beyond, 128 tokens and 8 warps: each weight tile is loaded half as
    often, and a Hopper warpgroup's 64-row wgmma is filled twice.
    """
    warps = 8 if dtype == torch.float32 else 4
    if n_tokens <= 16:
        return 16, warps
    if n_tokens <= 64 or dtype == torch.float32:
        return 64, warps
    return 128, 8


@functools.cache
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device``; 0 for any other device."""
    if device.type != "cuda":
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


def output_rows(bm: int, n_out: int, device: torch.device, decode_largest: int = 64) -> int:
    """Output rows per program for ``bm`` tokens per program: square tiles, except in
    decode (``bm == 16``), where ``decode_rows`` sizes them."""
    return decode_rows(n_out, device, decode_largest) if bm == 16 else bm


def decode_rows(n_out: int, device: torch.device, largest: int = 64) -> int:
    """Output rows per program in decode (one row of programs): the largest power of two
    from ``largest`` down to 16 that still gives two programs per SM, so that every SM
    streams weights (16 if none does; ``largest`` off a GPU)."""
    rows = largest
    while rows > 16 and -(-n_out // rows) < 2 * _sm_count(device):
        rows //= 2
    return rows
