"""step.sparsify: what gets converted, patterns and overrides, errors, the summary."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bits_equal
from torch import nn

import step
from step.nn import SparseConv2d, SparseLinear, SparseWeightMixin


class Net(nn.Module):
    """Embedding, attention, an MLP, a conv stem and a tied output head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.stem = nn.Conv2d(3, 8, 3)  # 3 input channels: not divisible by 4
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(16, 2)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.classifier = nn.Linear(16, 5)
        self.tied = nn.Linear(16, 32, bias=False)
        self.tied.weight = self.embed.weight
        self.out = nn.Linear(16, 7)  # the last convertible layer

    def forward(self, tokens, image):
        h = self.embed(tokens)
        h = h + self.attn(h, h, h)[0]
        h = self.mlp(h)
        feats = self.conv(self.stem(image)).mean()
        return self.out(h) + feats, self.classifier(h), self.tied(h)


def sparse_names(model):
    return {name for name, mod in model.named_modules() if isinstance(mod, SparseWeightMixin)}


def inputs():
    return torch.randint(0, 32, (4, 2)), torch.randn(2, 3, 6, 6)


def test_defaults_convert_the_body_and_leave_heads_dense():
    torch.manual_seed(0)
    model = Net()
    keys = list(model.state_dict())
    tokens, image = inputs()
    before = model(tokens, image)
    with pytest.warns(UserWarning, match=r"stem \(Conv2d, reduction dim 3, m=4\)"):
        assert step.sparsify(model, skip_indivisible=True) is model
    assert sparse_names(model) == {"conv", "mlp.0", "mlp.2"}
    assert isinstance(model.conv, SparseConv2d) and isinstance(model.mlp[0], SparseLinear)
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert list(model.state_dict()) == keys  # drop-in: same keys, same order
    for got, want in zip(model(tokens, image), before, strict=True):  # dense mode
        assert_bits_equal(got, want)


def test_indivisible_layers_raise_with_their_names():
    with pytest.raises(
        ValueError, match=r"stem \(Conv2d, reduction dim 3, m=4\).*skip_indivisible"
    ):
        step.sparsify(Net())


@pytest.mark.filterwarnings("ignore:left dense")
def test_include_exclude_and_overrides():
    model = step.sparsify(Net(), include=["mlp.*", "classifier", "out"], exclude=["mlp.2"])
    assert sparse_names(model) == {"mlp.0", "classifier", "out"}  # include beats defaults
    model = step.sparsify(
        Net(), skip_indivisible=True, overrides={"mlp.0": (1, 4), "mlp.2": (2, 8), "conv": None}
    )
    assert sparse_names(model) == {"mlp.0", "mlp.2"}
    assert (model.mlp[0].sparsity.n, model.mlp[0].sparsity.m) == (1, 4)
    assert (model.mlp[2].sparsity.n, model.mlp[2].sparsity.m) == (2, 8)


def test_patterns_that_match_nothing_are_errors():
    with pytest.raises(ValueError, match=r"include pattern\(s\) \['mpl\.\*'\] match no.*mlp\.0"):
        step.sparsify(Net(), include=["mpl.*"])
    with pytest.raises(ValueError, match="overrides pattern"):
        step.sparsify(Net(), overrides={"nothing": (1, 4)})
    with pytest.raises(ValueError, match="1 <= n < m"):
        step.sparsify(Net(), overrides={"mlp.0": (4, 4)})


def test_shared_module_is_converted_once_everywhere():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(8, 2))
    step.sparsify(model)
    assert model[0] is model[2] and isinstance(model[0], SparseLinear)
    step.sparsify(model)  # idempotent
    assert model[0] is model[2]


def test_summary_counts_and_verbose_table(capsys):
    model = step.sparsify(nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8)), include=["0"],
                          verbose=True)  # fmt: skip
    table = capsys.readouterr().out
    assert "0      SparseLinear  32x16         2:4  dense  512" in table
    summary = step.summarize(model)
    assert summary.sparse_params == 512 and summary.pruned_params == 256
    assert summary.total_params == 512 + 32 + 32 * 8 + 8
    assert f"{summary.total_params:,} parameters" in str(summary)


@pytest.mark.filterwarnings("ignore:left dense")
def test_plan_round_trip_through_restore_sparsity():
    model = step.sparsify(Net(), skip_indivisible=True, overrides={"mlp.2": (1, 4)})
    model.mlp[0].sparsity.set_mode("ste")
    plan = step.nn.sparsity_plan(model)
    assert plan["layers"]["mlp.2"] == {"n": 1, "m": 4, "mode": "dense"}
    fresh = Net()
    fresh.load_state_dict(model.state_dict())
    step.restore_sparsity(fresh, plan)
    assert step.nn.sparsity_plan(fresh) == plan
    tokens, image = inputs()
    for got, want in zip(fresh(tokens, image), model(tokens, image), strict=True):
        assert_bits_equal(got, want)
    with pytest.raises(ValueError, match="no sparsity plan"):
        step.restore_sparsity(Net())
    with pytest.raises(ValueError, match="format_version 9"):
        step.restore_sparsity(Net(), {"format_version": 9, "layers": {}})


def test_freeze_needs_sparse_layers():
    with pytest.raises(ValueError, match="call step.sparsify first"):
        step.freeze(nn.Sequential(nn.Linear(4, 4)))
