"""AutoSwitch: the paper rule, the scale-free default, clipping, persistence; the
defaults for a run of a stated length (``STEP(..., total_steps=N)``) and ``step.freeze``'s
warning about masks never learned."""

import copy
import io
import warnings

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


# ---------------------------------------------------------------- the run's length


class TestForRun:
    @pytest.mark.parametrize("total,window,t_min,t_max", [
        (1, 5, 1, 1), (10, 5, 1, 5), (100, 5, 10, 50), (2_000, 100, 200, 1_000),
        (100_000, 1_000, 10_000, 50_000),  # capped at v's own time scale 1/(1-beta2)
    ])  # fmt: skip
    def test_window_and_clip_fit_the_run(self, total, window, t_min, t_max):
        switch = AutoSwitch.for_run(total)
        assert (switch.window, switch.t_min, switch.t_max) == (window, t_min, t_max)
        assert (switch.criterion, switch.threshold, switch.total_steps) == ("plateau", 0.95, total)
        assert switch.cannot_switch_within(total) is None

    def test_window_follows_beta2(self):
        assert AutoSwitch.for_run(100_000, beta2=0.99).window == 100

    @pytest.mark.parametrize("total,error", [(0, ValueError), (2.5, TypeError), (True, TypeError)])
    def test_bad_total_steps(self, total, error):
        with pytest.raises(error, match="total_steps must be a positive int"):
            AutoSwitch.for_run(total)


class TestCannotSwitchWithin:
    def test_default_cannot_decide_before_two_windows(self):
        switch = AutoSwitch()
        switch.attach(0.999)
        assert "cannot decide before step 2000, and there is no t_max" in (
            switch.cannot_switch_within(1999)
        )
        assert switch.cannot_switch_within(2000) is None

    def test_t_min_and_t_max(self):
        assert AutoSwitch(t_min=60, window=5).cannot_switch_within(50) == "t_min is 60"
        assert AutoSwitch(t_max=50, window=1000).cannot_switch_within(50) is None
        assert "t_max is 51" in AutoSwitch(t_max=51, window=1000).cannot_switch_within(50)

    def test_paper_rule_may_fire_any_time(self):
        assert (
            AutoSwitch(criterion="paper", threshold=1e-8, window=1000).cannot_switch_within(5)
            is None
        )


def sparse_model():
    return torch.nn.Sequential(SparseLinear(16, 32), torch.nn.GELU(), SparseLinear(32, 8))


