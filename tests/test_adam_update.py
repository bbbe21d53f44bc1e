"""step::adam_update: the fused kernels (Triton, and the C ``cpu`` backend) against
``adam_update_ref``.

Each test runs several consecutive steps on the kernel's tensors (so the cached tables
are reused and grads are fresh every step); before every step the reference gets clones
of the kernel's current state, so each comparison is one step from identical inputs.

Tolerances. Both sides compute in float32 with the same formulas, but not the same
roundings: torch's vectorised CPU kernels (and the GPU, for Triton) fuse some
multiply-adds, and z/sum(v) are summed in a different order.
- float32 results (params, exp_avg, exp_avg_sq): a few fp32 roundings of the largest
  operand, so rtol 1e-6 (~8 ulp) with atol 1e-6 x the tensor's max |value| (for entries
  that cancel towards 0).
- float16/bfloat16 params: the fp32 results differ by a few fp32 ulps, which can move a
  value across a rounding boundary of the much coarser param dtype: at most 1 ulp of
  the param dtype, counted exactly on the bit patterns. That needs the exact value within
  a few fp32 ulps of a rounding midpoint (odds ~2^-13 for fp16, 2^-16 for bf16 per fp32
  ulp), so at most 1% of the entries may be off: a wrong rounding mode (truncation
  differs half the time) still fails.
- z and sum(v): sums of thousands of positive terms in another order: rtol 1e-5.
"""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import DTYPES, assert_bits_equal, kernel_devices

import step  # noqa: F401  (sets up torch.ops.step)
from step.ops import adam_update, adam_update_ref, nm_mask_ref

DTYPE_IDS = [str(d).removeprefix("torch.") for d in DTYPES]
MASK_RATIOS = [(2, 4), (1, 4), (2, 8), (16, 32), (3, 5)]
HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.fixture(params=["triton", "cpu"])
def backend(request):
    """The fused implementations under test: Triton (interpreter on CPU) and C."""
    return request.param


def kernel_module():
    import step.kernels.adam_update  # noqa: F401

    return sys.modules["step.kernels.adam_update"]


def make_state(shapes, dtype, device):
    params = [torch.randn(s).to(dtype=dtype, device=device) for s in shapes]
    exp_avgs = [0.1 * torch.randn(s, device=device) for s in shapes]
    exp_avg_sqs = [0.01 * torch.rand(s, device=device) for s in shapes]
    return params, exp_avgs, exp_avg_sqs


def ordered_bits(t: torch.Tensor) -> torch.Tensor:
    """Integers in the order of the float values, adjacent floats 1 apart (+0 == -0)."""
    bits = t.contiguous().view({2: torch.int16, 4: torch.int32}[t.element_size()]).long()
    magnitude = bits & (2 ** (8 * t.element_size() - 1) - 1)
    return torch.where(bits < 0, -magnitude, magnitude)


def assert_fp32_close(got, ref, name):
    atol = 1e-6 * ref.abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=atol, msg=lambda s: f"{name}: {s}")


def assert_param_close(got, ref, name):
    if got.dtype == torch.float32:
        assert_fp32_close(got, ref, name)
    else:
        assert got.dtype == ref.dtype
        ulps = (ordered_bits(got) - ordered_bits(ref)).abs()
        if ulps.numel():
            assert ulps.max().item() <= 1, f"{name}: {ulps.max()} ulp apart"
            assert ulps.float().mean().item() <= 0.01, f"{name}: too many 1-ulp misses"


