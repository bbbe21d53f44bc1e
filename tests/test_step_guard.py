"""STEP's variance guard: a frozen v that is no usable estimate (elements that saw no
gradient before the switch) must not make the mask-learning step explode, while STEP
stays the spec's update wherever v* is healthy."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_bits_equal

import step
from step.nn import SparseLinear
from step.optim.step_recipe import VARIANCE_FLOOR

SWITCH, AFTER = 200, 500


def _dead_units_run(variance_floor: float, backend: str = "cpu", after: int = AFTER):
    """Half the hidden ReLU units are dead, and half the input channels see no data,
    during the precondition phase; after the switch the inputs cover every channel and
    the dead units come alive. Returns the losses and the largest |parameter| per step."""
    torch.manual_seed(0)
    d_in, hidden = 32, 64
    teacher = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.Tanh(),
                                  torch.nn.Linear(hidden, 4))  # fmt: skip
    model = torch.nn.Sequential(SparseLinear(d_in, hidden), torch.nn.ReLU(),
                                SparseLinear(hidden, 4))  # fmt: skip
    with torch.no_grad():  # units 0..31: negative weights on the non-negative inputs
        model[0].weight[:32, :16] = -model[0].weight[:32, :16].abs()
        model[0].bias[:32] = -0.1
    opt = step.optim.STEP(model.parameters(), lr=3e-3, autoswitch=SWITCH,
                          variance_floor=variance_floor)  # fmt: skip
    losses, largest = [], []
    with step.use_backend(f"adam_update={backend}"):
        for _ in range(SWITCH + after):
            x = torch.randn(64, d_in)
            if opt.phase == "precondition":
                x[:, :16], x[:, 16:] = x[:, :16].abs(), 0.0
            with torch.no_grad():
                y = teacher(x)
            loss = (model(x) - y).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            largest.append(max(p.detach().abs().max().item() for p in model.parameters()))
    assert opt.switch_step == SWITCH
    return losses, largest, model, opt


def _embedding_run(variance_floor: float, after: int = AFTER):
    """An embedding table learned as an N:M weight (a param group with nm=(2, 4)) whose
    upper half of rows is never looked up before the switch."""
    torch.manual_seed(0)
    vocab, dim = 64, 32
    table = torch.nn.Embedding(vocab, dim)
    head = SparseLinear(dim, 8)
    target = torch.randn(vocab, 8)
    opt = step.optim.STEP(
        [{"params": [table.weight], "nm": (2, 4)}, {"params": head.parameters()}],
        lr=3e-3, autoswitch=SWITCH, variance_floor=variance_floor,
    )  # fmt: skip
    losses, largest = [], []
    for _ in range(SWITCH + after):
        tokens = torch.randint(vocab // 2 if opt.phase == "precondition" else vocab, (128,))
        loss = (head(table(tokens)) - target[tokens]).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        largest.append(max(table.weight.abs().max().item(), head.weight.abs().max().item()))
    return losses, largest


def _learns(losses: list[float], largest: list[float]) -> None:
    after = losses[SWITCH:]
    assert all(torch.isfinite(torch.tensor(largest))), "a parameter went non-finite"
    assert max(largest) < 10, max(largest)
    first, last = sum(after[:50]) / 50, sum(after[-50:]) / 50
    assert last < 0.5 * first, (first, last)  # the loss keeps falling past the switch


def test_dead_units_train_on_past_the_switch():
    losses, largest, _, _ = _dead_units_run(VARIANCE_FLOOR)
    _learns(losses, largest)


def test_unused_embedding_rows_train_on_past_the_switch():
    _learns(*_embedding_run(VARIANCE_FLOOR))


@pytest.mark.parametrize("run", [_dead_units_run, _embedding_run])
def test_without_the_guard_the_spec_update_explodes(run):
    """The failure the guard exists for: variance_floor=0 is the spec's update exactly."""
    largest = run(0.0, after=30)[1]
    assert not all(x < 1e3 for x in largest[SWITCH:])


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_backends_take_the_same_guarded_steps(backend):
    """Every backend guards alike: 30 steps past the switch stay within rounding of C's."""
    ref = _dead_units_run(VARIANCE_FLOOR, "cpu", after=30)[2]
    got = _dead_units_run(VARIANCE_FLOOR, backend, after=30)[2]
    for a, b in zip(ref.parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_floors_are_set_at_the_switch_saved_and_resumed_bit_exactly():
    _, _, model, opt = _dead_units_run(VARIANCE_FLOOR, after=1)
    for p in opt.sparse_params():
        state = opt.state[p]
        v_mean = state["exp_avg_sq"].double().mean().item()
        assert 0 < state["v_floor"] <= VARIANCE_FLOOR * v_mean * 1.01 + 1e-30
    saved = copy.deepcopy(opt.state_dict())  # state_dict() shares the live tensors
    weights = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(64, 32)

    def steps(m, o):
        for _ in range(3):
            m(x).square().mean().backward()
            o.step()
            o.zero_grad()
        return [p.detach().clone() for p in m.parameters()]

    straight = steps(model, opt)
    clone = torch.nn.Sequential(SparseLinear(32, 64), torch.nn.ReLU(), SparseLinear(64, 4))
    with torch.no_grad():
        for p, w in zip(clone.parameters(), weights, strict=True):
            p.copy_(w)
    again = step.optim.STEP(clone.parameters(), lr=3e-3, autoswitch=SWITCH)
    again.load_state_dict(saved)
    for a, b in zip(straight, steps(clone, again), strict=True):
        assert_bits_equal(a, b)


def test_a_state_saved_without_floors_loads_and_runs_unguarded():
    _, _, model, opt = _dead_units_run(VARIANCE_FLOOR, after=1)
    saved = opt.state_dict()
    for entry in saved["state"].values():
        if isinstance(entry, dict):
            entry.pop("v_floor", None)  # as saved before the guard existed
    again = step.optim.STEP(model.parameters(), lr=3e-3, autoswitch=SWITCH)
    again.load_state_dict(saved)
    assert all("v_floor" not in again.state[p] for p in again.sparse_params())
    model(torch.randn(4, 32)).sum().backward()
    again.step()  # the spec's update, no floors passed


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "0.01"])
def test_bad_variance_floor_is_refused(bad):
    layer = SparseLinear(8, 4)
    with pytest.raises((TypeError, ValueError), match="variance_floor"):
        step.optim.STEP(layer.parameters(), variance_floor=bad)


def test_a_tensor_without_any_gradient_before_the_switch_is_guarded():
    """Its mean v* is 0, so its own floor would be 0: it takes the sparse tensors' common
    floor instead, and its first gradients after the switch take AdamW-sized steps."""
    torch.manual_seed(0)
    seen, unseen = SparseLinear(16, 8), SparseLinear(16, 8)
    opt = step.optim.STEP([*seen.parameters(), *unseen.parameters()], lr=1e-3, autoswitch=5)
    start = unseen.weight.detach().clone()
    for t in range(12):
        x = torch.randn(4, 16)
        loss = seen(x).square().mean() + (unseen(x).square().mean() if t >= 5 else 0.0)
        loss.backward()
        if unseen.weight.grad is None:  # zero, not None: it is updated with v staying 0
            unseen.weight.grad = torch.zeros_like(unseen.weight)
        opt.step()
        opt.zero_grad()
    assert opt.state[unseen.weight]["v_floor"] > 0
    assert (unseen.weight.detach() - start).abs().max() < 0.1  # 7 steps of lr 1e-3, not 7e5
