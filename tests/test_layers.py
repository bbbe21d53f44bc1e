"""Sparse layers: drop-in compatibility, grouping axes, STE, the mask cache, freezing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import assert_bits_equal, assert_within_tolerance_rule
from transformers.pytorch_utils import Conv1D

import step
from step.nn import SparseConv1D, SparseConv2d, SparseLinear
from step.ops.compressed_weight import CUTLASS_2TO4, NM_POSITIONS


def hf_conv1d(nf=32, nx=16):
    torch.manual_seed(0)
    conv = Conv1D(nf, nx)
    torch.nn.init.normal_(conv.bias)
    return conv


def pairs():
    """(original layer, sparse layer sharing its parameters, input)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    conv = torch.nn.Conv2d(8, 6, 3, padding=1)
    c1d = hf_conv1d()
    return [
        (lin, SparseLinear.from_linear(lin), torch.randn(3, 16)),
        (conv, SparseConv2d.from_conv(conv), torch.randn(2, 8, 5, 5)),
        (c1d, SparseConv1D.from_conv1d(c1d), torch.randn(2, 3, 16)),
    ]


def reference_mask(layer):
    """The N:M mask along the layer's reduction dim, computed independently."""
    w = layer.weight.detach()
    if isinstance(layer, SparseConv2d):  # groups along in-channels for each (out, kh, kw)
        return step.nm_mask(w.permute(0, 2, 3, 1), 2, 4).permute(0, 3, 1, 2).contiguous()
    if isinstance(layer, SparseConv1D):  # [in, out]: groups along in
        return step.nm_mask(w.t(), 2, 4).t().contiguous()
    return step.nm_mask(w, 2, 4)


@pytest.mark.parametrize("index", range(3), ids=["linear", "conv2d", "conv1d"])
def test_dense_mode_is_the_original_layer(index):
    original, sparse, x = pairs()[index]
    assert list(sparse.state_dict()) == list(original.state_dict())
    assert sparse.weight is original.weight
    assert_bits_equal(sparse(x), original(x))


