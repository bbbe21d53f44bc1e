"""S-STE: the layers' "soft" mode (forward beta * S(W), straight-through gradient, the mask
cache and flip counts, freezing) and the SSTE recipe (AdamW on W, beta fitted once and
fixed, state_dict and resume, every sparse layer type, a model that learns)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_bits_equal
from test_checkpoint_faults import assert_identical
from test_layers import pairs
from test_nm_soft_threshold import soft_fp64
from test_optim_state import round_trip
from test_optim_step import batches, loss_fn, make_model, relative_error, train

import step
from step.nn import SparseConv1D, SparseConv2d, SparseLinear
from step.nn.sparsity import sparsity_of
from step.optim import SSTE, make

LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.05
IDS = ["linear", "conv2d", "conv1d"]


def grouped(layer, w: torch.Tensor) -> torch.Tensor:
    """``w`` with the layer's reduction dim last (computed here, not by the layer)."""
    if isinstance(layer, SparseConv2d):
        return w.permute(0, 2, 3, 1)
    if isinstance(layer, SparseConv1D):
        return w.t()
    return w


def ungrouped(layer, t: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, SparseConv2d):
        return t.permute(0, 3, 1, 2).contiguous()
    if isinstance(layer, SparseConv1D):
        return t.t().contiguous()
    return t


def soft_of(layer, w: torch.Tensor) -> torch.Tensor:
    """S(w) along the layer's reduction dim, from the float64 rule."""
    return ungrouped(layer, soft_fp64(grouped(layer, w.detach()).contiguous(), 2, 4))


def fitted_beta(layer, w: torch.Tensor) -> float:
    s = soft_of(layer, w).double()
    return ((w.detach().double() * s).sum() / s.square().sum()).item()


def with_weight(layer: torch.nn.Module, weight: torch.Tensor) -> torch.nn.Module:
    """A plain copy of the original layer whose weight is ``weight`` (a non-leaf)."""
    twin = copy.deepcopy(layer)
    del twin.weight
    twin.weight = weight
    return twin


# ---------------------------------------------------------------- the layers' mode "soft"


@pytest.mark.parametrize("index", range(3), ids=IDS)
def test_soft_forward_is_beta_times_the_soft_threshold(index):
    original, sparse, x = pairs()[index]
    sparse.sparsity.beta = 1.75
    sparse.sparsity.set_mode("soft")
    forward_weight = 1.75 * soft_of(sparse, sparse.weight)
    want = with_weight(original, forward_weight)(x)
    assert_bits_equal(sparse(x), want)
    # the mask the forward pass cached is the N:M mask of the weight, along the right dim
    mask = sparse.sparsity.cached_mask(sparse.weight)
    assert mask is not None and torch.equal(mask, forward_weight != 0)
    assert torch.equal(mask, sparse.current_mask())


@pytest.mark.parametrize("index", range(3), ids=IDS)
def test_soft_gradient_is_straight_through_and_not_scaled(index):
    original, sparse, x = pairs()[index]
    sparse.sparsity.beta = 1.75
    sparse.sparsity.set_mode("soft")
    sparse(x).square().sum().backward()
    # the gradient w.r.t. the forward weight beta * S(W), passed to W unchanged
    forward_weight = (1.75 * soft_of(sparse, sparse.weight)).requires_grad_()
    with_weight(original, forward_weight)(x).square().sum().backward()
    assert_bits_equal(sparse.weight.grad, forward_weight.grad)
    assert (sparse.weight.grad[forward_weight.detach() == 0] != 0).any()  # pruned ones too


def test_soft_mode_needs_beta():
    layer = SparseLinear(16, 8)
    layer.sparsity.set_mode("soft")
    with pytest.raises(RuntimeError, match=r"mode 'soft' but has no scale beta.*step.optim.SSTE"):
        layer(torch.randn(2, 16))
    with pytest.raises(RuntimeError, match="no scale beta"):
        step.freeze(layer)


