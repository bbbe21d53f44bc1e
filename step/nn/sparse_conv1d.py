"""``SparseConv1D``: Hugging Face ``Conv1D`` (GPT-2) with N:M groups along ``in``.

``transformers`` is not imported: the layer reproduces ``Conv1D`` (weight ``[in, out]``,
``y = x @ W + b``) with the same parameters and ``state_dict`` keys, so a sparsified
GPT-2 saves and loads like the original.
"""

from __future__ import annotations

import torch
from torch import nn

from .sparse_module import SparseWeightMixin, compressed_forward, fused_ste_linear


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a ``transformers`` ``Conv1D`` (checked without importing it)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


class SparseConv1D(SparseWeightMixin, nn.Module):
    """GPT-2's ``Conv1D(nf, nx)``: weight ``[nx, nf]`` (in, out), N:M along ``nx``.

    x: ``[..., nx]`` -> ``[..., nf]``. Forward modes as :class:`~step.nn.SparseLinear`.
    """

    AXIS = 0

    def __init__(
        self,
        nf: int,
        nx: int,
        n: int = 2,
        m: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(nf, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.02)  # Conv1D's own initialisation
        self._init_sparsity(n, m)

    @classmethod
    def from_conv1d(cls, conv: nn.Module, n: int = 2, m: int = 4) -> SparseConv1D:
        """A SparseConv1D sharing a ``transformers`` ``Conv1D``'s parameters (no copy)."""
        layer = cls(conv.nf, conv.weight.shape[0], n, m, device="meta")
        layer.weight = conv.weight
        layer.bias = conv.bias
        layer.train(conv.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sparsity.mode == "ste":
            return fused_ste_linear(self, x)
        y = compressed_forward(self, x)
        if y is not None:
            return y
        flat = x.reshape(-1, self.nx)
        return torch.addmm(self.bias, flat, self.sparse_weight()).view(*x.shape[:-1], self.nf)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, {self._sparse_extra_repr()}"
