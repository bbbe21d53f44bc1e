"""Input validation shared by every op: runs before any kernel launch.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, bad
value) with a message naming the argument, what it got and how to fix it. The checks read
only shapes, dtypes and devices: they never synchronise with the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)
MAX_M = 32


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(
    t: object,
    name: str,
    *,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    ndim: int | None = None,
    min_ndim: int = 1,
) -> torch.Tensor:
    """``t`` is a tensor of one of ``dtypes`` with ``ndim`` (or at least ``min_ndim``) dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(
            f"{name} has dtype {t.dtype}; supported: {_dtype_names(dtypes)}. "
            f"Convert it first, e.g. {name}.to(torch.{_dtype_names(dtypes[:1])})"
        )
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dim() < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s) (groups run along the last "
            f"dim), got shape {tuple(t.shape)}"
        )
    return t


def check_nm(n: object, m: object) -> tuple[int, int]:
    """``n`` and ``m`` are ints with ``1 <= n < m <= 32``."""
    for value, label in ((n, "n"), (m, "m")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{label} must be an int, got {type(value).__name__} {value!r}")
    assert isinstance(n, int) and isinstance(m, int)  # for type checkers
    if not 1 <= n < m <= MAX_M:
        raise ValueError(
            f"N:M = {n}:{m} is out of range: need 1 <= n < m <= {MAX_M} "
            "(n weights kept in every group of m), e.g. n=2, m=4"
        )
    return n, m


def check_groups(t: torch.Tensor, name: str, m: int) -> None:
    """The last dim of ``t`` splits into groups of ``m``."""
    k = t.shape[-1]
    if k % m:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}: its last dim {k} is not divisible by m={m}. "
            f"N:M groups run along the last dim; pad it to a multiple of {m} "
            f"(e.g. {k + (-k) % m}) or choose an m that divides {k}"
        )


def check_dense_weight(dense: object, rows: int, k: int) -> None:
    """``dense``, when given, is the compressed weight's dense ``[rows, k]`` (its values
    are the caller's promise: checking them would cost the decode it saves)."""
    if dense is None:
        return
    check_tensor(dense, "dense", ndim=2)
    assert isinstance(dense, torch.Tensor)
    if tuple(dense.shape) != (rows, k):
        raise ValueError(
            f"dense has shape {tuple(dense.shape)} but the compressed weight is [{rows}, {k}]; "
            "pass the weight it was compressed from (or None)"
        )


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (``None`` skipped) are on one device; returns it."""
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(
                f"{name} is on {dev} but {first_name} is on {first}; move them to one device "
                f"(e.g. {name}.to({first_name}.device))"
            )
    return first


def check_same_dtype(**tensors: torch.Tensor | None) -> None:
    """All given tensors (``None`` skipped) share a dtype."""
    present = {k: v for k, v in tensors.items() if v is not None}
    first_name, first = next(iter(present.items()))
    for name, t in present.items():
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                f"cast one, e.g. {name}.to({first_name}.dtype)"
            )


def call_op(op: Callable, check: Callable[..., object], *args: object) -> object:
    """``op(*args)`` for a public function: the op's body validates, once, at the op
    boundary. Arguments that torch's schema would refuse with its own message, or coerce
    (a ``bool`` or numpy integer passed as an int), are checked here first instead, so the
    ``TypeError`` names the argument and the fix."""
    if not all(a is None or type(a) is int or isinstance(a, torch.Tensor) for a in args):
        check(*args)
    return op(*args)
