"""``SparseWeightMixin``: what every sparse layer shares.

A sparse layer owns one :class:`NMSparsity` and mirrors it onto its weight, computes the
weight its forward pass uses from the sparsity mode, and can be *frozen* for inference:
the weight pruned to exact N:M (+0.0 at pruned entries), the mask fixed, and, for the
linear-like layers, a compressed copy that the eval-mode forward runs on.
"""

from __future__ import annotations

import torch

from ..functional import ste_masked, ste_soft
from ..ops.compressed_weight import CompressedWeight, compress_weight
from ..ops.dispatch import only_reference
from .sparsity import ATTRIBUTE, NMSparsity


class SparseWeightMixin:
    """Mixed in before the ``nn`` layer class; ``AXIS`` is the weight's reduction dim."""

    AXIS: int = -1
    LINEAR_LIKE: bool = True  # y = x @ W.T with W grouped along in: compressed inference

    def _init_sparsity(self, n: int, m: int) -> None:
        state = NMSparsity(n, m, axis=self.AXIS)
        state.check_groups(self.weight.shape, f"{type(self).__name__}.weight")
        self._sparsity = state
        self._frozen = False
        self._compressed_key: tuple | None = None
        self._pruned_key: tuple | None = None
        self._mirror_sparsity()

    @property
    def sparsity(self) -> NMSparsity:
        """The N:M pattern and forward mode, shared with the optimizer via the weight."""
        return self._sparsity

    @property
    def frozen(self) -> bool:
        """True after :meth:`freeze`: the eval-mode forward runs on compressed weights."""
        return self._frozen

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

    def sparse_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: dense, STE-masked, fixed-masked or S-STE's
        scaled soft threshold by mode."""
        state, w = self.sparsity, self.weight
        if state.mode == "ste":
            return ste_masked(w, state.current_mask(w))
        if state.mode == "soft":
            return soft_weight(state, w)
        if state.mode == "fixed":
            if self._frozen and not torch.compiler.is_compiling():
                if self._pruned_key == self._weight_key():  # pruned in place, unchanged
                    return w
            if state.mask.device != w.device:  # the mask is no buffer: follow .to()
                state.mask = state.mask.to(w.device)
            return torch.where(state.mask, w, 0)
        return w

    def current_mask(self) -> torch.Tensor:
        """The mask in force: the fixed mask, else the N:M mask of the current weight."""
        state = self.sparsity
        if state.mode == "fixed":
            return state.mask.to(self.weight.device)
        return state.current_mask(self.weight)

    @torch.no_grad()
    def freeze(self, compressed: CompressedWeight | None = None) -> None:
        """Prune the weight to exact N:M in place (+0.0 at pruned entries) and fix the
        mask (:meth:`current_mask`). In mode ``"soft"`` the weight becomes the one the
        forward pass used, ``beta * S(w)``, with the soft threshold's mask. ``compressed``:
        the compressed copy of the pruned weight if the caller has it (loaders), else it
        is computed."""
        state = self.sparsity
        if state.mode == "soft":
            beta = state.soft_scale()
            soft, mask = state.soft_threshold(self.weight)
            self.weight.copy_(ste_soft(self.weight, soft, beta))
        else:
            mask = self.current_mask()
        self.weight.masked_fill_(~mask, 0)
        self._pruned_key = self._weight_key()
        self.sparsity.set_mode("fixed", mask)
        self._frozen = True
        if compressed is not None:
            self.set_compressed_weight(compressed)
        elif self.LINEAR_LIKE:
            self.compressed_weight()

    # ---------------------------------------------------------- compressed inference

    def compressed_weight(self) -> CompressedWeight:
        """The frozen weight in its best compressed layout.

        Kept in the non-persistent buffers ``weight_values`` / ``weight_meta`` (so
        ``.to()`` moves them and ``state_dict`` stays that of the dense layer), and
        rebuilt in eager mode when the weight changed since (``.half()``, training).
        """
        if not self._frozen:
            raise RuntimeError(f"{type(self).__name__} is not frozen: call step.freeze first")
        if not torch.compiler.is_compiling() and self._compressed_key != self._weight_key():
            pruned = self.sparse_weight().detach()  # frozen: the fixed-mask weight
            self.set_compressed_weight(
                compress_weight(self.sparsity.grouped(pruned), self.sparsity.n, self.sparsity.m)
            )
        return CompressedWeight(self._layout, self.weight_values, self.weight_meta,
                                self.sparsity.n, self.sparsity.m)  # fmt: skip

    def set_compressed_weight(self, weight: CompressedWeight) -> None:
        """Install the compressed copy of the current frozen weight (loaders call this
        with what they read, so nothing is recompressed)."""
        self._layout = weight.layout
        self.register_buffer("weight_values", weight.values, persistent=False)
        self.register_buffer("weight_meta", weight.meta, persistent=False)
        self._compressed_key = self._weight_key()

    def _weight_key(self) -> tuple:
        # Inference tensors (made under torch.inference_mode) have no version counter;
        # their in-place changes are not seen (documented).
        w = self.weight
        return (w.data_ptr(), w.dtype, w.device, -1 if w.is_inference() else w._version)

    def _use_compressed(self) -> bool:
        return self._frozen and not self.training

    def _sparse_extra_repr(self) -> str:
        s = self.sparsity
        return f"n={s.n}, m={s.m}, mode={s.mode}" + (", frozen" if self._frozen else "")


def compressed_forward(layer, x: torch.Tensor) -> torch.Tensor | None:
    """``x @ W.T + b`` on the compressed weight of a frozen linear-like layer in eval
    mode, or None where the layer should run its usual forward.

    The compressed weight is read where a kernel reads it directly. Where only the
    reference can run on ``x``'s device (it decodes, then multiplies: slower than dense,
    same result) the layer runs its usual forward on its pruned weight without calling
    the op (a cached question, no decision); elsewhere the op decides, once, and
    multiplies by the pruned weight (passed as ``dense``) if it picks the reference for
    this call. A compiled model always runs the op (the choice is not traced).
    """
    if not layer._use_compressed():
        return None
    cw = layer.compressed_weight()
    if not torch.compiler.is_compiling() and only_reference(cw.op, x.device):
        return None
    # the weight is that dense only while it is as freeze pruned it (a later load or
    # update leaves entries the compressed copy, rebuilt from the mask, does not have);
    # a traced model cannot ask (no version counters): it masks, which the graph fuses
    if torch.compiler.is_compiling():
        dense = layer.sparse_weight()
    else:
        dense = layer.weight if layer._pruned_key == layer._weight_key() else None
    return cw.linear(x, layer.bias, None if dense is None else layer.sparsity.grouped(dense))


def soft_weight(state: NMSparsity, w: torch.Tensor) -> torch.Tensor:
    """S-STE's forward weight ``beta * S(w)`` (mode ``"soft"``), straight-through gradient
    to ``w``. The op's mask is the layer's mask: the first forward after a weight change
    caches it (and counts its flips); micro-batches find it cached."""
    beta = state.soft_scale()
    soft, mask = state.soft_threshold(w)
    if state.cached_mask(w) is None:
        state.remember_mask(w, mask)
    return ste_soft(w, soft, beta)


def fused_ste_linear(layer, x: torch.Tensor) -> torch.Tensor:
    """``x @ (W * mask).T + b`` of a linear-like layer in ``ste`` mode, on the fused
    ``step::masked_linear`` op (straight-through gradient to the dense weight).

    The op sees the weight as ``[out, in]`` (:meth:`NMSparsity.grouped`: a transposed
    view for ``SparseConv1D``). If the weight changed since the layer's mask was cached,
    the op ranks it (inside the kernel where one runs) and the mask it returns is cached
    for micro-batches and the SR-STE term; otherwise the cached mask is passed in.
    """
    state = layer.sparsity
    w_rows = state.grouped(layer.weight)
    cached = state.cached_mask(layer.weight)
    mask = None if cached is None else state.grouped(cached)
    y, computed = torch.ops.step.masked_linear(x, w_rows, state.n, state.m, layer.bias, mask)
    if mask is None:
        state.remember_mask(layer.weight, state.mask_like(computed, layer.weight))
    return y
