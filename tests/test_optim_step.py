"""step.optim.STEP: lockstep with AdamW, the spec's mask-learning formulas, persistence,
and the rest of PyTorch (GradScaler, schedulers, clipping, torch.compile)."""

import copy
import io

import pytest
import torch
from test_nm_mask import brute_force_mask

from step.nn import SparseLinear
from step.optim import STEP, AutoSwitch

LR, BETAS, EPS, WD, LAMBDA = 1e-2, (0.9, 0.999), 1e-8, 0.05, 2e-4


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        SparseLinear(16, 32), torch.nn.ReLU(), SparseLinear(32, 8), torch.nn.LayerNorm(8)
    )


def batches(steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 16, generator=gen), torch.randn(16, 8, generator=gen))
        for _ in range(steps)
    ]


def loss_fn(model, x, y):
    return (model(x) - y).pow(2).mean()


def train(model, opt, data, scheduler=None, clip=None):
    for x, y in data:
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if scheduler:
            scheduler.step()


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("with_extras", [False, True], ids=["plain", "clip+scheduler"])
def test_precondition_phase_in_lockstep_with_adamw(with_extras):
    model, ref = make_model(), make_model()
    opt = STEP(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, autoswitch=1000)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    kwargs = [{}, {}]
    if with_extras:
        kwargs = [dict(scheduler=torch.optim.lr_scheduler.StepLR(o, 30, 0.5), clip=0.5)
                  for o in (opt, ref_opt)]  # fmt: skip
    data = batches(100)
    train(model, opt, data, **kwargs[0])
    train(ref, ref_opt, data, **kwargs[1])
    assert opt.phase == "precondition"
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert relative_error(p, q) <= 1e-6, name  # sparse and dense parameters alike


def test_mask_learning_follows_the_spec():
    t0 = 5
    model = make_model()
    opt = STEP(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
               srste_decay=LAMBDA, autoswitch=t0)  # fmt: skip
    data = batches(t0 + 6)
    train(model, opt, data[:t0])
    assert (opt.phase, opt.switch_step) == ("mask_learning", t0)
    layers = [model[0], model[2]]
    frozen_v = [opt.state[layer.weight]["exp_avg_sq"].clone() for layer in layers]

    for t, (x, y) in enumerate(data[t0:], start=t0 + 1):
        # the spec, written independently of the package
        w = [layer.weight.detach().clone() for layer in layers]
        masks = [brute_force_mask(wi, 2, 4) for wi in w]
        m_prev = [opt.state[layer.weight]["exp_avg"].clone() for layer in layers]
        masked = [torch.where(mk, wi, 0).requires_grad_() for wi, mk in zip(w, masks, strict=True)]
        h = torch.relu(x @ masked[0].t() + model[0].bias.detach())
        norm = model[3]
        pre = h @ masked[1].t() + model[2].bias.detach()
        out = torch.nn.functional.layer_norm(pre, (8,), norm.weight.detach(), norm.bias.detach())
        (out - y).pow(2).mean().backward()
        expected = []
        for wi, mk, mt, v, wm in zip(w, masks, m_prev, frozen_v, masked, strict=True):
            g = wm.grad + LAMBDA * (~mk) * wi  # STE gradient + SR-STE term
            mt = BETAS[0] * mt + (1 - BETAS[0]) * g
            wi = wi - LR * WD * wi
            wi = wi - LR * (mt / (1 - BETAS[0] ** t)) / ((v / (1 - BETAS[1] ** t0)).sqrt() + EPS)
            expected.append(wi)

        opt.zero_grad()
        y_model = model(x)
        torch.testing.assert_close(y_model, out, rtol=1e-5, atol=1e-6)  # forward uses w*mask
        loss_fn(model, x, y).backward()
        opt.step()
        for layer, want, v in zip(layers, expected, frozen_v, strict=True):
            assert relative_error(layer.weight.detach(), want) <= 1e-6
            assert torch.equal(opt.state[layer.weight]["exp_avg_sq"], v)  # v* never written


def test_forward_after_a_step_uses_the_new_weights_mask_even_without_a_version_bump():
    """FSDP2 all-gathers every forward's weight into the same buffer without bumping its
    version counter, so the layer's mask cache cannot see the change: the optimizer step
    must drop it."""
    model = make_model()
    opt = STEP(model.parameters(), lr=LR, autoswitch=1)
    train(model, opt, batches(2))
    assert opt.phase == "mask_learning"
    layer, x = model[0], torch.randn(4, 16)
    layer(x).sum().backward()  # caches the mask of the current weight
    refilled = torch.randn_like(layer.weight)
    # FSDP2: the step updates the shard, and the all-gather refills the forward's weight
    with torch.no_grad(), torch.autograd._unsafe_preserve_version_counter(layer.weight):
        opt.step()
        layer.weight.copy_(refilled)
    expected = x @ torch.where(brute_force_mask(refilled, 2, 4), refilled, 0).t() + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_dense_parameters_stay_adamw_after_the_switch():
    model, ref = make_model(), make_model()
    opt = STEP(model.parameters(), lr=LR, autoswitch=3)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=0.0)
    for x, y in batches(10):
        for mdl, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            loss_fn(mdl, x, y).backward()
        # feed the reference the very same gradients for the dense LayerNorm
        for a, b in zip(model[3].parameters(), ref[3].parameters(), strict=True):
            b.grad = a.grad.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(model[3].parameters(), ref[3].parameters(), strict=True):
        assert relative_error(a, b) <= 1e-6