def train_steps(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


class TestSTEPTotalSteps:
    @pytest.mark.parametrize("total", [1, 7, 60])
    def test_a_short_run_learns_masks(self, total):
        torch.manual_seed(0)
        model = sparse_model()
        opt = step.optim.STEP(model.parameters(), lr=1e-3, total_steps=total)
        assert vars(opt.autoswitch) == vars(AutoSwitch.for_run(total))
        train_steps(model, opt, total)
        assert opt.phase == "mask_learning"
        assert opt.switch_step <= opt.autoswitch.t_max == max(1, round(total / 2))
        assert all(layer.sparsity.mode == "ste" for layer in (model[0], model[2]))

    def test_without_total_steps_the_default_is_unchanged(self):
        opt = step.optim.STEP(sparse_model().parameters())
        expected = AutoSwitch()
        expected.attach(0.999)
        assert vars(opt.autoswitch) == vars(expected)

    @pytest.mark.parametrize("total", [None, 500])
    def test_an_explicit_autoswitch_is_used_as_given(self, total):
        given = AutoSwitch(t_min=3, t_max=40, window=7)
        opt = step.optim.STEP(sparse_model().parameters(), autoswitch=given, total_steps=total)
        assert opt.autoswitch is given
        assert (given.t_min, given.t_max, given.window, given.total_steps) == (3, 40, 7, None)
        fixed = step.optim.STEP(sparse_model().parameters(), autoswitch=30, total_steps=total)
        assert (fixed.autoswitch.t_min, fixed.autoswitch.t_max) == (30, 30)

    def test_make_passes_it_on(self):
        opt = step.optim.make("step", sparse_model().parameters(), total_steps=300)
        assert opt.autoswitch.t_max == 150

    @pytest.mark.parametrize("kwargs,error,pattern", [
        ({"total_steps": 0}, ValueError, "total_steps must be a positive int"),
        ({"total_steps": 10.0}, TypeError, "total_steps must be a positive int"),
        ({"total_steps": 50, "autoswitch": 100}, ValueError,
         r"autoswitch=100 cannot switch within the run of total_steps=50 steps \(t_min is 100\)"),
        ({"total_steps": 1999, "autoswitch": AutoSwitch()}, ValueError,
         "cannot decide before step 2000, and there is no t_max"),
        ({"total_steps": 100, "autoswitch": AutoSwitch(t_max=0.5, total_steps=200)}, ValueError,
         "disagree on the run's length"),
    ])  # fmt: skip
    def test_refused_before_anything_changes(self, kwargs, error, pattern):
        w = torch.nn.Parameter(torch.randn(4, 8))
        given = kwargs.get("autoswitch")
        window = given.window if isinstance(given, AutoSwitch) else None
        with pytest.raises(error, match=pattern):
            step.optim.STEP([{"params": [w], "nm": (2, 4)}], **kwargs)
        assert step.nn.sparsity_of(w) is None
        if isinstance(given, AutoSwitch):
            assert given.window == window

    @pytest.mark.parametrize("saved_total,loaded_total", [(None, 40), (40, None)])
    def test_state_dicts_load_across_the_argument(self, saved_total, loaded_total):
        """A state_dict keeps the AutoSwitch it was saved with (the format is unchanged):
        one saved without total_steps loads into STEP(total_steps=...) and vice versa."""
        torch.manual_seed(0)
        model = sparse_model()
        opt = step.optim.STEP(model.parameters(), total_steps=saved_total)
        train_steps(model, opt, 3)
        saved = opt.state_dict()
        assert set(saved["state"]["recipe"]) == {"name", "t", "phase", "switch_step",
                                                 "autoswitch"}  # fmt: skip
        fresh = step.optim.STEP(model.parameters(), total_steps=loaded_total)
        fresh.load_state_dict(saved)
        assert fresh.autoswitch.state_dict() == opt.autoswitch.state_dict()
        assert fresh.t == 3


def freeze_warnings(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step.freeze(model)
    return [w for w in caught if issubclass(w.category, UserWarning)]


class TestFreezeWarns:
    def test_before_the_switch(self):
        torch.manual_seed(0)
        model = sparse_model()
        opt = step.optim.STEP(model.parameters(), lr=1e-3)
        train_steps(model, opt, 5)
        with pytest.warns(UserWarning, match=r"STEP\(params, \.\.\., total_steps=N\)") as rec:
            step.freeze(model)
        message = str(rec[0].message)
        assert "2 of 2 sparse layers are pruned by weight magnitude" in message
        assert "after 5 steps" in message and "cannot decide before step 2000" in message
        assert rec[0].filename == __file__  # points at the caller's line

    def test_export_warns_too(self, tmp_path):
        model = sparse_model()
        opt = step.optim.STEP(model.parameters(), lr=1e-3, total_steps=100)
        train_steps(model, opt, 3)
        match = r"^step\.export: 2 of 2 sparse layers .* step 50"
        with pytest.warns(UserWarning, match=match) as rec:
            step.export(model, tmp_path / "out")
        assert rec[0].filename == __file__
        assert (tmp_path / "out" / "model.safetensors").is_file()  # warned, still written
        opt = step.optim.STEP(model.parameters(), lr=1e-3, total_steps=4)
        train_steps(model, opt, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            step.export(model, tmp_path / "after")  # switched: no warning

    def test_before_t_max_says_when_it_will_switch(self):
        model = sparse_model()
        opt = step.optim.STEP(model.parameters(), lr=1e-3, total_steps=100)
        train_steps(model, opt, 3)
        with pytest.warns(UserWarning, match="it switches at step 50 at the latest"):
            step.freeze(model)

    def test_not_after_the_switch(self):
        model = sparse_model()
        opt = step.optim.STEP(model.parameters(), lr=1e-3, total_steps=10)
        train_steps(model, opt, 10)
        assert opt.phase == "mask_learning" and freeze_warnings(model) == []

    def test_not_after_loading_a_switched_state(self):
        model = sparse_model()
        opt = step.optim.STEP(model.parameters(), autoswitch=2)
        train_steps(model, opt, 3)
        fresh_model = sparse_model()
        fresh_model.load_state_dict(model.state_dict())
        fresh = step.optim.STEP(fresh_model.parameters())
        fresh.load_state_dict(opt.state_dict())
        assert freeze_warnings(fresh_model) == []

    @pytest.mark.parametrize("recipe", ["none", "dense", "asp", "srste"])
    def test_not_without_a_STEP_optimizer(self, recipe):
        model = sparse_model()
        if recipe != "none":
            kwargs = {"total_steps": 4} if recipe == "asp" else {}
            opt = step.optim.make(recipe, model.parameters(), **kwargs)
            train_steps(model, opt, 1)
        assert freeze_warnings(model) == []

    def test_copies_and_pickles_keep_the_warning(self):
        model = sparse_model()
        opt = step.optim.STEP(model.parameters())
        train_steps(model, opt, 2)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        for twin in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
            with pytest.warns(UserWarning, match="discarded in its precondition phase"):
                step.freeze(twin)
        assert opt.phase == "precondition"  # the original still has its optimizer
        with pytest.warns(UserWarning, match="after 2 steps"):
            step.freeze(model)
