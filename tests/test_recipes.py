"""The baselines on the same engine: SR-STE, ASP, dense; and make()."""

import pytest
import torch
from test_optim_step import batches, loss_fn, make_model, relative_error, train

import step
from step.optim import ASP, SRSTE, STEP, DenseAdamW, make


def test_make_builds_each_recipe_by_name():
    for name, cls in [("step", STEP), ("srste", SRSTE), ("asp", ASP), ("dense", DenseAdamW)]:
        kwargs = {"prune_at": 3} if name == "asp" else {}
        assert type(make(name, make_model().parameters(), **kwargs)) is cls
    with pytest.raises(ValueError, match="unknown recipe 'sgd'"):
        make("sgd", make_model().parameters())


def test_srste_masks_from_step_one_and_keeps_updating_v():
    model = make_model()
    opt = SRSTE(model.parameters(), lr=1e-2)
    assert model[0].sparsity.mode == "ste"
    x, y = batches(1)[0]
    torch.testing.assert_close(
        model[0](x), x @ torch.where(step.nm_mask(model[0].weight, 2, 4), model[0].weight, 0).t()
        + model[0].bias,
    )  # fmt: skip
    v_before = None
    for x, y in batches(4):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
        v = opt.state[model[0].weight]["exp_avg_sq"].clone()
        assert v_before is None or not torch.equal(v, v_before)
        v_before = v


def test_srste_first_update_follows_the_formula():
    # step 1: m_hat = g, v_hat = g^2, so w1 = w0 - lr * g / (|g| + eps), where g is the
    # STE gradient plus lambda * (1 - mask) * w0 (lambda large so the term matters)
    lr, lam, eps = 1e-2, 0.5, 1e-8
    model = make_model()
    opt = SRSTE(model.parameters(), lr=lr, eps=eps, srste_decay=lam)
    x, y = batches(1)[0]
    w0 = model[0].weight.detach().clone()
    loss_fn(model, x, y).backward()
    mask = step.nm_mask(w0, 2, 4)
    g = model[0].weight.grad + lam * (~mask) * w0
    opt.step()
    expected = w0 - lr * g / (g.abs() + eps)
    assert relative_error(model[0].weight.detach(), expected) <= 1e-6


def test_asp_prunes_once_then_keeps_the_mask_fixed():
    model = make_model()
    opt = ASP(model.parameters(), lr=1e-2, prune_at=0.5, total_steps=10)
    data = batches(10)
    train(model, opt, data[:4])
    assert not opt.pruned and model[0].sparsity.mode == "dense"
    train(model, opt, data[4:5])  # step 5: the prune step
    mask = step.nm_mask(model[0].weight.detach(), 2, 4)
    assert opt.pruned and model[0].sparsity.mode == "fixed"
    assert torch.equal(model[0].sparsity.mask, mask)
    assert (model[0].weight[~mask] == 0).all()
    train(model, opt, data[5:])
    assert torch.equal(model[0].sparsity.mask, mask)  # fixed
    assert (model[0].weight[~mask] == 0).all()  # pruned weights stay zero
    assert (model[0].weight[mask] != 0).all()


def test_dense_baseline_is_adamw():
    model, ref = make_model(), make_model()
    opt = DenseAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    data = batches(20)
    train(model, opt, data)
    train(ref, ref_opt, data)
    assert model[0].sparsity.mode == "dense"
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert relative_error(a, b) <= 1e-6


def test_asp_resume_keeps_the_mask():
    import io

    model = make_model()
    opt = ASP(model.parameters(), lr=1e-2, prune_at=2)
    train(model, opt, batches(3))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    fresh = make_model()
    fresh_opt = ASP(fresh.parameters(), lr=1e-2, prune_at=2)
    state = torch.load(buf, weights_only=False)
    fresh.load_state_dict(state["model"])
    fresh_opt.load_state_dict(state["opt"])
    assert fresh[0].sparsity.mode == "fixed"
    assert torch.equal(fresh[0].sparsity.mask, model[0].sparsity.mask)
