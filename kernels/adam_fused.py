"""What the fused AdamW kernels share, Triton (``adam_update.py``) and C
(``csrc/adam_update_cpu.c``, launched by ``step.native.cpu.adam_update``): the flags and
per-call constants of one ``step::adam_update`` call, its dtype groups and the guard's
floors (the dtype codes are ``float_bits.DTYPE_CODES``). Plain PyTorch: importing it
never imports Triton.
"""

from __future__ import annotations

import torch


def fused_flags(
    update_v: bool, srste_decay: float, n: int, want_z: bool, masks: list | None
) -> tuple[bool, bool, bool]:
    """``(masked, given, want_z)`` of a fused kernel: whether the SR-STE term applies,
    whether its masks are the caller's (else ranked from ``p``: also when the caller
    passes its cached masks of ``n``, ``m``, since ranking in registers costs less than
    reading them), and whether the AutoSwitch sums are produced (only while v updates)."""
    given = bool(srste_decay) and masks is not None and n == 0
    masked = given or (bool(srste_decay) and n > 0)
    return masked, given, bool(want_z and update_v)


def fused_scalars(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int,
    v_step: int, srste_decay: float,
) -> dict[str, float]:  # fmt: skip
    """The per-call constants of the fused kernels (the reference's formulas folded);
    ``sqrt_bc2_live``: the bias correction of a v that still updates under the guard."""
    bc1, bc2 = 1 - beta1**step, 1 - beta2**v_step
    return dict(
        lerp_w=1 - beta1, beta2=beta2, one_minus_b2=1 - beta2, decay=1 - lr * weight_decay,
        step_size=-lr / bc1, sqrt_bc2=bc2**0.5, sqrt_bc2_live=(1 - beta2**step) ** 0.5,
        eps=eps, srste=float(srste_decay),
    )  # fmt: skip


def guard_floors(
    v_floors: list[float] | None, idx: list[int], device: torch.device
) -> torch.Tensor | None:
    """float32 ``[len(idx)]``: the guard's floors of the tensors ``idx`` (one fused call),
    None without a guard (``v_floors`` None: v updates, or STEP's guard is off)."""
    if not v_floors:
        return None
    return torch.tensor([v_floors[i] for i in idx], dtype=torch.float32).to(device)


def dtype_groups(params: list[torch.Tensor]) -> dict[torch.dtype, list[int]]:
    """Indices of the non-empty ``params``, per dtype (one fused call each)."""
    groups: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        if p.numel():
            groups.setdefault(p.dtype, []).append(i)
    return groups
