"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is learned N:M sparse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.checks import check_nm
from ..ops.masked_linear import masked_linear
from .sparsity import ATTRIBUTE, NMSparsity


class SparseLinear(nn.Linear):
    """``nn.Linear`` with an N:M sparse weight (groups of ``m`` along ``in_features``).

    Same parameters and ``state_dict`` keys as ``nn.Linear``. The forward pass follows
    ``self.sparsity.mode``, which the optimizer sets (``step.optim.STEP`` switches it from
    ``"dense"`` to ``"ste"`` at the end of the precondition phase):

    - ``dense``: ``F.linear(x, weight, bias)``;
    - ``ste``: ``step.masked_linear`` (mask from the current weight, straight-through
      gradient to the dense weight);
    - ``fixed``: the stored mask (ASP), ``F.linear(x, where(mask, weight, 0), bias)``.

    x: ``[..., in_features]`` -> ``[..., out_features]``.
    """

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
        check_nm(n, m)
        if in_features % m:
            raise ValueError(
                f"SparseLinear(in_features={in_features}): N:M groups run along in_features, "
                f"which must be divisible by m={m}"
            )
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._sparsity = NMSparsity(n, m)
        self._mirror_sparsity()

    @property
    def sparsity(self) -> NMSparsity:
        """The N:M pattern and forward mode, shared with the optimizer via the weight."""
        return self._sparsity

    def _mirror_sparsity(self) -> None:
        # The module owns the state; the weight carries a reference so the optimizer,
        # which only sees parameters, finds it. Parameters get replaced (deepcopy,
        # unpickling, FSDP2 sharding, user assignment), so re-attach whenever they are.
        if "_sparsity" in self.__dict__ and self._parameters.get("weight") is not None:
            setattr(self._parameters["weight"], ATTRIBUTE, self._sparsity)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name == "weight":
            self._mirror_sparsity()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._mirror_sparsity()

    @classmethod
    def from_linear(cls, linear: nn.Linear, n: int = 2, m: int = 4) -> SparseLinear:
        """A SparseLinear sharing ``linear``'s parameters (no copy)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, n, m,
                    device="meta")  # fmt: skip
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.sparsity
        if state.mode == "ste":
            return masked_linear(x, self.weight, state.n, state.m, self.bias)
        if state.mode == "fixed":
            return F.linear(x, torch.where(state.mask, self.weight, 0), self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        s = self.sparsity
        return f"{super().extra_repr()}, n={s.n}, m={s.m}, mode={s.mode}"
