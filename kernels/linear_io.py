"""What the matmul launchers share: x as unit-stride rows, and y when nothing is summed."""

import torch


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t [..., K]`` -> ``[T, K]`` with unit stride along K (a view where possible)."""
    rows = t.reshape(-1, t.shape[-1])
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
