"""``SparseConv2d``: ``nn.Conv2d`` with N:M groups along the input channels."""

from __future__ import annotations

import torch
from torch import nn

from .sparse_module import SparseWeightMixin


class SparseConv2d(SparseWeightMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight ``[out, in/groups, kh, kw]`` is N:M along ``in``.

    The TensorRT rule: for each output channel and kernel position, every ``m``
    consecutive input channels keep ``n``, so ``in_channels / groups`` must be divisible
    by ``m``. Same parameters and ``state_dict`` keys as ``nn.Conv2d``; forward modes as
    :class:`~step.nn.SparseLinear`. Frozen layers keep their pruned dense weight for
    cuDNN (no compressed convolution kernel exists yet).
    """

    AXIS = 1
    LINEAR_LIKE = False

    def __init__(self, *args, n: int = 2, m: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_sparsity(n, m)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, n: int = 2, m: int = 4) -> SparseConv2d:
        """A SparseConv2d sharing ``conv``'s parameters (no copy)."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, n=n, m=m, device="meta")  # fmt: skip
        layer.weight = conv.weight
        layer.bias = conv.bias
        layer.train(conv.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.sparse_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._sparse_extra_repr()}"