@pytest.mark.parametrize("index", range(3), ids=["linear", "conv2d", "conv1d"])
def test_ste_forward_uses_the_mask_along_the_reduction_dim(index):
    original, sparse, x = pairs()[index]
    sparse.sparsity.set_mode("ste")
    mask = reference_mask(sparse)
    assert torch.equal(sparse.current_mask(), mask)
    with torch.no_grad():
        dense_weight = original.weight.clone()
        original.weight.mul_(mask)
        want = original(x)
        original.weight.copy_(dense_weight)
    torch.testing.assert_close(sparse(x), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("index", range(3), ids=["linear", "conv2d", "conv1d"])
def test_ste_gradient_reaches_pruned_weights(index):
    original, sparse, x = pairs()[index]
    sparse.sparsity.set_mode("ste")
    mask = reference_mask(sparse)
    sparse(x).square().sum().backward()
    got = sparse.weight.grad.clone()
    # the straight-through gradient is the gradient w.r.t. the masked weight
    masked = torch.where(mask, original.weight.detach(), 0).requires_grad_()
    twin = pairs()[index][0]
    del twin.weight
    twin.weight = masked
    twin(x).square().sum().backward()
    torch.testing.assert_close(got, masked.grad, rtol=1e-4, atol=1e-5)  # other sum order
    assert (got[~mask] != 0).any()


def test_mask_is_cached_until_the_weight_changes(monkeypatch):
    layer = SparseLinear(16, 8)
    layer.sparsity.set_mode("ste")
    calls = []
    impls = step.ops.dispatch._IMPLS["nm_mask"]
    ref = impls["reference"]
    counted = dataclasses.replace(ref, fn=lambda *a: calls.append(1) or ref.fn(*a))
    monkeypatch.setitem(impls, "reference", counted)  # every mask the forward computes
    x = torch.randn(4, 16)
    for _ in range(3):  # micro-batches of gradient accumulation
        layer(x).sum().backward()
    assert len(calls) == 1
    with torch.no_grad():
        layer.weight.add_(1.0)  # an in-place update (the optimizer step)
    layer(x)
    assert len(calls) == 2
    layer.weight = torch.nn.Parameter(torch.randn(8, 16))  # a new tensor
    layer(x)
    assert len(calls) == 3
    assert torch.equal(layer.current_mask(), step.nm_mask(layer.weight.detach(), 2, 4))


def test_optimizer_reuses_the_forward_mask_on_cpu(monkeypatch):
    model = torch.nn.Sequential(SparseLinear(16, 16), torch.nn.ReLU(), SparseLinear(16, 4))
    opt = step.optim.STEP(model.parameters(), lr=1e-2, autoswitch=1)
    x = torch.randn(8, 16)
    model(x).sum().backward()
    opt.step()  # the switch
    opt.zero_grad()
    calls = []
    original = torch.ops.step.nm_mask
    monkeypatch.setattr(torch.ops.step, "nm_mask", lambda *a: calls.append(1) or original(*a))
    model(x).sum().backward()
    opt.step()  # SR-STE term from the masks the forward pass cached
    assert len(calls) == 2  # one per layer, in the forward pass only


@pytest.mark.parametrize("index", range(3), ids=["linear", "conv2d", "conv1d"])
def test_step_srste_term_follows_the_grouping_axis(index):
    """lr 0, zero gradients and momentum: after a mask-learning step, exp_avg is nonzero
    exactly at the pruned entries, so it shows which mask the optimizer used."""
    _, layer, x = pairs()[index]
    opt = step.optim.STEP([layer.weight], lr=0.0, srste_decay=0.5, autoswitch=1)
    layer(x).sum().backward()
    opt.step()
    assert opt.phase == "mask_learning"
    state = opt.state[layer.weight]
    state["exp_avg"].zero_()
    layer.weight.grad.zero_()
    opt.step()
    assert torch.equal(state["exp_avg"] == 0, reference_mask(layer))


def test_freeze_prunes_to_positive_zero_and_fixes_the_mask():
    model = torch.nn.Sequential(SparseLinear(16, 8), SparseConv1D(8, 16))
    with torch.no_grad():
        model[0].weight[0, :4] = torch.tensor([-1e-9, 0.0, 5.0, -4.0])  # -1e-9 is pruned
    masks = [reference_mask(layer) for layer in model]
    step.freeze(model)
    for layer, mask in zip(model, masks, strict=True):
        assert layer.frozen and layer.sparsity.mode == "fixed"
        assert torch.equal(layer.sparsity.mask, mask)
        pruned = layer.weight.detach()[~mask]
        assert (pruned == 0).all() and not torch.signbit(pruned).any()
        assert torch.equal(layer.weight.detach()[mask] != 0, torch.ones_like(mask[mask]))


@pytest.mark.parametrize(
    "dtype,shape,layout",
    [(torch.float16, (64, 128), CUTLASS_2TO4), (torch.bfloat16, (32, 64), CUTLASS_2TO4),
     (torch.float16, (8, 16), NM_POSITIONS), (torch.float32, (64, 64), NM_POSITIONS)],
)  # fmt: skip
def test_frozen_eval_runs_on_the_compressed_weight(dtype, shape, layout, monkeypatch):
    out_f, in_f = shape
    layer = SparseLinear(in_f, out_f).to(dtype)
    step.freeze(layer)
    layer.eval()
    cw = layer.compressed_weight()
    assert cw.layout == layout
    calls = []
    op = getattr(torch.ops.step, cw.op)
    monkeypatch.setattr(torch.ops.step, cw.op, lambda *a: calls.append(1) or op(*a))
    x = torch.randn(5, in_f).to(dtype)
    want = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    baseline = torch.nn.functional.linear(x, layer.weight, layer.bias)
    # On CPU only the reference exists, which decodes then multiplies: the layer uses its
    # pruned dense weight instead, without calling the op, unless a backend is forced.
    assert_bits_equal(layer(x), baseline) and not calls
    with step.use_backend("reference"):
        got = layer(x)
    assert calls == [1]
    err, ref_err = (got.double() - want).abs().max(), (baseline.double() - want).abs().max()
    assert err <= 2 * ref_err + 1e-6
    layer.train()  # training mode: the fixed-mask dense path
    with step.use_backend("reference"):
        assert_bits_equal(layer(x), baseline)
    assert calls == [1]


def test_compressed_copy_follows_dtype_changes_and_updates():
    layer = SparseLinear(64, 32)
    step.freeze(layer)
    layer.eval()
    assert layer.compressed_weight().layout == NM_POSITIONS
    layer.half()
    assert layer.compressed_weight().layout == CUTLASS_2TO4
    x = torch.randn(3, 64, dtype=torch.float16)
    with step.use_backend("reference"):
        layer(x)  # builds the compressed copy
        with torch.no_grad():
            layer.weight.mul_(2)
        out = layer(x)
    # the frozen weight is exactly N:M, so the dense product is the layer's exact result;
    # a stale compressed copy would be off by the whole (undoubled) output
    want_fp16 = torch.nn.functional.linear(x, layer.weight, layer.bias)
    want_fp64 = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    assert_within_tolerance_rule(out, want_fp16, want_fp64)
    assert layer.state_dict().keys() == {"weight", "bias"}  # buffers are not persistent


def test_torch_compile_of_a_frozen_model_has_no_graph_break():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        SparseLinear(64, 64), torch.nn.GELU(), SparseConv1D(32, 64), SparseLinear(32, 32, n=1, m=8)
    ).half()
    step.freeze(model)
    model.eval()
    x = torch.randn(4, 64, dtype=torch.float16)
    want = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), want)


