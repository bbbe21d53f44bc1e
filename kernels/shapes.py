"""Shape helpers shared by the ops and the kernel launchers (plain PyTorch)."""

import math

import torch


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """``t [..., K]`` -> ``[prod(...), K]``, a view where possible. Unlike
    ``t.reshape(-1, K)`` it works when K is 0 (the leading size cannot be inferred then)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])
