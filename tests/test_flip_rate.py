"""The mask flip rate: counted from the masks the forward passes compute, read per layer
and overall by independent readers, exposed by the optimizer, logged by a training run
and resumed exactly."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import interrupted_at

import step
from step.nn import FlipRate, NMSparsity, SparseLinear
from step.ops.nm_mask import nm_mask_ref
from step.train.config import build
from step.train.loop import train


def test_counts_follow_the_masks_remembered():
    state = NMSparsity(2, 4)
    w = torch.randn(8, 16)
    assert state.flip_counts() == (None, 0)
    first = nm_mask_ref(w, 2, 4)
    state.remember_mask(w, first)
    assert state.flip_counts() == (None, 0)  # nothing to compare the first mask with
    second = first.clone()
    second[0, :4] = ~second[0, :4]  # a whole group swapped: 4 entries flip
    state.remember_mask(w, second)
    flipped, compared = state.flip_counts()
    assert int(flipped) == 4 and compared == w.numel()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(SparseLinear(32, 16), torch.nn.ReLU(), SparseLinear(16, 8))


def _masks(model) -> list[torch.Tensor]:
    return [nm_mask_ref(model[i].weight.detach(), 2, 4) for i in (0, 2)]


@pytest.mark.parametrize("recipe", ["srste", "step"])
def test_rates_equal_the_masks_differences_per_layer_and_overall(recipe):
    model = _model()
    kwargs = {"autoswitch": step.optim.AutoSwitch(t_max=1)} if recipe == "step" else {}
    opt = step.optim.make(recipe, model.parameters(), lr=5e-2, **kwargs)
    x = torch.randn(64, 32)
    while getattr(opt, "phase", "mask_learning") != "mask_learning":  # STEP: one dense step
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    layers, other = FlipRate(model), FlipRate(model)
    assert opt.flip_rate() is None  # nothing compared yet
    seen = []
    for _ in range(6):
        seen.append(_masks(model))  # the masks this step's forward pass computes
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    pairs = list(zip(seen, seen[1:], strict=False))  # consecutive masks
    flipped = [sum(int((b[i] != a[i]).sum()) for a, b in pairs) for i in (0, 1)]
    sizes = [model[i].weight.numel() * (len(seen) - 1) for i in (0, 2)]
    reading = layers.read()
    assert reading.layers == {"0": flipped[0] / sizes[0], "2": flipped[1] / sizes[1]}
    assert reading.overall == sum(flipped) / sum(sizes)
    assert 0 < reading.overall < 1  # lr 5e-2 moves some masks
    assert other.read() == reading  # readers do not disturb one another
    assert opt.flip_rate() == reading.overall
    assert layers.read().overall is None and opt.flip_rate() is None  # nothing new


def test_no_rate_while_dense_or_fixed():
    model = _model()
    opt = step.optim.make("step", model.parameters(), lr=1e-2)  # precondition: dense
    asp_model = _model()
    asp = step.optim.make("asp", asp_model.parameters(), lr=1e-2, prune_at=1)
    x = torch.randn(4, 32)
    for net, o in ((model, opt), (asp_model, asp)):
        for _ in range(3):
            net(x).sum().backward()
            o.step()
            o.zero_grad()
        assert o.flip_rate() is None


def test_counting_adds_no_ranking_pass(monkeypatch):
    """The forward pass's own mask is compared: nm_mask runs once per weight update."""
    calls = []
    original = torch.ops.step.nm_mask

    model = _model()
    opt = step.optim.make("srste", model.parameters(), lr=1e-2)
    x = torch.randn(4, 32)
    monkeypatch.setattr(torch.ops.step, "nm_mask", lambda *a: calls.append(1) or original(*a))
    for _ in range(3):
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()
    assert opt.flip_rate() is not None
    assert len(calls) <= 2 * 3  # at most one ranking per sparse weight and step


def _rows(run) -> list[dict]:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]


def test_a_run_logs_flip_rates_and_resumes_them_exactly(tmp_path, monkeypatch):
    from step.tasks.shakespeare import Shakespeare

    cfg = build({}, {"steps": 10, "eval_every": 5, "log_every": 3, "batch_size": 4,
                     "recipe": "srste"}).resolved()  # fmt: skip
    train(cfg, tmp_path / "straight", quiet=True)
    # killed right after the checkpoint of step 5, between two log steps
    interrupted_at(monkeypatch, Shakespeare, 6, lambda: train(cfg, tmp_path / "cut", quiet=True))
    train(cfg, tmp_path / "cut", resume=True, quiet=True)
    straight, cut = _rows(tmp_path / "straight"), _rows(tmp_path / "cut")
    assert straight == cut
    logged = [r for r in straight if "flip_rate" in r]
    assert [r["step"] for r in logged] == [3, 6, 9, 10]
    assert all(0 <= r["flip_rate"] < 1 for r in logged)
    assert all(set(r["flip_rate_layers"]) and None not in r["flip_rate_layers"].values()
               for r in logged)  # fmt: skip


def _train(model, opt, batches):
    for x in batches:
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()


def test_a_user_loop_resumes_its_readings_exactly():
    """Model, optimizer and FlipRate states saved mid-run (with counts not yet read) and
    loaded into fresh objects give the readings of an uninterrupted run: the first mask
    update after the resume is compared with the saved last mask, and not counted twice."""
    batches = [torch.randn(16, 32) for _ in range(9)]
    model = _model()
    opt = step.optim.SRSTE(model.parameters(), lr=5e-2)
    layers = FlipRate(model)
    _train(model, opt, batches[:3])
    first = layers.read()
    _train(model, opt, batches[3:6])
    straight = layers.read()

    model = _model()
    opt = step.optim.SRSTE(model.parameters(), lr=5e-2)
    layers = FlipRate(model)
    _train(model, opt, batches[:3])
    assert layers.read() == first
    _train(model, opt, batches[3:4])  # one update counted, not read, when saved
    saved = {"model": model.state_dict(), "opt": opt.state_dict(), "flips": layers.state_dict()}
    assert set(saved["flips"]["last_masks"]) == {"0", "2"}

    resumed = _model()
    opt = step.optim.SRSTE(resumed.parameters(), lr=5e-2)
    resumed.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    layers = FlipRate(resumed)
    layers.load_state_dict(saved["flips"])
    _train(resumed, opt, batches[4:6])
    assert layers.read() == straight
    assert straight.overall is not None and straight.overall > 0


def test_a_checkpoint_with_the_older_layout_resumes_exactly(tmp_path, monkeypatch):
    """Checkpoints written before the last masks moved into the FlipRate state (they
    were kept beside it, keyed by parameter name) resume as exactly as new ones."""
    import step.train.loop as loop
    from step.tasks.shakespeare import Shakespeare

    def older_state(*args):
        state = new_state(*args)
        flips = state.pop("flips")
        masks = {f"{k}.weight": v for k, v in flips["last_masks"].items()}
        current = [f"{k}.weight" for k in flips["current"]]
        return {**state, "flips": flips["pending"],
                "last_masks": {"masks": masks, "current": current}}  # fmt: skip

    new_state = loop._state
    cfg = build({}, {"steps": 10, "eval_every": 5, "log_every": 3, "batch_size": 4,
                     "recipe": "srste"}).resolved()  # fmt: skip
    train(cfg, tmp_path / "straight", quiet=True)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_state", older_state)
        interrupted_at(patch, Shakespeare, 6, lambda: train(cfg, tmp_path / "cut", quiet=True))
    train(cfg, tmp_path / "cut", resume=True, quiet=True)
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "cut")