def run_and_compare(shapes, dtype, device, steps, *, backend="triton", v_step=None, **kwargs):
    """``steps`` steps of ``backend``'s op, each checked against the reference."""
    params, exp_avgs, exp_avg_sqs = make_state(shapes, dtype, device)
    for t in range(1, steps + 1):
        grads = [torch.randn(s).to(dtype=dtype, device=device) for s in shapes]
        ref_state = [[x.clone() for x in xs] for xs in (params, exp_avgs, exp_avg_sqs)]
        v_before = [v.clone() for v in exp_avg_sqs]
        vs = t if v_step is None else v_step
        ref_out = adam_update_ref(
            ref_state[0], grads, ref_state[1], ref_state[2], HYPER["lr"], HYPER["beta1"],
            HYPER["beta2"], HYPER["eps"], kwargs["weight_decay"], t, vs, kwargs["update_v"],
            kwargs["srste_decay"], kwargs["n"], kwargs["m"], kwargs["want_z"],
            kwargs.get("masks"), kwargs.get("v_floors"),
        )  # fmt: skip
        with step.use_backend(f"adam_update={backend}"):
            out = adam_update(params, grads, exp_avgs, exp_avg_sqs, **HYPER, step=t,
                              v_step=vs, **kwargs)  # fmt: skip
        assert out.dtype == torch.float32 and out.shape == (2,)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-30)
        for i in range(len(shapes)):
            assert_param_close(params[i], ref_state[0][i], f"step {t} param {i}")
            assert_fp32_close(exp_avgs[i], ref_state[1][i], f"step {t} exp_avg {i}")
            if kwargs["update_v"] or kwargs.get("v_floors"):
                assert_fp32_close(exp_avg_sqs[i], ref_state[2][i], f"step {t} exp_avg_sq {i}")
            else:
                assert_bits_equal(exp_avg_sqs[i], v_before[i])
    return out


