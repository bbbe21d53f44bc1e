"""Optimizer state and arguments: ASP resumes after its prune; a state_dict of another
model, recipe or optimizer is refused before anything changes; every constructor argument
of the recipes and AutoSwitch is checked (kind and value) before anything changes."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from test_checkpoint_faults import assert_identical
from test_optim_step import batches, make_model, train

from step.nn import SparseLinear
from step.nn.sparsity import sparsity_of
from step.optim import ASP, RECIPES, SRSTE, STEP, AutoSwitch, DenseAdamW, NMAdamW, make

STEPS = 6
OPTIONS = {"step": {"autoswitch": 2}, "asp": {"prune_at": 2}, "srste": {}, "dense": {}, "sste": {}}


def trained(recipe: str, steps: int = 4, model: torch.nn.Module | None = None):
    """``model`` (default :func:`make_model`) and its recipe after ``steps`` steps (past
    STEP's switch and ASP's prune)."""
    model = model if model is not None else make_model()
    opt = make(recipe, model.parameters(), lr=1e-2, **OPTIONS[recipe])
    train(model, opt, batches(STEPS)[:steps])
    return model, opt


def snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Everything a load could change: the optimizer's state and groups, the layers'
    forward modes and fixed masks."""
    modes = [(s.mode, s.mask) for p in model.parameters() if (s := sparsity_of(p)) is not None]
    return copy.deepcopy({"optimizer": opt.state_dict(), "modes": modes})


def round_trip(state_dict: dict) -> dict:
    """``state_dict`` through torch.save and torch.load, as a checkpoint file holds it."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------- ASP after its prune


@pytest.mark.parametrize("cut", [1, 2, 3, 5])  # before, at and after the prune (step 2)
def test_asp_resumes_bit_identically_across_the_prune(cut):
    model, opt = trained("asp", STEPS)
    first, first_opt = trained("asp", cut)
    saved = round_trip({"model": first.state_dict(), "opt": first_opt.state_dict()})
    resumed = make_model()
    resumed_opt = make("asp", resumed.parameters(), lr=1e-2, prune_at=2)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    for p in resumed_opt.sparse_params():
        mask = resumed_opt.state[p].get("mask")
        assert mask is None if cut < 2 else mask.dtype == torch.bool
        assert sparsity_of(p).mode == ("dense" if cut < 2 else "fixed")
    train(resumed, resumed_opt, batches(STEPS)[cut:])
    assert_identical(snapshot(resumed, resumed_opt), snapshot(model, opt))
    for a, b in zip(resumed.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- refused loads


def other_shapes() -> torch.nn.Module:
    """As many parameters as :func:`make_model`, other shapes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(SparseLinear(16, 64), torch.nn.ReLU(), SparseLinear(64, 8),
                               torch.nn.LayerNorm(8))  # fmt: skip


def adamw_state() -> dict:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, opt, batches(2))
    return opt.state_dict()


def edited(recipe: str, edit) -> dict:
    """A state_dict of ``recipe`` after ``edit(state_dict)``."""
    state_dict = copy.deepcopy(trained(recipe)[1].state_dict())
    edit(state_dict)
    return state_dict


def nan_lr(state_dict: dict) -> None:
    state_dict["param_groups"][0]["lr"] = math.nan


