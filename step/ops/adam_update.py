"""``step::adam_update``: one multi-tensor AdamW step in either STEP phase.

For every tensor ``p`` with gradient ``g``, first moment ``m`` and second moment ``v``
(states in float32; ``p``/``g`` float32, float16 or bfloat16, computed in float32):

    if srste_decay and (n or masks):         # mask-learning phase, SR-STE term
        g = g + srste_decay * (1 - mask) * p     # mask = masks[i] or nm_mask(p, n, m)
    m = b1*m + (1-b1)*g
    if update_v:                             # precondition phase (and baselines)
        z += sum |v_new - v_old|             # the AutoSwitch sample's numerator
        v = b2*v + (1-b2)*g^2
    elif v_floors and v < v_floors[i]:       # frozen v, but no usable estimate yet:
        v = b2*v + (1-b2)*g^2                #   it keeps estimating (STEP's guard)
        (bias-correct with 1-b2^step below, like a v that never froze)
    p = p - lr*wd*p
    p = p - lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^v_step)) + eps)

``v_step`` is ``step`` while v updates and the switch step ``t0`` once it is frozen.
``v_floors`` (one float per tensor, empty for none) is STEP's guard of a frozen v
(docs/optim.md): an element whose frozen v lies below its tensor's floor is not a usable
estimate (it saw almost no gradient before the switch), so it goes on updating, as in
AdamW, until it reaches the floor; the test ``v < floor`` is made before the update. The
mask comes from ``p`` before the update (the same mask as this step's forward pass):
given (``masks``, bool of each param's shape: the mask of a weight whose groups do not
run along its last dim), computed with groups along the last dim (``n``, ``m``), or
both: then ``masks`` must be the masks ``n``, ``m`` give (a layer's cached mask), and
a backend may use either (the reference uses them; the fused kernels rank in registers,
cheaper than reading a mask). Returns float32 ``[2]``: ``(sum |v_new - v_old|,
sum v_new)`` over all elements, the AutoSwitch sample's numerator and normaliser
(zeros unless ``want_z`` and ``update_v``).

The reference uses ``torch._foreach_*`` ops in the same order as
``torch.optim.AdamW(foreach=True)``, so the precondition phase matches AdamW.
"""

from __future__ import annotations

import torch

from .checks import FLOAT_DTYPES, check_nm
from .dispatch import choose, register


def adam_update_ref(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    v_step: int,
    update_v: bool,
    srste_decay: float,
    n: int,
    m: int,
    want_z: bool,
    masks: list[torch.Tensor] | None = None,
    v_floors: list[float] | None = None,
) -> torch.Tensor:
    """Reference: updates params, exp_avgs and (if ``update_v``, or where below
    ``v_floors``) exp_avg_sqs in place."""
    stats = torch.zeros(2, dtype=torch.float32, device=params[0].device)
    p32 = [p if p.dtype == torch.float32 else p.float() for p in params]
    g32 = [g.float() for g in grads]
    if srste_decay and (n or masks is not None):
        for i, p in enumerate(params):
            kept = masks[i] if masks is not None else torch.ops.step.nm_mask(p, n, m)
            g32[i] = g32[i] + srste_decay * torch.where(kept, 0, p32[i])
    torch._foreach_lerp_(exp_avgs, g32, 1 - beta1)
    if update_v:
        if want_z:  # v_new - v_old = (1-b2) * (g^2 - v_old): no copy of v needed
            for g, v in zip(g32, exp_avg_sqs, strict=True):
                stats[0] += (g * g - v).abs().sum() * (1 - beta2)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, g32, g32, 1 - beta2)
        if want_z:
            for v in exp_avg_sqs:
                stats[1] += v.sum()
    live = None
    if v_floors and not update_v:  # the guard: v below its floor keeps estimating
        live = [v < floor for v, floor in zip(exp_avg_sqs, v_floors, strict=True)]
        for v, g, below in zip(exp_avg_sqs, g32, live, strict=True):
            v.copy_(torch.where(below, v * beta2 + (1 - beta2) * g * g, v))
    if weight_decay:
        torch._foreach_mul_(p32, 1 - lr * weight_decay)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**v_step
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if live is None:
        torch._foreach_div_(denom, bias_correction2**0.5)
    else:
        live_correction = (1 - beta2**step) ** 0.5
        for d, below in zip(denom, live, strict=True):
            d.copy_(torch.where(below, d / live_correction, d / bias_correction2**0.5))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(p32, exp_avgs, denom, -lr / bias_correction1)
    for p, p_new in zip(params, p32, strict=True):
        if p_new is not p:
            p.copy_(p_new)
    return stats


