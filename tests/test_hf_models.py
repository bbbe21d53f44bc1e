"""Real Hugging Face models built from a config (no download): GPT-2 and BERT.

Sparsify, train with STEP through the switch, then ``save_pretrained`` /
``from_pretrained`` + ``step.restore_sparsity``, and step's own export formats.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import step
from step.nn import SparseConv1D, SparseLinear

VOCAB = 96


def gpt2():
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=VOCAB,
                                      n_positions=32, bos_token_id=0, eos_token_id=0)  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def bert():
    config = transformers.BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=64,
                                      intermediate_size=128, vocab_size=VOCAB,
                                      max_position_embeddings=32, num_labels=2)  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def batch():
    ids = torch.randint(0, VOCAB, (4, 12))
    return ids, ids[:, 0] % 2


def loss_of(model, ids, labels):
    if isinstance(model, transformers.GPT2LMHeadModel):
        return model(ids, labels=ids).loss
    return model(ids, labels=labels).loss


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def train_through_the_switch(model, steps=6, switch=3):
    opt = step.optim.STEP(model.parameters(), lr=1e-3, autoswitch=switch)
    torch.manual_seed(1)
    for _ in range(steps):
        loss_of(model, *batch()).backward()
        opt.step()
        opt.zero_grad()
    assert opt.phase == "mask_learning" and opt.switch_step == switch
    return opt


@pytest.fixture(params=["gpt2", "bert"])
def trained(request):
    torch.manual_seed(0)
    model = step.sparsify({"gpt2": gpt2, "bert": bert}[request.param]())
    train_through_the_switch(model)
    return model.eval()


def test_sparsify_picks_the_transformer_blocks():
    g = step.sparsify(gpt2())
    sparse = {n for n, m in g.named_modules() if isinstance(m, SparseConv1D)}
    assert len(sparse) == 8 and all(n.startswith("transformer.h.") for n in sparse)
    assert type(g.lm_head) is torch.nn.Linear  # the (tied) LM head stays dense
    b = step.sparsify(bert())
    sparse = {n for n, m in b.named_modules() if isinstance(m, SparseLinear)}
    assert len(sparse) == 12 and all(n.startswith("bert.encoder.layer.") for n in sparse)
    assert type(b.classifier) is torch.nn.Linear and type(b.bert.pooler.dense) is torch.nn.Linear


def test_save_pretrained_keeps_weights_and_sparsity(trained, tmp_path):
    ids, _ = batch()
    want = logits(trained, ids)
    trained.save_pretrained(tmp_path)
    loaded = type(trained).from_pretrained(tmp_path)
    assert loaded.config.step_sparsity["layers"]  # the plan travels in config.json
    step.restore_sparsity(loaded).eval()
    assert step.nn.sparsity_plan(loaded) == step.nn.sparsity_plan(trained)
    assert torch.equal(logits(loaded, ids), want)


@pytest.mark.parametrize("make", [gpt2, bert])
def test_an_sste_model_mid_training_round_trips_through_save_pretrained(make, tmp_path):
    """Mode "soft" needs S-STE's scale: the plan carries it, so the restored model runs the
    same forward pass."""
    torch.manual_seed(0)
    model = step.sparsify(make())
    opt = step.optim.SSTE(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss_of(model, *batch()).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    ids, _ = batch()
    want = logits(model, ids)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["step_sparsity"]["layers"]
    assert {spec["mode"] for spec in saved.values()} == {"soft"}
    assert all(spec["beta"] > 0 for spec in saved.values())
    loaded = step.restore_sparsity(type(model).from_pretrained(tmp_path)).eval()
    assert step.nn.sparsity_plan(loaded) == step.nn.sparsity_plan(model)
    assert torch.equal(logits(loaded, ids), want)


def test_frozen_model_round_trips_through_save_pretrained(trained, tmp_path):
    ids, _ = batch()
    masked = logits(trained, ids)
    step.freeze(trained)
    frozen = logits(trained, ids)
    torch.testing.assert_close(frozen, masked, rtol=1e-5, atol=1e-5)
    trained.save_pretrained(tmp_path)
    loaded = step.restore_sparsity(type(trained).from_pretrained(tmp_path)).eval()
    assert all(layer.frozen for layer in loaded.modules() if hasattr(layer, "frozen"))
    assert torch.equal(logits(loaded, ids), frozen)


@pytest.mark.parametrize("fmt", ["dense", "compressed"])
def test_export_and_load_sparse_builds_the_model(trained, tmp_path, fmt):
    ids, _ = batch()
    want = logits(trained, ids)
    step.export(trained, tmp_path, format=fmt)
    loaded = step.load_sparse(tmp_path)  # built from config.json
    assert type(loaded) is type(trained) and not loaded.training
    assert torch.equal(logits(loaded, ids), want)


def test_dense_export_loads_with_plain_from_pretrained(trained, tmp_path):
    ids, _ = batch()
    want = logits(trained, ids)
    step.export(trained, tmp_path, format="dense")
    plain = type(trained).from_pretrained(tmp_path).eval()  # no step code involved
    torch.testing.assert_close(logits(plain, ids), want, rtol=1e-5, atol=1e-5)
    for name, layer in trained.named_modules():
        if isinstance(layer, SparseLinear | SparseConv1D):
            w = plain.get_submodule(name).weight.detach()
            grouped = w.t() if isinstance(layer, SparseConv1D) else w
            assert ((grouped.reshape(-1, 4) != 0).sum(1) <= 2).all()


def test_fp16_compressed_gpt2_is_about_56_percent(tmp_path):
    model = step.sparsify(gpt2()).half()
    report = step.export(model, tmp_path, format="compressed")
    for _name, nm, layout, dense_bytes, stored in report.layers:
        assert nm == "2:4" and layout == "cutlass_2to4"
        assert stored / dense_bytes == pytest.approx(0.5625)


@pytest.mark.parametrize("beta", [None, 0.0, -1.0, float("nan"), "1"])
def test_a_soft_plan_without_a_usable_beta_is_refused(beta):
    model = step.sparsify(gpt2())
    plan = step.nn.sparsity_plan(model)
    for spec in plan["layers"].values():
        spec["mode"] = "soft"
        spec["beta"] = beta
    with pytest.raises(ValueError, match="mode 'soft' but its beta is"):
        step.restore_sparsity(gpt2(), plan)