def test_torch_compile_of_ste_training_forward():
    model = torch.nn.Sequential(SparseLinear(16, 16), torch.nn.ReLU(), SparseConv1D(8, 16))
    for layer in (model[0], model[2]):
        layer.sparsity.set_mode("ste")
    x = torch.randn(4, 16)
    want = model(x)
    compiled = torch.compile(model, backend="aot_eager")
    got = compiled(x)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert model[0].weight.grad is not None


def test_layers_refuse_indivisible_reduction_dims():
    with pytest.raises(ValueError, match=r"SparseConv2d.weight has shape \(4, 6, 3, 3\)"):
        SparseConv2d(6, 4, 3)
    with pytest.raises(ValueError, match=r"SparseConv1D.weight.*size 6.*m=4"):
        SparseConv1D(8, 6)
    with pytest.raises(RuntimeError, match="not frozen"):
        SparseLinear(8, 4).compressed_weight()


@pytest.mark.parametrize("dtype,n,m", [(torch.float16, 2, 4), (torch.float32, 1, 4)])
def test_gradients_reach_inputs_through_a_frozen_layer(dtype, n, m):
    """Adapters on a frozen sparse model: dx and dbias through the compressed ops."""
    layer = SparseLinear(64, 32, n=n, m=m).to(dtype)
    step.freeze(layer)
    layer.eval()
    x = torch.randn(4, 64, dtype=dtype, requires_grad=True)
    with step.use_backend("reference"):
        layer(x).float().square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    torch.nn.functional.linear(
        x2, layer.weight.detach(), layer.bias.detach()
    ).float().square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert layer.weight.grad is None and layer.bias.grad is not None


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_conv1d_ste_runs_the_fused_op_on_its_transposed_weight(backend):
    layer = SparseConv1D(8, 16)  # weight [16 in, 8 out], groups along in
    layer.sparsity.set_mode("ste")
    x = torch.randn(3, 16, requires_grad=True)
    mask = step.nm_mask(layer.weight.detach().t(), 2, 4).t()
    with step.use_backend(f"masked_linear={backend},masked_linear_dx={backend}"):
        for _ in range(2):  # the first call ranks and caches, the second passes the cache
            y = layer(x)
            torch.testing.assert_close(y, x @ torch.where(mask, layer.weight, 0) + layer.bias)
            assert torch.equal(layer.current_mask(), mask)
        y.square().sum().backward()
    dy = 2 * y.detach()
    torch.testing.assert_close(layer.weight.grad, x.detach().t() @ dy)  # STE: dense grad
    torch.testing.assert_close(x.grad, dy @ torch.where(mask, layer.weight, 0).detach().t())


def test_a_frozen_weight_changed_after_freeze_is_not_multiplied_unpruned(monkeypatch):
    """The op gets the layer's weight as ``dense`` only while it is as freeze pruned it; a
    weight loaded or updated since runs on the compressed copy, rebuilt from the mask."""
    import step.nn.sparse_module as sparse_module

    monkeypatch.setattr(sparse_module, "only_reference", lambda op, device: False)  # a GPU's
    layer = step.freeze(SparseLinear(16, 8)).eval()
    mask = layer.sparsity.mask.clone()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 16))  # unpruned entries where the mask prunes
    x = torch.randn(3, 16)
    want = torch.nn.functional.linear(x, torch.where(mask, layer.weight, 0), layer.bias)
    torch.testing.assert_close(layer(x), want)