REFUSED = [
    *[(target, lambda source=source: trained(source)[1].state_dict(),
       rf"\['name'\] is '{source}': the state of another recipe")
      for target in RECIPES for source in RECIPES if source != target],
    *[(target, adamw_state, r"has no 'recipe' entry: it was saved by another optimizer")
      for target in RECIPES],
    *[(target, lambda target=target: trained(target, model=other_shapes())[1].state_dict(),
       r"\[1\]\['exp_avg'\] has shape \(64,\), its parameter \(32,\)") for target in RECIPES],
    ("step", lambda: edited("step", lambda s: s["state"]["recipe"].pop("autoswitch")),
     r"lacks \['autoswitch'\], which recipe 'step' keeps"),
    ("asp", lambda: edited("asp", lambda s: s["state"]["recipe"].pop("prune_at")),
     r"lacks \['prune_at'\]"),
    ("step", lambda: edited("step", lambda s: s["state"]["recipe"].update(phase="later")),
     r"\['phase'\] is 'later'"),
    ("step", lambda: edited("step", lambda s: s["state"]["recipe"]["autoswitch"].pop("window")),
     r"\['autoswitch'\] must be an AutoSwitch.state_dict\(\)"),
    ("asp", lambda: edited("asp", lambda s: s["state"][0].update(mask=torch.ones(32, 16))),
     r"\[0\]\['mask'\] must be a bool tensor"),
    ("step", lambda: edited("step", lambda s: s["state"][0].pop("exp_avg_sq")),
     r"\[0\] has the keys .*all or none"),
    ("dense", lambda: edited("dense", lambda s: s["state"][1].update(v_step=3)),
     r"\[1\] has the keys \['exp_avg', 'exp_avg_sq', 'step', 'v_step'\]"),
    ("srste", lambda: edited("srste", lambda s: s["state"].update({9: {}})),
     "an entry 9 for none of the parameter ids"),
    ("srste", lambda: edited("srste", lambda s: s["param_groups"].append(s["param_groups"][0])),
     r"has 2 groups, this optimizer 1"),
    ("dense", lambda: edited("dense", lambda s: s["param_groups"][0]["params"].pop()),
     "has 5 parameters, this optimizer's group 0 6"),
    ("srste", lambda: edited("srste", lambda s: s["param_groups"][0].update(nm=(1, 4))),
     r"\['nm'\] is \(1, 4\), this optimizer's group 0 has nm=None"),
    ("step", lambda: edited("step", nan_lr), r"\['param_groups'\]\[0\]\['lr'\] must be >= 0"),
    ("dense", lambda: {"state": {}}, "a dict with 'state' and 'param_groups'"),
]  # fmt: skip


@pytest.mark.parametrize("target,source,message", REFUSED)
def test_a_foreign_state_dict_is_refused_and_changes_nothing(target, source, message):
    model, opt = trained(target)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(source())
    assert_identical(snapshot(model, opt), before)


def test_the_recipe_state_is_copied_both_ways():
    model, opt = trained("step")
    saved = opt.state_dict()
    kept = copy.deepcopy(saved)
    train(model, opt, batches(STEPS)[4:])  # the optimizer moves on: its saved recipe not
    assert_identical(saved["state"]["recipe"], kept["state"]["recipe"])
    saved = kept
    kept = copy.deepcopy(saved)
    fresh_model, fresh = make_model(), make("step", make_model().parameters(), autoswitch=2)
    fresh.load_state_dict(saved)
    train(fresh_model, fresh, batches(2))
    assert_identical(saved, kept)


# ---------------------------------------------------------------- constructor arguments

NAN, INF = math.nan, math.inf
BAD_REALS = [
    (NAN, ValueError),
    (INF, ValueError),
    (-INF, ValueError),
    (-1.0, ValueError),
    ("0.1", TypeError),
    (True, TypeError),
    (None, TypeError),
    ([0.1], TypeError),
]
BAD_BETAS = [
    ((0.9, NAN), ValueError),
    ((0.9, INF), ValueError),
    ((0.9, 1.0), ValueError),
    (0.9, TypeError),
    ((0.9,), TypeError),
    (("0.9", 0.99), TypeError),
    ((True, 0.99), TypeError),
]
BAD_COUNTS = [(0, ValueError), (2.5, TypeError), ("5", TypeError), (True, TypeError)]
BAD_STEPS = [
    (-1, ValueError),
    (NAN, ValueError),
    (INF, ValueError),
    (1.5, ValueError),
    ("1", TypeError),
    (True, TypeError),
]
OPTIMIZERS = {
    "NMAdamW": NMAdamW,
    "STEP": STEP,
    "SRSTE": SRSTE,
    "ASP": ASP,
    "DenseAdamW": DenseAdamW,
}
ARGUMENTS = {"lr": BAD_REALS, "eps": BAD_REALS, "weight_decay": BAD_REALS, "betas": BAD_BETAS}
EXTRA = {
    "NMAdamW": ["srste_decay"],
    "STEP": ["srste_decay", "autoswitch"],
    "SRSTE": ["srste_decay"],
    "ASP": ["prune_at", "total_steps"],
    "DenseAdamW": [],
}
OWN = {
    "srste_decay": BAD_REALS,
    "total_steps": BAD_COUNTS,
    "autoswitch": [(0, ValueError), ("auto", TypeError), (True, TypeError), (2.5, TypeError)],
    "prune_at": [
        (0, ValueError),
        (NAN, ValueError),
        (1.5, ValueError),
        (0.5, ValueError),
        ("3", TypeError),
        (True, TypeError),
    ],
}
AUTOSWITCH = {
    "t_min": BAD_STEPS,
    "t_max": BAD_STEPS,
    "window": BAD_COUNTS,
    "total_steps": BAD_COUNTS,
    "threshold": [(v, e) for v, e in BAD_REALS if v is not None] + [(0.0, ValueError)],
    "criterion": [("fast", ValueError), (5, TypeError), (None, TypeError)],
}
CASES = [
    (name, arg, value, error)
    for name in OPTIMIZERS
    for arg in [*ARGUMENTS, *EXTRA[name]]
    for value, error in {**ARGUMENTS, **OWN}[arg]
]
CASES += [("AutoSwitch", arg, value, error) for arg, bad in AUTOSWITCH.items()
          for value, error in bad]  # fmt: skip