def test_micro_batches_rank_in_the_op_and_count_flips_once_per_weight(monkeypatch):
    layer = SparseLinear(16, 8)
    layer.sparsity.beta = 1.0
    layer.sparsity.set_mode("soft")
    calls = []
    original = torch.ops.step.nm_mask
    monkeypatch.setattr(torch.ops.step, "nm_mask", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(4, 16)
    for _ in range(3):  # micro-batches of gradient accumulation
        layer(x).sum().backward()
    assert calls == []  # the soft-threshold op's mask is the layer's: no other ranking
    assert layer.sparsity.flip_counts() == (None, 0)  # one mask so far
    with torch.no_grad():
        layer.weight.mul_(-1.5)  # same mask, a new weight value
    for _ in range(3):
        layer(x)
    flipped, compared = layer.sparsity.flip_counts()
    assert compared == layer.weight.numel() and flipped.item() == 0  # counted once


@pytest.mark.parametrize("index", range(3), ids=IDS)
def test_freeze_bakes_the_forward_weight(index):
    _, layer, x = pairs()[index]
    opt = SSTE(layer.parameters(), lr=LR)
    for _ in range(3):
        layer(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    layer.eval()
    with torch.no_grad():
        before = layer(x)
        forward_weight = opt.scales[0] * soft_of(layer, layer.weight)
    step.freeze(layer)
    assert layer.frozen and layer.sparsity.mode == "fixed"
    assert torch.equal(layer.weight.detach(), forward_weight)
    pruned = ~layer.sparsity.mask
    assert (forward_weight[pruned] == 0).all()
    assert (layer.weight[pruned].view(torch.int32) == 0).all()  # +0.0 where pruned
    assert_bits_equal(layer(x), before)  # frozen (compressed path for linear-like layers)


def test_freeze_of_a_whole_sste_model_keeps_its_outputs():
    model = make_model()
    opt = SSTE(model.parameters(), lr=LR)
    train(model, opt, batches(4))
    model.eval()
    x = batches(1, seed=5)[0][0]
    with torch.no_grad():
        before = model(x)
    step.freeze(model)
    assert_bits_equal(model(x), before)
    for layer in (model[0], model[2]):
        groups = layer.weight.detach().reshape(-1, 4)
        assert ((groups != 0).sum(1) <= 2).all()


# ---------------------------------------------------------------- the recipe


def test_make_builds_sste_and_sets_soft_mode_with_fitted_scales():
    model = make_model()
    initial = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    opt = make("sste", model.parameters(), lr=LR)
    assert type(opt) is SSTE and opt.RECIPE == "sste"
    assert [model[i].sparsity.mode for i in (0, 2)] == ["soft", "soft"]
    want = [fitted_beta(model[0], initial[0]), fitted_beta(model[2], initial[1])]
    assert opt.scales == pytest.approx(want, rel=1e-12)
    assert [model[i].sparsity.beta for i in (0, 2)] == opt.scales
    assert all(1.0 < beta < 3.0 for beta in opt.scales)  # S(W) shrinks: beta > 1
    with pytest.raises(TypeError, match=r"recipe 'sste' \(SSTE\) takes no argument"):
        make("sste", make_model().parameters(), srste_decay=1e-4)


def test_an_all_zero_weight_gets_beta_one():
    layer = SparseLinear(16, 8)
    with torch.no_grad():
        layer.weight.zero_()
    assert SSTE(layer.parameters()).scales == [1.0]


def ste_reference(model: torch.nn.Module, scales: list[float]):
    """A plain twin of ``make_model()``: nn.Linear layers whose forward weight is
    ``beta * S(W)`` through the straight-through trick ``W + (beta * S(W) - W).detach()``."""
    twin = copy.deepcopy(model)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8),
                                copy.deepcopy(model[3]))  # fmt: skip
    with torch.no_grad():
        for i in (0, 2):
            plain[i].weight.copy_(twin[i].weight)
            plain[i].bias.copy_(twin[i].bias)

    def forward(x):
        h = x
        for i, layer in enumerate(plain):
            if i in (0, 2):
                w = layer.weight
                s = scales[i // 2] * soft_of(layer, w).to(w.dtype)
                h = torch.nn.functional.linear(h, w + (s - w).detach(), layer.bias)
            else:
                h = layer(h)
        return h

    return plain, forward


def test_tracks_adamw_on_w_with_the_straight_through_gradient():
    model = make_model()
    opt = SSTE(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    plain, forward = ste_reference(model, opt.scales)
    ref_opt = torch.optim.AdamW(plain.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    for x, y in batches(8):
        for o in (opt, ref_opt):
            o.zero_grad()
        loss_fn(model, x, y).backward()
        (forward(x) - y).pow(2).mean().backward()
        opt.step()
        ref_opt.step()
        for a, b in zip(model.parameters(), plain.parameters(), strict=True):
            assert relative_error(a.detach(), b.detach()) <= 1e-6


def test_one_step_is_adamw_with_the_ste_gradient_exactly():
    # step 1: m_hat = g, v_hat = g^2: w1 = w0 (1 - lr wd) - lr g / (|g| + eps), g being
    # the gradient of the forward weight beta * S(W)
    model = make_model()
    opt = SSTE(model.parameters(), lr=LR, eps=EPS, weight_decay=WD)
    x, y = batches(1)[0]
    w0 = model[0].weight.detach().clone()
    forward_weight = (opt.scales[0] * soft_of(model[0], w0)).requires_grad_()
    h = torch.relu(torch.nn.functional.linear(x, forward_weight, model[0].bias.detach()))
    (model[3](model[2](h)) - y).pow(2).mean().backward()
    loss_fn(model, x, y).backward()
    g = model[0].weight.grad
    assert_bits_equal(g, forward_weight.grad)
    opt.step()
    expected = w0 * (1 - LR * WD) - LR * g / (g.abs() + EPS)
    assert relative_error(model[0].weight.detach(), expected) <= 1e-6


def test_beta_is_fixed_after_the_first_step():
    model = make_model()
    opt = SSTE(model.parameters(), lr=LR)
    scales = opt.scales
    train(model, opt, batches(6))
    assert opt.scales == scales and [model[i].sparsity.beta for i in (0, 2)] == scales
    refitted = fitted_beta(model[0], model[0].weight)
    assert refitted != pytest.approx(scales[0], rel=1e-6)  # the weights moved; beta did not
    assert opt.state_dict()["state"]["recipe"]["beta"] == scales


@pytest.mark.parametrize("cut", [0, 1, 3])
def test_state_dict_round_trip_resumes_bit_exactly(cut):
    steps = 6
    model = make_model()
    opt = SSTE(model.parameters(), lr=LR, weight_decay=WD)
    train(model, opt, batches(steps))

    first = make_model()
    first_opt = SSTE(first.parameters(), lr=LR, weight_decay=WD)
    train(first, first_opt, batches(steps)[:cut])
    saved = round_trip({"model": first.state_dict(), "opt": first_opt.state_dict()})
    resumed = make_model(seed=7)  # other initial weights: other scales until the load
    resumed_opt = SSTE(resumed.parameters(), lr=LR, weight_decay=WD)
    assert resumed_opt.scales != first_opt.scales
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    assert resumed_opt.scales == first_opt.scales
    assert [resumed[i].sparsity.beta for i in (0, 2)] == first_opt.scales
    assert [resumed[i].sparsity.mode for i in (0, 2)] == ["soft", "soft"]
    train(resumed, resumed_opt, batches(steps)[cut:])
    assert_identical(resumed_opt.state_dict(), opt.state_dict())
    for a, b in zip(resumed.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def edited(edit) -> dict:
    model = make_model()
    opt = SSTE(model.parameters(), lr=LR)
    train(model, opt, batches(2))
    state_dict = copy.deepcopy(opt.state_dict())
    edit(state_dict["state"]["recipe"])
    return state_dict


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda r: r.pop("beta"), r"lacks \['beta'\], which recipe 'sste' keeps"),
        (lambda r: r["beta"].pop(), r"\['beta'\] must list one scale per sparse parameter \(2\)"),
        (lambda r: r.update(beta=1.5), r"\['beta'\] must list one scale per sparse parameter"),
        (lambda r: r["beta"].__setitem__(1, -2.0), r"\['beta'\]\[1\] must be a finite float > 0"),
        (lambda r: r["beta"].__setitem__(0, float("nan")), r"\['beta'\]\[0\] must be a finite"),
        (lambda r: r["beta"].__setitem__(0, "2"), r"\['beta'\]\[0\] must be a finite float"),
        (lambda r: r.update(name="srste"), r"\['name'\] is 'srste': the state of another recipe"),
    ],
    ids=["missing", "short", "not a list", "negative", "nan", "str", "other recipe"],
)
def test_a_bad_state_dict_is_refused_and_changes_nothing(edit, message):
    model = make_model()
    opt = SSTE(model.parameters(), lr=LR)
    train(model, opt, batches(1))
    before = copy.deepcopy((opt.state_dict(), [model[i].sparsity.beta for i in (0, 2)]))
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(edited(edit))
    after = (opt.state_dict(), [model[i].sparsity.beta for i in (0, 2)])
    assert_identical(after, before)


def test_another_recipes_state_dict_is_refused():
    model = make_model()
    other = make("srste", make_model().parameters(), lr=LR)
    opt = SSTE(model.parameters(), lr=LR)
    with pytest.raises(ValueError, match=r"\['name'\] is 'srste'"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match=r"\['name'\] is 'sste'"):
        other.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("index", range(3), ids=IDS)
def test_every_sparse_layer_type(index):
    _, layer, x = pairs()[index]
    w0 = layer.weight.detach().clone()
    opt = SSTE(layer.parameters(), lr=LR)
    assert opt.scales == pytest.approx([fitted_beta(layer, w0)], rel=1e-12)
    assert layer.sparsity.mode == "soft"
    losses = []
    target = torch.zeros_like(layer(x))
    for _ in range(5):
        loss = (layer(x) - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and not torch.equal(layer.weight.detach(), w0)
    assert opt.scales == pytest.approx([fitted_beta(layer, w0)], rel=1e-12)


def test_flip_rate_is_reported():
    model = make_model()
    opt = SSTE(model.parameters(), lr=5e-2)
    assert opt.flip_rate() is None
    data = batches(6)
    masks, flipped, compared = None, 0, 0
    for x, y in data:
        now = [step.nm_mask(model[i].weight.detach(), 2, 4) for i in (0, 2)]
        if masks is not None:
            flipped += sum(int((a != b).sum()) for a, b in zip(now, masks, strict=True))
            compared += sum(a.numel() for a in now)
        masks = now
        train(model, opt, [(x, y)])
    rate = opt.flip_rate()
    assert rate == pytest.approx(flipped / compared) and 0 < rate < 0.5


def test_a_tiny_model_learns():
    torch.manual_seed(0)
    model = torch.nn.Sequential(SparseLinear(32, 64), torch.nn.GELU(), SparseLinear(64, 32))
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(),
                                  torch.nn.Linear(64, 32))  # fmt: skip
    opt = SSTE(model.parameters(), lr=3e-3)
    losses = []
    for t in range(80):
        x = torch.randn(64, 32, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            y = teacher(x)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert sparsity_of(model[0].weight).mode == "soft"
