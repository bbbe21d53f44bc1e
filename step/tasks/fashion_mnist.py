"""Image classification on Fashion-MNIST (the Debian package ``dataset-fashion-mnist``).

The 60,000 training and 10,000 test images (28x28 grey, 10 classes) are read by hand from
the package's IDX files (gzip'd), so nothing is downloaded at run time; the directory can
be overridden with ``STEP_FASHION_MNIST_DIR``. Images stay ``uint8`` in memory and are
normalised per batch. Validation uses a fixed subset of the test set (the same for every
seed and run). Metric: top-1 accuracy, higher is better.

The model is a small ResNet. Its stem convolution reads the 1-channel image, which cannot
hold N:M groups along the input channels, so it is listed in ``dense_layers``; the
classifier is left dense by ``step.sparsify``'s default rules.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import MissingDataError, Task

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "STEP_FASHION_MNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SIDE, CLASSES = 28, 10
MEAN, STD = 0.2860, 0.3530  # of the training pixels, scaled to [0, 1]
EVAL_IMAGES, EVAL_CHUNK = 2000, 500
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes


def data_dir() -> Path:
    """Where the IDX files are read from: ``$STEP_FASHION_MNIST_DIR`` or the Debian path."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A gzip'd IDX file of unsigned bytes with ``ndim`` dimensions, as a ``uint8`` array.

    Raises ``ValueError`` naming the file when its magic number or size is wrong.
    """
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable gzip'd IDX file: {e}") from None
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    expected = (_IDX_UBYTE << 8) | ndim
    if magic != expected:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected:08x} "
            f"(unsigned bytes, {ndim} dimension(s)); is it the right file?"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    header = 4 + 4 * ndim
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(
            f"{path}: the header declares shape {shape} ({int(np.prod(shape))} bytes) but "
            f"{len(raw) - header} bytes of data follow; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 28, 28] uint8, labels [N] int64)`` of ``"train"`` or ``"test"``."""
    images_file, labels_file = (directory / f for f in FILES[split])
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if images.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"{images_file}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise ValueError(
            f"{split} split: {len(images)} images in {images_file.name} but {len(labels)} "
            f"labels in {labels_file.name}"
        )
    if len(labels) and labels.max() >= CLASSES:
        raise ValueError(f"{labels_file}: label {labels.max()} outside 0..{CLASSES - 1}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def check_installed(directory: Path) -> None:
    missing = [f for pair in FILES.values() for f in pair if not (directory / f).is_file()]
    if missing:
        raise MissingDataError(
            f"the fashion-mnist task reads the Fashion-MNIST IDX files from {directory}, "
            f"but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing. "
            "Install them with: sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu; "
            f"files under {DEFAULT_DIR}/), or point {ENV_DIR} at a directory holding all "
            "four train-*/t10k-* IDX files"
        )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (1x1 when reshaped)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem 1->32 (28x28), max-pool to 14x14, a 32-channel block, a 64-channel block at
    7x7, global average pool, linear classifier."""

    def __init__(self, width: int = 32, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(BasicBlock(width, width), BasicBlock(width, 2 * width, 2))
        self.classifier = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem_bn(self.stem(x))), 2)
        return self.classifier(self.blocks(x).mean((2, 3)))


class FashionMNIST(Task):
    name = "fashion-mnist"
    metric = "accuracy"
    higher_is_better = True
    items = "images"
    default_steps = 1500
    default_batch_size = 128
    default_lr = 3e-3
    dense_layers = ("stem",)  # 1 input channel: no N:M groups along it

    def __init__(self, seed: int, batch_size: int, device: torch.device) -> None:
        super().__init__(seed, batch_size, device)
        directory = data_dir()
        check_installed(directory)
        self.train_images, self.train_labels = load_split(directory, "train")
        self.test_images, self.test_labels = load_split(directory, "test")
        if not len(self.train_labels) or not len(self.test_labels):
            raise ValueError(f"{directory}: the Fashion-MNIST files hold no images")
        g = torch.Generator().manual_seed(12345)  # the same images for every run
        order = torch.randperm(len(self.test_labels), generator=g)
        self.eval_index = order[:EVAL_IMAGES].sort().values

    def build_model(self) -> nn.Module:
        return SmallResNet()

    def _batch(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor):
        x = images[index].unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
        return x.to(self.device), labels[index].to(self.device)

    def train_batch(self, step: int):
        index = torch.randint(len(self.train_labels), (self.batch_size,),
                              generator=self.generator(step))  # fmt: skip
        return self._batch(self.train_images, self.train_labels, index)

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model):
        total_loss, correct = 0.0, 0
        for chunk in self.eval_index.split(EVAL_CHUNK):
            x, y = self._batch(self.test_images, self.test_labels, chunk)
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
        count = len(self.eval_index)
        return {"val_loss": total_loss / count, "accuracy": correct / count}

    def items_per_batch(self) -> int:
        return self.batch_size