def test_param_groups_with_nm_mark_plain_weights_sparse():
    lin = torch.nn.Linear(8, 4)
    opt = STEP(
        [{"params": [lin.weight], "nm": (1, 4)}, {"params": [lin.bias]}], lr=LR, autoswitch=1
    )
    x = torch.randn(5, 8)
    lin(x).sum().backward()
    opt.step()
    assert opt.phase == "mask_learning"
    assert lin.weight.nm_sparsity.mode == "ste" and (
        lin.weight.nm_sparsity.n,
        lin.weight.nm_sparsity.m,
    ) == (1, 4)
    v = opt.state[lin.weight]["exp_avg_sq"].clone()
    lin(x).sum().backward()
    opt.step()
    assert torch.equal(opt.state[lin.weight]["exp_avg_sq"], v)


def save(model, opt):
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stop", ["precondition", "switch", "mask_learning"])
def test_resume_is_bit_identical(stop, dtype):
    steps = 60

    def fresh():
        model = make_model().to(dtype)
        opt = STEP(model.parameters(), lr=LR, weight_decay=WD,
                   autoswitch=AutoSwitch(window=5, t_max=steps))  # fmt: skip
        return model, opt

    data = [(x.to(dtype), y.to(dtype)) for x, y in batches(steps)]
    model, opt = fresh()
    train(model, opt, data)
    t0 = opt.switch_step
    assert t0 is not None and t0 < steps, "the criterion must decide the switch here"
    cut = {"precondition": t0 // 2, "switch": t0, "mask_learning": t0 + 5}[stop]

    first, first_opt = fresh()
    train(first, first_opt, data[:cut])
    checkpoint = save(first, first_opt)
    del first, first_opt
    resumed, resumed_opt = fresh()
    state = torch.load(checkpoint, weights_only=False)
    resumed.load_state_dict(state["model"])
    resumed_opt.load_state_dict(state["opt"])
    assert resumed_opt.phase == ("precondition" if cut < t0 else "mask_learning")
    assert resumed[0].sparsity.mode == ("dense" if cut < t0 else "ste")
    train(resumed, resumed_opt, data[cut:])

    assert resumed_opt.switch_step == t0
    for a, b in zip(resumed.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    for p, q in zip(resumed.parameters(), model.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert resumed_opt.state[p][key].dtype == torch.float32
            assert torch.equal(resumed_opt.state[p][key], opt.state[q][key])


def test_grad_scaler_skipped_steps_do_not_count():
    model = make_model()
    opt = STEP(model.parameters(), lr=LR, autoswitch=1000)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    data = batches(6)
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        if i == 2:
            loss = loss * float("inf")  # overflow: this step must be skipped
        scaler.scale(loss).backward()
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        if i == 2:
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.t == 5
    assert len(opt.autoswitch.history) == 5


def test_torch_compile_of_the_model_through_the_switch():
    eager, compiled_model = make_model(), make_model()
    compiled = torch.compile(compiled_model, backend="aot_eager")
    opts = [STEP(m.parameters(), lr=LR, autoswitch=4) for m in (eager, compiled_model)]
    for x, y in batches(8):
        for mdl, o in ((eager, opts[0]), (compiled, opts[1])):
            o.zero_grad()
            loss_fn(mdl, x, y).backward()
            o.step()
    assert opts[1].phase == "mask_learning"
    for a, b in zip(eager.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_deepcopy_keeps_each_layer_its_own_sparsity():
    model = make_model()
    twin = copy.deepcopy(model)
    assert twin[0].weight.nm_sparsity is twin[0].sparsity
    assert twin[0].sparsity is not model[0].sparsity
    twin_opt = STEP(twin.parameters(), autoswitch=1000)
    x, y = batches(1)[0]
    loss_fn(twin, x, y).backward()
    twin_opt.step()
    twin_opt.switch_now()
    assert (twin[0].sparsity.mode, model[0].sparsity.mode) == ("ste", "dense")


@pytest.mark.parametrize("kwargs,pattern", [
    ({"lr": -1.0}, "lr must be"),
    ({"eps": -1e-8}, "eps must be"),
    ({"betas": (0.9, 1.0)}, r"betas must be two floats in \[0, 1\)"),
    ({"betas": (-0.1, 0.9)}, "betas"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"srste_decay": -1.0}, "srste_decay"),
    ({"autoswitch": 0}, "fixed switch step must be >= 1"),
])  # fmt: skip
def test_bad_hyperparameters(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        STEP(make_model().parameters(), **kwargs)


def test_bad_sparse_groups():
    lin = torch.nn.Linear(6, 4)
    with pytest.raises(ValueError, match=r"shape \(4, 6\).*not divisible by m=4"):
        STEP([{"params": [lin.weight], "nm": (2, 4)}])
    with pytest.raises(ValueError, match="1 <= n < m"):
        STEP([{"params": [lin.weight], "nm": (4, 4)}])
    message = r"SparseLinear.weight has shape \(4, 6\).*size 6.*not divisible by m=4"
    with pytest.raises(ValueError, match=message):
        SparseLinear(6, 4)
    with pytest.raises(ValueError, match="unknown AutoSwitch criterion"):
        STEP(make_model().parameters(), autoswitch=AutoSwitch(criterion="soon"))


def test_switch_needs_a_variance_estimate():
    model = make_model()
    opt = STEP(model.parameters(), autoswitch=1000)
    with pytest.raises(RuntimeError, match="before the first step"):
        opt.switch_now()
    # a sparse weight that had no gradient during the precondition phase
    x, y = batches(1)[0]
    model[0].weight.requires_grad_(False)
    loss_fn(model, x, y).backward()
    opt.step()
    opt.switch_now()
    model[0].weight.requires_grad_(True)
    opt.zero_grad()
    loss_fn(model, x, y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="first gradient after the switch"):
        opt.step()
    assert opt.t == 1  # refused before anything moved
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