# 1-element, 1-D and 2-D sizes that are no multiple of any block, a 3-D tensor, an empty one
PLAIN_SHAPES = [(1,), (5000,), (3, 1001), (2, 3, 7), (0, 4), (64, 64)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_precondition_phase(backend, dtype, weight_decay):
    z = run_and_compare(PLAIN_SHAPES, dtype, "cpu", steps=3, backend=backend,
                        weight_decay=weight_decay,
                        update_v=True, srste_decay=0.0, n=0, m=0, want_z=True)  # fmt: skip
    assert z[0] > 0 and z[1] > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_precondition_without_z_returns_zeros(backend, dtype):
    z = run_and_compare([(3, 1001), (1,)], dtype, "cpu", steps=2, backend=backend,
                        weight_decay=0.0,
                        update_v=True, srste_decay=0.0, n=0, m=0, want_z=False)  # fmt: skip
    assert torch.equal(z, torch.zeros(2))


def mask_shapes(m):
    # one group, 1-D, groups not a multiple of the group block, 3-D, 1-row
    return [(m,), (3, 7 * m), (2, 3, 5 * m), (129, m), (1, 2 * m)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n,m", MASK_RATIOS)
@pytest.mark.parametrize("srste_decay,weight_decay", [(2e-4, 0.1), (0.5, 0.0), (0.5, 0.1)])
def test_mask_learning_phase(backend, dtype, n, m, srste_decay, weight_decay):
    # v frozen at the switch step 2; want_z asked for but v does not move: zeros
    z = run_and_compare(mask_shapes(m), dtype, "cpu", steps=3, backend=backend, v_step=1,
                        weight_decay=weight_decay, update_v=False, srste_decay=srste_decay,
                        n=n, m=m, want_z=True)  # fmt: skip
    assert torch.equal(z, torch.zeros(2))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_given_masks_replace_the_computed_ones(backend, dtype):
    """Masks of any pattern (here random, and non-contiguous) drive the SR-STE term."""
    shapes = [(3, 10), (7,), (4, 5, 6)]
    masks = [torch.rand(s) < 0.4 for s in shapes]
    masks[0] = (torch.rand(10, 3) < 0.5).t()  # non-contiguous
    run_and_compare(shapes, dtype, "cpu", steps=2, backend=backend, v_step=1, weight_decay=0.1,
                    update_v=False, srste_decay=0.5, n=0, m=0, want_z=False,
                    masks=masks)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_guard_keeps_estimating_v_below_its_floor(backend, dtype):
    """STEP's guard: with v frozen, elements below their tensor's floor update v and use
    the live bias correction; all backends follow the reference step after step."""
    shapes = [(3, 1000), (129, 8), (8,), (0, 4)]
    torch.manual_seed(0)
    floors = [0.005, 0.0, 0.02, 0.01]  # 0.0: no element of that tensor is guarded
    run_and_compare(shapes, dtype, "cpu", steps=3, backend=backend, v_step=1, weight_decay=0.1,
                    update_v=False, srste_decay=2e-4, n=2, m=4, want_z=False,
                    v_floors=floors)  # fmt: skip


def test_reference_guard_semantics():
    """Below the floor: v <- b2 v + (1-b2) g^2 and the step divides by sqrt(v/(1-b2^t));
    at or above it: v untouched and sqrt(v/(1-b2^t0)), as without a guard."""
    torch.manual_seed(0)
    v0 = torch.tensor([[0.0, 1e-6, 0.5, 1.0]])
    p0, g, m0 = torch.randn(1, 4), torch.randn(1, 4), torch.zeros(1, 4)
    lr, b1, b2, eps, t, t0 = 1e-2, 0.9, 0.999, 1e-8, 7, 3
    p, m, v = p0.clone(), m0.clone(), v0.clone()
    adam_update_ref([p], [g], [m], [v], lr, b1, b2, eps, 0.0, t, t0, False, 0.0, 0, 0, False,
                    None, [0.1])  # fmt: skip
    live = v0 < 0.1
    v_want = torch.where(live, v0 * b2 + (1 - b2) * g * g, v0)
    assert_bits_equal(v, v_want)
    m_want = (1 - b1) * g.double()
    bc2 = torch.where(live, torch.tensor(1 - b2**t), torch.tensor(1 - b2**t0)).double()
    step_want = lr * (m_want / (1 - b1**t)) / ((v_want.double() / bc2).sqrt() + eps)
    torch.testing.assert_close(p.double(), p0.double() - step_want, rtol=1e-6, atol=1e-7)


def test_guard_is_ignored_while_v_updates():
    """Floors only matter for a frozen v: with update_v the result is the unguarded one."""
    shapes = [(4, 8)]
    results = []
    for floors in (None, [10.0]):
        torch.manual_seed(0)
        state = make_state(shapes, torch.float32, "cpu")
        grads = [torch.randn(s) for s in shapes]
        adam_update(*state[:1], grads, *state[1:], lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0, step=2, update_v=True, v_floors=floors)  # fmt: skip
        results.append(state)
    for a, b in zip(*results, strict=True):
        for x, y in zip(a, b, strict=True):
            assert_bits_equal(x, y)


def test_bad_floors_are_refused_before_anything_changes():
    state = make_state([(4, 8), (2, 4)], torch.float32, "cpu")
    before = [[x.clone() for x in xs] for xs in state]
    grads = [torch.randn(4, 8), torch.randn(2, 4)]
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=3, v_step=2,
                 update_v=False)  # fmt: skip
    with pytest.raises(ValueError, match="v_floors has 1 values but params has 2"):
        adam_update(state[0], grads, state[1], state[2], **hyper, v_floors=[0.1])
    with pytest.raises(ValueError, match=r"v_floors\[1\] is -1.0"):
        adam_update(state[0], grads, state[1], state[2], **hyper, v_floors=[0.1, -1.0])
    for xs, ys in zip(state, before, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert_bits_equal(x, y)


def test_reference_given_nm_masks_equals_computed_masks():
    shapes = [(6, 16), (3, 8)]
    results = []
    for given in (False, True):
        torch.manual_seed(0)
        params, exp_avgs, exp_avg_sqs = make_state(shapes, torch.float32, "cpu")
        grads = [torch.randn(s) for s in shapes]
        masks = [nm_mask_ref(p, 2, 4) for p in params] if given else None
        adam_update_ref(params, grads, exp_avgs, exp_avg_sqs, 1e-2, 0.9, 0.999, 1e-8, 0.0,
                        3, 1, False, 0.5, 2, 4, False, masks)  # fmt: skip
        results.append(params)
    for a, b in zip(*results, strict=True):
        assert_bits_equal(a, b)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n,m", MASK_RATIOS)
def test_mask_is_nm_mask_of_params_before_the_step(backend, dtype, n, m):
    """lr = 0, zero grads and momentum: exp_avg becomes (1-b1) * decay * p exactly where
    the kernel's mask prunes, and 0 where it keeps, so the mask can be read back.
    Heavy ties, inf and NaN (NaN ranks like inf) test the tie rule; no zeros, so every
    pruned entry shows."""
    values = torch.tensor([0.5, -0.5, 1.0, -1.0, 2.0, -2.0, float("inf"), float("nan")])
    shapes = mask_shapes(m)
    params = [values[torch.randint(len(values), s)].to(dtype) for s in shapes]
    before = [p.clone() for p in params]
    exp_avgs = [torch.zeros(s) for s in shapes]
    exp_avg_sqs = [torch.ones(s) for s in shapes]
    grads = [torch.zeros(s, dtype=dtype) for s in shapes]
    with step.use_backend(f"adam_update={backend}"):
        adam_update(params, grads, exp_avgs, exp_avg_sqs, lr=0.0, beta1=0.9, beta2=0.999,
                    eps=1e-8, weight_decay=0.0, step=5, v_step=2, update_v=False,
                    srste_decay=0.5, n=n, m=m)  # fmt: skip
    for p, ea in zip(before, exp_avgs, strict=True):
        assert torch.equal(ea == 0, nm_mask_ref(p, n, m))


def test_one_launch_per_dtype_and_cached_tables(monkeypatch):
    module = kernel_module()
    kernel = module._adam_kernel
    launches, builds = [], []

    class CountingKernel:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    class CountingTables(module._Tables):
        def __init__(self, *args):
            builds.append(1)
            super().__init__(*args)

    monkeypatch.setattr(module, "_adam_kernel", CountingKernel(), raising=True)
    monkeypatch.setattr(module, "_Tables", CountingTables)
    monkeypatch.setattr(module, "_CACHE", {})
    shapes = [(i % 7 + 1, 4 * (i % 5 + 1)) for i in range(50)]
    params, exp_avgs, exp_avg_sqs = make_state(shapes, torch.float32, "cpu")
    for t in (1, 2):
        grads = [torch.randn(s) for s in shapes]  # fresh grads: only their table is rebuilt
        with step.use_backend("adam_update=triton"):
            adam_update(params, grads, exp_avgs, exp_avg_sqs, **HYPER, weight_decay=0.0,
                        step=t, want_z=True)  # fmt: skip
    assert len(launches) == 2 and len(builds) == 1

    launches.clear()
    half = make_state(shapes[:3], torch.bfloat16, "cpu")
    mixed = [a + b for a, b in zip((params, exp_avgs, exp_avg_sqs), half, strict=True)]
    grads = [torch.randn(p.shape).to(p.dtype) for p in mixed[0]]
    with step.use_backend("adam_update=triton"):
        adam_update(mixed[0], grads, mixed[1], mixed[2], **HYPER, weight_decay=0.0, step=3)
    assert len(launches) == 2  # float32 and bfloat16


def test_non_contiguous_tensors_are_updated_through_copies(backend):
    base = [torch.randn(8, 6), torch.zeros(8, 6), torch.rand(8, 6)]
    untouched = [b[:, [0, 5]].clone() for b in base]
    views = [b[:, 1:5] for b in base]  # [8, 4], not contiguous
    ref = [v.clone() for v in views]
    grads = [torch.randn(8, 4)]
    kw = dict(weight_decay=0.1, update_v=True, srste_decay=0.5, n=2, m=4, want_z=True)
    adam_update_ref([ref[0]], grads, [ref[1]], [ref[2]], *HYPER.values(), 0.1, 1, 1, True,
                    0.5, 2, 4, True)  # fmt: skip
    with step.use_backend(f"adam_update={backend}"):
        adam_update([views[0]], grads, [views[1]], [views[2]], **HYPER, step=1, **kw)
    for got, want in zip(views, ref, strict=True):
        assert_fp32_close(got, want, "view")
    for b, u in zip(base, untouched, strict=True):
        assert torch.equal(b[:, [0, 5]], u)


@pytest.mark.gpu
@pytest.mark.parametrize("device", [d for d in kernel_devices() if d != "cpu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "mode",
    [
        dict(update_v=True, srste_decay=0.0, n=0, m=0, want_z=True, weight_decay=0.1),
        dict(update_v=False, srste_decay=2e-4, n=2, m=4, want_z=False, weight_decay=0.1),
        dict(update_v=False, srste_decay=0.5, n=3, m=5, want_z=False, weight_decay=0.0),
        dict(
            update_v=False,
            srste_decay=2e-4,
            n=2,
            m=4,
            want_z=False,
            weight_decay=0.1,
            v_floors=[0.005, 0.0, 0.02, 0.01],
        ),  # the guard: half, none, all, half guarded
    ],
)
def test_gpu_millions_of_elements(device, dtype, mode):
    m = mode["m"] or 4
    shapes = [(2048, 1020 // m * m), (1024, 1000 // m * m), (777, 5 * m), (m,)]
    v_step = None if mode["update_v"] else 1
    run_and_compare(shapes, dtype, device, steps=2, v_step=v_step, **mode)
