"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is learned N:M sparse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .sparse_module import SparseWeightMixin, compressed_forward, fused_ste_linear


class SparseLinear(SparseWeightMixin, nn.Linear):
    """``nn.Linear`` with an N:M sparse weight (groups of ``m`` along ``in_features``).

    Same parameters and ``state_dict`` keys as ``nn.Linear``. The forward pass follows
    ``self.sparsity.mode``, which the optimizer sets (``step.optim.STEP`` switches it from
    ``"dense"`` to ``"ste"`` at the end of the precondition phase):

    - ``dense``: ``F.linear(x, weight, bias)``;
    - ``ste``: ``step.masked_linear``: the first forward after a weight change ranks the
      weight inside the fused kernel and caches the mask it returns; until the weight
      changes again, micro-batches and the optimizer's SR-STE term reuse it. Straight-
      through gradient to the dense weight;
    - ``fixed``: the stored mask (ASP, frozen layers in training mode);
    - ``soft``: S-STE's ``beta * S(weight)`` (``step.optim.SSTE``), its mask cached like
      ``ste``'s; straight-through gradient to the dense weight.

    After :func:`step.freeze` and in eval mode it runs on the compressed weight
    (:func:`step.sparse24_linear` for 2:4 half precision, else :func:`step.nm_linear`).

    x: ``[..., in_features]`` -> ``[..., out_features]``.
    """

    AXIS = -1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        n: int = 2,
        m: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_sparsity(n, m)

    @classmethod
    def from_linear(cls, linear: nn.Linear, n: int = 2, m: int = 4) -> SparseLinear:
        """A SparseLinear sharing ``linear``'s parameters (no copy)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, n, m,
                    device="meta")  # fmt: skip
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sparsity.mode == "ste":
            return fused_ste_linear(self, x)
        y = compressed_forward(self, x)
        return y if y is not None else F.linear(x, self.sparse_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._sparse_extra_repr()}"