def check_adam_update_args(
    params, grads, exp_avgs, exp_avg_sqs, beta1, beta2, step, v_step, srste_decay, n, m,
    masks=None, v_floors=None,
) -> None:  # fmt: skip
    lists = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    count = len(params)
    if count == 0:
        raise ValueError("adam_update needs at least one parameter")
    for name, tensors in lists.items():
        if len(tensors) != count:
            raise ValueError(f"{name} has {len(tensors)} tensors but params has {count}")
    for i, (p, g, ea, eas) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)):
        if p.dtype not in FLOAT_DTYPES or g.dtype != p.dtype:
            raise TypeError(f"params[{i}] / grads[{i}]: dtypes {p.dtype} / {g.dtype}; both must "
                            "be one of float32, float16, bfloat16")  # fmt: skip
        if ea.dtype != torch.float32 or eas.dtype != torch.float32:
            raise TypeError(f"exp_avgs[{i}] / exp_avg_sqs[{i}] must be float32 (optimizer state)")
        if not (p.shape == g.shape == ea.shape == eas.shape):
            raise ValueError(
                f"tensor {i}: param {tuple(p.shape)}, grad {tuple(g.shape)}, exp_avg "
                f"{tuple(ea.shape)}, exp_avg_sq {tuple(eas.shape)} must all match"
            )
        if len({p.device, g.device, ea.device, eas.device}) != 1:
            raise ValueError(f"tensor {i}: param, grad and states must be on one device")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas ({beta1}, {beta2}) must lie in [0, 1)")
    if step < 1 or v_step < 1 or v_step > step:
        raise ValueError(f"need 1 <= v_step <= step, got step={step}, v_step={v_step}")
    if v_floors:
        if len(v_floors) != count:
            raise ValueError(f"v_floors has {len(v_floors)} values but params has {count}; "
                             "give one floor per tensor (0.0: no guard), or none")  # fmt: skip
        bad = [(i, f) for i, f in enumerate(v_floors) if not f >= 0.0 or f == float("inf")]
        if bad:
            raise ValueError(f"v_floors[{bad[0][0]}] is {bad[0][1]!r}; floors must be finite "
                             "and >= 0")  # fmt: skip
    if masks is not None:  # given alone, or as the cached masks of n, m (not re-ranked here)
        if len(masks) != count:
            raise ValueError(f"masks has {len(masks)} tensors but params has {count}")
        for i, (p, mask) in enumerate(zip(params, masks, strict=True)):
            if mask.dtype != torch.bool or mask.shape != p.shape or mask.device != p.device:
                raise ValueError(
                    f"masks[{i}] must be a bool tensor of params[{i}]'s shape "
                    f"{tuple(p.shape)} on {p.device}, got {mask.dtype} {tuple(mask.shape)} "
                    f"on {mask.device}"
                )
    if srste_decay and (n or masks is None):
        check_nm(n, m)
        for i, p in enumerate(params):
            if p.dim() == 0 or p.shape[-1] % m:
                raise ValueError(
                    f"params[{i}] has shape {tuple(p.shape)}: its last dim is not divisible "
                    f"by m={m}, so it cannot take the N:M SR-STE term"
                )


register("adam_update", "reference")(adam_update_ref)


@register("adam_update", "triton")
def _adam_update_triton(*args):
    from step.kernels.adam_update import adam_update_triton  # Triton loads at the first call

    return adam_update_triton(*args)


@torch.library.custom_op(
    "step::adam_update", mutates_args=("params", "exp_avgs", "exp_avg_sqs")
)  # fmt: skip
def _adam_update_op(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    v_step: int,
    update_v: bool,
    srste_decay: float,
    n: int,
    m: int,
    want_z: bool,
    masks: list[torch.Tensor],
    v_floors: list[float] | None = None,
) -> torch.Tensor:
    masks = masks or None  # the schema has no optional list: [] means "compute them"
    v_floors = list(v_floors) if v_floors and not update_v else None  # no guard: v updates
    check_adam_update_args(
        params, grads, exp_avgs, exp_avg_sqs, beta1, beta2, step, v_step, srste_decay, n, m,
        masks, v_floors,
    )  # fmt: skip
    _, impl = choose("adam_update", params[0].device, params)
    return impl(params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps, weight_decay,
                step, v_step, update_v, srste_decay, n, m, want_z, masks, v_floors)  # fmt: skip


@_adam_update_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, *args):
    return params[0].new_empty(2, dtype=torch.float32)


def adam_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    v_step: int | None = None,
    update_v: bool = True,
    srste_decay: float = 0.0,
    n: int = 0,
    m: int = 0,
    want_z: bool = False,
    masks: list[torch.Tensor] | None = None,
    v_floors: list[float] | None = None,
) -> torch.Tensor:
    """One fused AdamW/STEP step over many tensors (module docstring).

    Args:
        params, grads: float32/float16/bfloat16, matching shapes; params updated in place.
        exp_avgs, exp_avg_sqs: float32 states, updated in place (exp_avg_sqs only when
            ``update_v``).
        step: this step's number t (from 1); ``v_step``: t for v's bias correction
            (default ``step``; the switch step ``t0`` once v is frozen).
        srste_decay, n, m: the SR-STE term ``srste_decay * (1 - mask) * p`` with the N:M
            mask of ``p`` along its last dim (0 = none).
        masks: bool tensors of the params' shapes to use in the SR-STE term instead of
            computing masks (then ``n``/``m`` are not needed); with ``n``/``m`` too, they
            must be those masks (cached), and a backend may rank instead of reading them.
        want_z: also return ``(sum |v_new - v_old|, sum v_new)`` over all elements.
        v_floors: with ``update_v=False``, one floor per tensor: elements whose v lies
            below it keep updating v (bias-corrected with ``step``), the others stay
            frozen (STEP's guard; None or 0.0: all frozen).

    Returns:
        float32 ``[2]`` (zeros unless ``want_z`` and ``update_v``).
    """
    return torch.ops.step.adam_update(
        params, grads, exp_avgs, exp_avg_sqs, float(lr), float(beta1), float(beta2),
        float(eps), float(weight_decay), int(step), int(step if v_step is None else v_step),
        bool(update_v), float(srste_decay), int(n), int(m), bool(want_z), masks or [],
        [float(f) for f in v_floors or ()],
    )  # fmt: skip