def plain_groups() -> tuple[torch.nn.Linear, list[dict]]:
    """A plain Linear whose weight a group with nm=(2, 4) makes sparse."""
    lin = torch.nn.Linear(16, 8)
    return lin, [{"params": [lin.weight], "nm": (2, 4)}, {"params": [lin.bias]}]


@pytest.mark.parametrize("name,arg,value,error", CASES, ids=[
    f"{c[0]}-{c[1]}-{c[2]!r}" for c in CASES])  # fmt: skip
def test_a_bad_argument_is_named_with_its_value_before_anything_changes(name, arg, value, error):
    lin, groups = plain_groups()
    valid = {"prune_at": 2} if name == "ASP" else {}  # ASP's default is a fraction
    with pytest.raises(error) as caught:
        if name == "AutoSwitch":
            AutoSwitch(**{arg: value})
        else:
            OPTIMIZERS[name](groups, **{**valid, arg: value})
    message = str(caught.value)
    assert arg in message and repr(value) in message, message
    assert sparsity_of(lin.weight) is None  # no parameter was touched


@pytest.mark.parametrize("group,error,message", [
    ({"lr": NAN}, ValueError, r"param_groups\[1\]\['lr'\] must be >= 0 .*got nan"),
    ({"betas": 0.9}, TypeError, r"param_groups\[1\]\['betas'\] must be two floats"),
    ({"nm": (1, 2, 4)}, TypeError, r"param_groups\[1\]\['nm'\] must be None or a pair"),
    ({"nm": ("2", 4)}, TypeError, r"param_groups\[1\]\['nm'\]: n must be an int, got str"),
    ({"nm": (2, True)}, TypeError, r"param_groups\[1\]\['nm'\]: m must be an int, got bool"),
])  # fmt: skip
def test_bad_param_groups_are_named_and_change_no_parameter(group, error, message):
    lin, groups = plain_groups()
    groups[1].update(group)
    with pytest.raises(error, match=message):
        STEP(groups, autoswitch=3)
    assert sparsity_of(lin.weight) is None  # group 0 was fine, but nothing was attached


def test_a_layers_sparsity_and_its_groups_nm_must_agree():
    model = make_model()
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] is already N:M "
                       r"2:4 .*not its group's nm=\(1, 4\)"):  # fmt: skip
        SRSTE([{"params": [model[0].weight], "nm": (1, 4)}])
    assert model[0].sparsity.mode == "dense"


def test_make_names_the_recipe_and_its_arguments():
    with pytest.raises(TypeError, match=r"recipe must be one of .* \(a str\); got list"):
        make(["step"], make_model().parameters())
    with pytest.raises(TypeError, match=r"recipe 'dense' \(DenseAdamW\) takes no argument "
                       r"\['srste_decay'\]; it takes \['lr', 'betas'"):  # fmt: skip
        make("dense", make_model().parameters(), srste_decay=1e-4)


def test_autoswitch_refuses_a_foreign_state_and_stays_as_it_was():
    switch = AutoSwitch(window=2, t_max=9)
    switch.attach(0.999)
    for t in range(1, 4):
        switch.observe(t, 1.0 / t, 1.0)
    before = switch.state_dict()
    for bad, message in [
        ({**before, "window": 0}, r"\['window'\] must be a positive int"),
        ({**before, "criterion": "soon"}, "unknown state\\['criterion'\\]"),
        ({**before, "history": [{"step": 1}]}, r"\['history'\] must be"),
        ({"criterion": "plateau"}, "must be an AutoSwitch.state_dict"),
    ]:
        with pytest.raises(ValueError, match=message):
            switch.load_state_dict(bad)
        assert switch.state_dict() == before
