"""AutoSwitch: the paper rule, the scale-free default, clipping, persistence."""

import pytest
import torch

import step
from step.nn import SparseLinear
from step.optim import AutoSwitch


def run_stream(switch: AutoSwitch, zs, vs=None):
    """Feed (z, v) samples from step 1; return the switch step (or None)."""
    vs = vs if vs is not None else [1.0] * len(zs)
    for t, (z, v) in enumerate(zip(zs, vs, strict=True), start=1):
        if switch.observe(t, z, v):
            return t
    return None


def paper_rule(zs, window, threshold, t_min, t_max):
    """The spec's rule written out: mean of the last `window` samples (fewer while filling)."""
    for t in range(1, len(zs) + 1):
        recent = zs[max(0, t - window) : t]
        if t >= t_max or (t >= t_min and sum(recent) / len(recent) < threshold):
            return t
    return None


class TestPaperCriterion:
    zs = [5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1]

    @pytest.mark.parametrize("window,threshold,t_min,t_max", [
        (3, 1.0, 0, 100), (3, 1.0, 11, 100), (1, 2.5, 0, 100), (4, 0.05, 0, 12), (2, 0.95, 3, 100),
    ])  # fmt: skip
    def test_switches_on_the_step_the_rule_gives(self, window, threshold, t_min, t_max):
        got = run_stream(AutoSwitch(t_min, t_max, window, "paper", threshold), self.zs)
        assert got == paper_rule(self.zs, window, threshold, t_min, t_max)
        assert got is not None

    def test_hand_computed_example(self):
        # window 3: means 5, 4.5, 4, 3, 2.17, 1.5, 1.13, 0.8 -> first below 1.0 at t=8
        assert run_stream(AutoSwitch(0, 100, 3, "paper", 1.0), self.zs) == 8

    def test_paper_threshold_is_not_scale_free(self):
        scaled = [z * 1e6 for z in self.zs]
        assert run_stream(AutoSwitch(0, 100, 3, "paper", 1.0), self.zs) == 8
        assert run_stream(AutoSwitch(0, 100, 3, "paper", 1.0), scaled) is None  # never
        assert run_stream(AutoSwitch(0, 14, 3, "paper", 1.0), scaled) == 14  # only t_max stops it


class TestPlateauCriterion:
    @staticmethod
    def stream(steps=400, floor=2e-3):
        """r_t = 1/t + floor: falls, then flattens. v grows like 1 - 0.99^t."""
        vs = [1.0 - 0.99**t for t in range(1, steps + 1)]
        zs = [v * (1.0 / t + floor) for t, v in enumerate(vs, start=1)]
        return zs, vs

    def test_switches_once_r_flattens(self):
        zs, vs = self.stream()
        t = run_stream(AutoSwitch(window=20), zs, vs)
        assert t is not None and 40 < t < 400
        switch = AutoSwitch(window=20)
        run_stream(switch, zs, vs)
        record = switch.history[-1]
        assert record.switch and record.statistic >= 0.95
        assert all(r.statistic is None or r.statistic < 0.95 for r in switch.history[:-1])

    @pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e3, 1e6])
    def test_loss_scale_does_not_move_the_switch(self, scale):
        zs, vs = self.stream()
        base = run_stream(AutoSwitch(window=20), zs, vs)
        c2 = scale**2  # z and v scale with the squared gradient
        assert run_stream(AutoSwitch(window=20), [z * c2 for z in zs], [v * c2 for v in vs]) == base

    def test_no_decision_before_two_windows(self):
        switch = AutoSwitch(window=10)
        for t in range(1, 20):
            assert not switch.observe(t, 1.0, 1.0)  # flat from the start, but undecided
        assert switch.observe(20, 1.0, 1.0)


class TestClipping:
    def test_t_min_delays_and_t_max_forces(self):
        flat = [1.0] * 50
        assert run_stream(AutoSwitch(t_min=30, window=2), flat) == 30
        falling = [1.0 / t for t in range(1, 51)]
        assert (
            run_stream(AutoSwitch(t_max=12, window=2, criterion="paper", threshold=1e-9), falling)
            == 12
        )

    def test_fractions_of_total_steps(self):
        switch = AutoSwitch(t_min=0.1, t_max=0.5, total_steps=200)
        assert (switch.t_min, switch.t_max) == (20, 100)

    def test_switches_once(self):
        switch = AutoSwitch(t_min=1, t_max=1, window=1)
        assert switch.observe(1, 1.0, 1.0)
        with pytest.raises(RuntimeError, match="already switched at step 1"):
            switch.observe(2, 1.0, 1.0)


def test_state_dict_round_trip_continues_identically():
    zs, vs = TestPlateauCriterion.stream()
    full = AutoSwitch(window=20)
    expected = run_stream(full, zs, vs)
    first = AutoSwitch(window=20)
    for t in range(1, 31):
        first.observe(t, zs[t - 1], vs[t - 1])
    resumed = AutoSwitch()
    resumed.load_state_dict(first.state_dict())
    got = None
    for t in range(31, len(zs) + 1):
        if resumed.observe(t, zs[t - 1], vs[t - 1]):
            got = t
            break
    assert got == expected
    assert [vars(r) for r in resumed.history] == [vars(r) for r in full.history]


@pytest.mark.parametrize("kwargs,pattern", [
    ({"criterion": "fast"}, "unknown AutoSwitch criterion"),
    ({"criterion": "paper"}, "needs a threshold"),
    ({"t_min": 0.1}, "pass total_steps"),
    ({"t_max": 1.5, "total_steps": 10}, r"must lie in \(0, 1\]"),
    ({"t_min": 50, "t_max": 10}, "t_max .* must be >= t_min"),
    ({"window": 0}, "window must be a positive int"),
    ({"threshold": -1.0}, "threshold must be > 0"),
])  # fmt: skip
def test_bad_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        AutoSwitch(**kwargs)


# ---------------------------------------------------------------- end to end


def switch_step_of_training(loss_scale=1.0, copies=1, steps=120):
    """Train a tiny regression with STEP; `copies` identical branches averaged (a bigger
    model with the same per-element statistics)."""
    torch.manual_seed(0)
    branch = SparseLinear(16, 8)
    branches = torch.nn.ModuleList()
    for _ in range(copies):
        b = SparseLinear(16, 8)
        b.load_state_dict(branch.state_dict())
        branches.append(b)
    opt = step.optim.STEP(branches.parameters(), lr=3e-3,
                          autoswitch=AutoSwitch(window=8, t_max=steps))  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(8, 16, generator=gen)
    for _ in range(steps):
        x = torch.randn(32, 16, generator=gen)
        y = sum(b(x) for b in branches) / copies
        loss = (y - x @ target.t()).pow(2).mean() * loss_scale
        opt.zero_grad()
        loss.backward()
        opt.step()
        if opt.phase == "mask_learning":
            return opt.switch_step
    return None


def test_scale_free_end_to_end():
    base = switch_step_of_training()
    assert base is not None and base < 120, "the criterion, not t_max, must decide"
    assert switch_step_of_training(loss_scale=1e3) == base
    assert switch_step_of_training(loss_scale=1e-3) == base
    assert switch_step_of_training(copies=3) == base
