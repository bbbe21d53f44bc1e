"""One validation and one backend decision per op call.

Each op's checks run once, in the op's body (the op boundary), whatever the caller: the
public function, a layer or a compressed weight. ``dispatch.choose`` runs once per op call
and decides from cached state (the parsed ``STEP_BACKEND``, each backend's availability).
"""

import importlib
from collections import Counter

import pytest
import torch

import step
from step.nn import SparseLinear
from step.ops import adam_update, compressed_weight, dispatch

# the modules (the package step.ops binds most of these names to the functions)
(nm_mask, nm_compress, sparse24, sparse24_linear, nm_linear, masked_linear, adam_update_op,
 nm_soft_threshold) = (
    importlib.import_module(f"step.ops.{name}")
    for name in ("nm_mask", "nm_compress", "sparse24", "sparse24_linear", "nm_linear",
                 "masked_linear", "adam_update", "nm_soft_threshold")
)  # fmt: skip

CHECKS = [  # (module whose op body calls it, name, op)
    (nm_mask, "check_nm_mask_args", "nm_mask"),
    (nm_compress, "check_nm_mask_args", "nm_compress"),
    (nm_compress, "check_compressed_args", "nm_decompress"),
    (sparse24, "check_dense24_args", "sparse24_compress"),
    (sparse24, "check_sparse24_args", "sparse24_decompress"),
    (sparse24_linear, "check_sparse24_linear_args", "sparse24_linear"),
    (nm_linear, "check_nm_linear_args", "nm_linear"),
    (masked_linear, "check_masked_linear_args", "masked_linear"),
    (adam_update_op, "check_adam_update_args", "adam_update"),
    (nm_soft_threshold, "check_nm_mask_args", "nm_soft_threshold"),
]
CHOOSERS = [nm_mask, nm_compress, sparse24, sparse24_linear, nm_linear, masked_linear,
            adam_update_op, nm_soft_threshold]  # fmt: skip


@pytest.fixture
def counts(monkeypatch):
    """Counters of check calls and ``choose`` calls, per op."""
    checks, chosen = Counter(), Counter()

    def counting(fn, op):
        return lambda *a, **k: checks.update([op]) or fn(*a, **k)

    for module, name, op in CHECKS:
        monkeypatch.setattr(module, name, counting(getattr(module, name), op))
    choose = dispatch.choose

    def counted_choose(op, *args):
        chosen.update([op])
        return choose(op, *args)

    for module in CHOOSERS:
        monkeypatch.setattr(module, "choose", counted_choose)
    return checks, chosen


def w32(rows=32, k=64, dtype=torch.float32):
    torch.manual_seed(0)
    return torch.randn(rows, k, dtype=dtype)


def test_each_public_op_validates_and_decides_once(counts):
    checks, chosen = counts
    w, h = w32(), w32(dtype=torch.float16)
    c = step.nm_compress(w, 2, 4)
    values, meta = step.to_sparse24(h)
    x, xh = torch.randn(3, 64), torch.randn(3, 64, dtype=torch.float16)
    exp_avg, exp_avg_sq = [torch.zeros(32, 64)], [torch.zeros(32, 64)]
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    calls = {
        "nm_mask": lambda: step.nm_mask(w, 2, 4),
        "nm_compress": lambda: step.nm_compress(w, 2, 4),
        "nm_decompress": lambda: step.nm_decompress(c),
        "sparse24_compress": lambda: step.to_sparse24(h),
        "sparse24_decompress": lambda: step.from_sparse24(values, meta),
        "sparse24_linear": lambda: step.sparse24_linear(xh, values, meta),
        "nm_linear": lambda: step.nm_linear(x, c),
        "masked_linear": lambda: step.masked_linear(x, w, 2, 4),
        "nm_soft_threshold": lambda: step.ops.nm_soft_threshold(w, 2, 4),
        "adam_update": lambda: adam_update(
            [w.clone()],
            [torch.randn(32, 64)],
            exp_avg,
            exp_avg_sq,
            **hyper,
            srste_decay=2e-4,
            n=2,
            m=4,
        ),
    }
    for op, call in calls.items():
        checks.clear()
        chosen.clear()
        call()
        assert checks[op] == 1 and chosen[op] == 1, (op, checks, chosen)
        # an op that runs another (masked_linear's reference asks step::nm_mask for the
        # mask) validates and decides once per op it runs, too
        assert set(checks.values()) == {1} and set(chosen.values()) == {1}, (op, checks, chosen)


