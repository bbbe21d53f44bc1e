"""The mask flip rate: the fraction of N:M mask entries that change from one mask update
to the next (Hu et al., "Accelerating Transformer Pre-training with 2:4 Sparsity", ICML
2024), per layer and overall.

Each :class:`~step.nn.NMSparsity` counts flips when its forward pass computes a new
mask (one comparison with the previous mask; no ranking pass of its own). A
:class:`FlipRate` reads those running totals and reports the mean rate over the mask
updates since its previous reading, so several readers (a progress bar, a log, the
optimizer's :meth:`~step.optim.NMAdamW.flip_rate`) never disturb one another.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .sparsity import NMSparsity, sparsity_of


@dataclass(frozen=True)
class FlipReading:
    """One reading: ``overall`` (all layers' flipped entries over all compared entries)
    and ``layers`` (name -> rate), each None where no two masks were compared since the
    previous reading (dense phase, a fixed mask, the first step)."""

    overall: float | None
    layers: dict[str, float | None]


class FlipRate:
    """Reads the flip rate of the sparse weights of ``source``: a model (rates named by
    layer) or an iterable of parameters (named by their index)."""

    def __init__(self, source: nn.Module | Iterable[torch.Tensor]) -> None:
        if isinstance(source, nn.Module):
            named = [(name.removesuffix(".weight"), p) for name, p in source.named_parameters()]
        else:
            named = [(str(i), p) for i, p in enumerate(source)]
        self._params: list[tuple[str, torch.Tensor, NMSparsity]] = [
            (name, p, state) for name, p in named if (state := sparsity_of(p)) is not None
        ]
        self._seen = dict(self._counts())

    def _counts(self) -> list[tuple[str, tuple[int, int]]]:
        """Every layer's running ``(flipped, compared)``, with one host sync per device
        the counters live on (not one per layer)."""
        totals = [state.flip_counts() for _, _, state in self._params]
        by_device: dict[torch.device, list[int]] = {}
        for i, (flipped, _) in enumerate(totals):
            if flipped is not None:
                by_device.setdefault(flipped.device, []).append(i)
        flipped_host = [0] * len(totals)
        for indices in by_device.values():
            values = torch.stack([totals[i][0] for i in indices]).tolist()
            for i, value in zip(indices, values, strict=True):
                flipped_host[i] = int(value)
        return [(name, (flipped_host[i], totals[i][1]))
                for i, (name, _, _) in enumerate(self._params)]  # fmt: skip

    def read(self) -> FlipReading:
        """The rates since the previous :meth:`read` (or construction). A host sync:
        read it at logging intervals, not every step."""
        layers: dict[str, float | None] = {}
        total_flipped = total_compared = 0
        for name, (flipped, compared) in self._counts():
            before_flipped, before_compared = self._seen[name]
            self._seen[name] = (flipped, compared)
            d_flipped, d_compared = flipped - before_flipped, compared - before_compared
            layers[name] = d_flipped / d_compared if d_compared else None
            total_flipped += d_flipped
            total_compared += d_compared
        overall = total_flipped / total_compared if total_compared else None
        return FlipReading(overall, layers)

    def state_dict(self) -> dict[str, Any]:
        """What a reader built after a resume needs to read what this one would have:
        ``"pending"``, the counts not yet read (per layer, ``[flipped, compared]``), and
        ``"last_masks"``, each layer's last computed mask (the next mask update is
        compared with it; bool, the weight's shape), with ``"current"`` naming the
        layers whose last mask is their current weight's own (it is cached again on
        load, so the next forward pass does not count it twice). Save it with the
        checkpoint; load it after the model's state."""
        pending, masks, current = {}, {}, []
        for name, (flipped, compared) in self._counts():
            seen_flipped, seen_compared = self._seen[name]
            pending[name] = [flipped - seen_flipped, compared - seen_compared]
        for name, p, state in self._params:
            if state.last_mask is not None:
                masks[name] = state.last_mask
                if state.cached_mask(p) is state.last_mask:
                    current.append(name)
        return {"pending": pending, "last_masks": masks, "current": current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the layers' last masks (without counting them)
        and the pending counts, which the next reading includes. Call it after loading
        the model's state (a cached mask belongs to the weight as loaded)."""
        masks, current = state.get("last_masks", {}), set(state.get("current", ()))
        for name, p, layer in self._params:
            if name in masks:
                layer.restore_last_mask(p, masks[name].to(p.device), name in current)
        pending = state.get("pending", {})
        for name, (flipped, compared) in self._counts():
            pending_flipped, pending_compared = pending.get(name, (0, 0))
            self._seen[name] = (flipped - pending_flipped, compared - pending_compared)
