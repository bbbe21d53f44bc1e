"""The sparsity state a sparse layer shares with the optimizer.

A sparse layer attaches a :class:`NMSparsity` to its weight (``weight.nm_sparsity``).
The optimizer finds it there, and changes ``mode`` when the recipe's phase changes; the
layer reads ``mode`` in every forward pass. So the switch from dense to masked forward
needs no user code, and survives ``DDP`` (which keeps the parameter objects).

Groups of ``m`` run along the weight's reduction dim, ``axis``: the last dim for
``nn.Linear`` ``[out, in]``, dim 1 for ``nn.Conv2d`` ``[out, in, kh, kw]`` (the TensorRT
rule: for each output channel and kernel position, groups along input channels), dim 0
for Hugging Face ``Conv1D`` ``[in, out]``. :meth:`NMSparsity.grouped` moves that dim last,
which is where every ``step`` op expects the groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..ops.checks import check_nm
from ..ops.nm_mask import nm_mask

MODES = ("dense", "ste", "fixed", "soft")
"""``dense``: plain weight; ``ste``: mask from the current weight, straight-through
gradient (STEP's mask-learning phase, SR-STE); ``fixed``: a stored mask (ASP, frozen);
``soft``: S-STE's ``beta * S(w)``, the soft threshold of the current weight
(:func:`step.ops.nm_soft_threshold`: the kept entries shrunk by the largest pruned
magnitude) times the fixed per-tensor scale :attr:`NMSparsity.beta`, straight-through
gradient to ``w`` (not scaled by ``beta``; ``step.optim.SSTE``)."""

ATTRIBUTE = "nm_sparsity"


@dataclass
class NMSparsity:
    """N:M pattern, grouping axis and forward mode of one weight."""

    n: int
    m: int
    mode: str = "dense"
    mask: torch.Tensor | None = None  # the fixed mask in mode "fixed", the weight's shape
    axis: int = -1
    beta: float | None = None  # mode "soft": S-STE's fixed scale, set by the optimizer
    _cache: tuple | None = field(default=None, repr=False, compare=False)
    # step.nn.freeze.mark_pending_masks: why the mask is not learned yet (None once it is)
    pending_masks: Callable[[], str | None] | None = field(default=None, repr=False, compare=False)
    # the flip-rate counters (:meth:`flip_counts`): the last mask a forward pass computed,
    # and running totals of entries changed (a 0-d tensor: no sync per step) and compared
    last_mask: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _flipped: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _compared: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_nm(self.n, self.m)
        self.set_mode(self.mode, self.mask)

    def set_mode(self, mode: str, mask: torch.Tensor | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown sparsity mode {mode!r}; expected one of {MODES}")
        if (mode == "fixed") != (mask is not None):
            raise ValueError("mode 'fixed' needs a mask, and only it takes one")
        self.mode, self.mask = mode, mask
        if mode == "fixed":
            self.last_mask = None  # a fixed mask never flips: the comparison's mask can go

    def grouped(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (the weight as stored) as a view with the grouping axis last."""
        return w.movedim(self.axis, -1)

    def ungrouped(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`grouped`."""
        return t.movedim(-1, self.axis)

    def compute_mask(self, w: torch.Tensor) -> torch.Tensor:
        """The N:M mask of ``w`` (bool, ``w``'s shape and memory layout), groups along
        ``axis``."""
        return self.mask_like(nm_mask(self.grouped(w.detach()), self.n, self.m), w)

    def soft_threshold(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """S-STE's soft threshold ``S(w)`` and the N:M mask of ``w`` (both ``w``'s shape and
        memory layout, groups along ``axis``; :func:`step.ops.nm_soft_threshold`). Caches
        nothing and counts no flips: the forward pass of mode ``"soft"`` does."""
        soft, mask = torch.ops.step.nm_soft_threshold(self.grouped(w.detach()), self.n, self.m)
        return self.mask_like(soft, w), self.mask_like(mask, w)

    def soft_scale(self) -> float:
        """:attr:`beta`, the scale of mode ``"soft"``, or the error saying who sets it."""
        if self.beta is None:
            raise RuntimeError(
                f"this {self.n}:{self.m} weight is in mode 'soft' but has no scale beta: "
                "step.optim.SSTE sets it from the initial weight when it is constructed "
                "over the model (or set NMSparsity.beta yourself, e.g. 1.0)"
            )
        return self.beta

    def mask_like(self, grouped_mask: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """A mask (or any tensor) of :meth:`grouped` ``w`` back in ``w``'s shape, and
        contiguous like ``w``, so masked weights have the weight's strides (convolutions
        sum in an order that depends on them)."""
        mask = self.ungrouped(grouped_mask)
        return mask.contiguous() if w.is_contiguous() else mask

    def current_mask(self, w: torch.Tensor) -> torch.Tensor:
        """:meth:`compute_mask`, cached until ``w`` changes.

        The cache key is the tensor's storage, shape and in-place version counter, so the
        forward passes of gradient accumulation and the optimizer's SR-STE term, which
        all see the same weight, share one mask; any update of ``w`` invalidates it.
        """
        mask = self.cached_mask(w)
        if mask is None:
            mask = self.compute_mask(w)
            self.remember_mask(w, mask)
        return mask

    @staticmethod
    def _cache_key(w: torch.Tensor) -> tuple | None:
        if torch.compiler.is_compiling() or w.is_inference():  # no version counter
            return None
        return (w.data_ptr(), w.device, tuple(w.shape), w.stride(), w._version)

    def cached_mask(self, w: torch.Tensor) -> torch.Tensor | None:
        """The cached mask of ``w`` if ``w`` has not changed since, else None."""
        key = self._cache_key(w)
        if key is None or self._cache is None or self._cache[0] != key:
            return None
        return self._cache[1]

    def remember_mask(self, w: torch.Tensor, mask: torch.Tensor) -> None:
        """Cache ``mask`` (computed elsewhere, e.g. by a fused kernel) as ``w``'s mask,
        and count the entries where it differs from the previous mask computed (the flip
        rate of Hu et al., ICML 2024: one comparison of two bool masks, no ranking)."""
        self._count_flips(mask)
        key = self._cache_key(w)
        if key is not None:
            # The detached alias keeps the storage alive, so its address cannot be reused
            # by a new weight while this entry exists.
            self._cache = (key, mask, w.detach())

    def _count_flips(self, mask: torch.Tensor) -> None:
        last = self.last_mask
        if last is not None and last.shape != mask.shape:
            return  # another view of the weight (an FSDP2 shard's in the optimizer): not a step
        self.last_mask = mask  # a bool mask: no autograd history to drop
        if torch.compiler.is_compiling() or last is None:
            return
        if last.device != mask.device:
            last = last.to(mask.device)
        flipped = (mask != last).sum()
        self._flipped = flipped if self._flipped is None else self._flipped + flipped
        self._compared += mask.numel()

    def restore_last_mask(self, w: torch.Tensor, mask: torch.Tensor, current: bool) -> None:
        """Set the last mask after a resume, without counting it: ``current`` says it is
        ``w``'s own mask (it was cached when saved), so it is cached again and the next
        forward pass does not recompute it (an uninterrupted run would not either)."""
        self.last_mask = mask
        if current:
            key = self._cache_key(w)
            if key is not None:
                self._cache = (key, mask, w.detach())

    def flip_counts(self) -> tuple[torch.Tensor | None, int]:
        """Running totals ``(flipped, compared)``: the mask entries that changed between
        consecutive masks the forward passes computed (int64 0-d tensor on the weight's
        device; None until two masks were compared) and the entries compared. Readers
        (:class:`step.nn.FlipRate`) difference two readings: the flip rate over an
        interval is ``d flipped / d compared``."""
        return self._flipped, self._compared

    def forget_mask(self) -> None:
        """Drop the cached mask. The optimizer calls this after updating the weight: the
        version counter alone misses a weight that is re-filled without one (FSDP2
        all-gathers each forward's unsharded weight into the same buffer)."""
        self._cache = None

    def check_groups(self, shape: torch.Size | tuple[int, ...], name: str) -> None:
        """``shape``'s grouping axis splits into groups of ``m``."""
        if not shape or shape[self.axis] % self.m:
            raise ValueError(
                f"{name} has shape {tuple(shape)}: its reduction dim (axis {self.axis}, size "
                f"{shape[self.axis] if shape else 0}) is not divisible by m={self.m}, so it "
                f"cannot be N:M {self.n}:{self.m}. Leave it dense, or choose an m that "
                "divides that dim"
            )


def sparsity_of(param: torch.Tensor) -> NMSparsity | None:
    """The :class:`NMSparsity` attached to ``param``, if any."""
    return getattr(param, ATTRIBUTE, None)


def attach_sparsity(param: torch.Tensor, n: int, m: int) -> NMSparsity:
    """Attach (or return the existing) :class:`NMSparsity` of ``param`` (groups along
    its last dim when new)."""
    state = sparsity_of(param)
    if state is None:
        state = NMSparsity(n, m)
        setattr(param, ATTRIBUTE, state)
    elif (state.n, state.m) != (n, m):
        raise ValueError(f"parameter already has N:M {state.n}:{state.m}, not {n}:{m}")
    return state