def test_a_layer_forward_validates_once(counts):
    checks, chosen = counts
    layer = SparseLinear(64, 32)
    layer.sparsity.set_mode("ste")
    x = torch.randn(3, 64)
    layer(x).sum().backward()  # the mask is computed in the op: one masked_linear call
    assert checks == Counter(masked_linear=1, nm_mask=1), checks
    checks.clear()
    layer(x)  # the cached mask is passed in: no nm_mask
    assert checks == Counter(masked_linear=1), checks


def test_a_compressed_weight_validates_once(counts):
    checks, _ = counts
    for w in (w32(), w32(dtype=torch.float16)):
        cw = compressed_weight.compress_weight(w, 2, 4)
        checks.clear()
        cw.linear(torch.randn(3, 64, dtype=w.dtype))
        assert checks == Counter({cw.op: 1}), checks


def test_a_frozen_layer_decides_at_most_once_per_forward(counts, monkeypatch):
    """The frozen eval forward never chooses a backend itself: where only the reference
    can run (the CPU) it multiplies by its pruned weight without calling the op (a cached
    question, ``only_reference``); otherwise its op decides, once, and where that is the
    reference it multiplies by the same pruned weight (bit-equal to the dense layer)."""
    checks, chosen = counts
    # the layer module binds no choose(): a decision there would be a second one
    assert not hasattr(importlib.import_module("step.nn.sparse_module"), "choose")
    monkeypatch.setattr(dispatch, "choose", lambda *a: pytest.fail("choose outside an op"))
    for dtype, op in ((torch.float32, "nm_linear"), (torch.float16, "sparse24_linear")):
        layer = step.freeze(SparseLinear(64, 32).to(dtype)).eval()
        x = torch.randn(3, 64, dtype=dtype)
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)
        for forced, calls in ((None, Counter()), (f"{op}=reference", Counter({op: 1}))):
            checks.clear()
            chosen.clear()
            with step.use_backend(forced):
                y = layer(x)
            assert chosen == calls and checks == calls, (forced, chosen, checks)
            torch.testing.assert_close(y, want, rtol=0, atol=0 if forced is None else 1e-2)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_the_optimizer_decides_once_per_fused_call(counts, backend):
    """The SR-STE phase passes the layers' cached masks with n, m; the op decides which to
    use (no backend question in the optimizer), and both backends give one result."""
    _, chosen = counts
    assert not hasattr(importlib.import_module("step.optim.nm_adamw"), "choose")
    results = []
    for forced in (backend, "reference"):
        torch.manual_seed(0)
        layer = SparseLinear(64, 32)
        opt = step.optim.SRSTE(layer.parameters(), lr=1e-2)
        with step.use_backend(f"adam_update={forced}"):
            for _ in range(3):
                layer(torch.randn(4, 64)).square().sum().backward()
                chosen.clear()
                opt.step()
                opt.zero_grad()
                assert chosen["adam_update"] == 2, chosen  # weight (SR-STE) and bias
        results.append(layer.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_the_backend_decision_is_cached_per_configuration(monkeypatch):
    """A second call under the same configuration finds the parsed ``STEP_BACKEND`` and
    each backend's availability cached: no status text is built."""
    built = Counter()
    status = dispatch.backend_status
    monkeypatch.setattr(dispatch, "backend_status", lambda b, d=None: built.update([b]) or
                        status(b, d))  # fmt: skip
    monkeypatch.setenv("STEP_BACKEND", "nm_mask=reference")
    w = w32()
    step.nm_mask(w, 2, 4)
    step.nm_mask(w, 2, 4)
    step.nm_compress(w, 2, 4)
    parses = dispatch._parse_forced.cache_info()
    step.nm_mask(w, 2, 4)
    assert dispatch._parse_forced.cache_info().misses == parses.misses
    assert sum(built.values()) <= 1, built  # at most once, for the first decision
