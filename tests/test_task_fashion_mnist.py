"""The fashion-mnist task: IDX reading and validation, batches, the model under sparsify,
a few STEP steps, evaluation, and the end of a run through ``step.train``.

A tiny synthetic IDX set in ``tmp_path`` (via ``STEP_FASHION_MNIST_DIR``) stands in for the
Debian package, which CI machines may lack; one test checks the real files when present.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from torch import nn

import step
import step.tasks
from step.nn import SparseConv2d
from step.optim import AutoSwitch
from step.tasks.base import MissingDataError
from step.tasks.fashion_mnist import DEFAULT_DIR, ENV_DIR, FILES, FashionMNIST, data_dir
from step.train import train
from step.train.config import build

CPU = torch.device("cpu")
N_TRAIN, N_TEST = 64, 32


def write_idx(path, array: np.ndarray, magic: int | None = None) -> None:
    """``array`` (uint8) as a gzip'd IDX file: magic, big-endian int32 dims, the bytes."""
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_split(directory, split: str, count: int, rng) -> None:
    images_name, labels_name = FILES[split]
    write_idx(directory / images_name, rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
    write_idx(directory / labels_name, rng.integers(0, 10, count, dtype=np.uint8))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A synthetic 64/32-image Fashion-MNIST in ``tmp_path``, selected by the env var."""
    rng = np.random.default_rng(0)
    write_split(tmp_path, "train", N_TRAIN, rng)
    write_split(tmp_path, "test", N_TEST, rng)
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    return tmp_path


def test_loads_the_idx_files(tiny):
    task = FashionMNIST(0, 8, CPU)
    assert task.train_images.shape == (N_TRAIN, 28, 28) and task.train_images.dtype == torch.uint8
    assert task.test_images.shape == (N_TEST, 28, 28) and task.test_images.dtype == torch.uint8
    assert task.train_labels.shape == (N_TRAIN,) and task.train_labels.dtype == torch.int64
    assert 0 <= int(task.train_labels.min()) and int(task.train_labels.max()) <= 9
    raw = gzip.decompress((tiny / FILES["train"][0]).read_bytes())
    assert task.train_images[3].flatten().tolist() == list(raw[16 + 3 * 784 : 16 + 4 * 784])
    assert len(task.eval_index) == N_TEST  # min(2000, test images), fixed for every seed
    assert torch.equal(task.eval_index, FashionMNIST(7, 8, CPU).eval_index)
    assert (FashionMNIST.name, FashionMNIST.metric, FashionMNIST.items) == (
        "fashion-mnist", "accuracy", "images")  # fmt: skip
    assert FashionMNIST.higher_is_better and task.items_per_batch() == 8


def test_batches_are_a_pure_function_of_seed_and_step(tiny):
    task = FashionMNIST(0, 16, CPU)
    x, y = task.train_batch(5)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = FashionMNIST(0, 16, CPU).train_batch(5)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, task.train_batch(6)[0])
    assert not torch.equal(x, FashionMNIST(1, 16, CPU).train_batch(5)[0])
    # normalised: pixel 0 and 255 map to (0 - mean) / std and (1 - mean) / std
    assert -0.82 < float(x.min()) < -0.80 and 2.0 < float(x.max()) < 2.03


def test_the_model_sparsifies_with_the_tasks_dense_layers(tiny):
    model = FashionMNIST(0, 4, CPU).build_model()
    with pytest.raises(ValueError, match="stem"):  # why dense_layers exists
        step.sparsify(model)
    step.sparsify(model, exclude=FashionMNIST.dense_layers)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert type(convs.pop("stem")) is nn.Conv2d
    assert len(convs) == 5 and all(isinstance(m, SparseConv2d) for m in convs.values())
    assert type(model.classifier) is nn.Linear


def test_step_trains_and_evaluates(tiny):
    task = FashionMNIST(0, 8, CPU)
    torch.manual_seed(0)
    model = task.build_model()
    step.sparsify(model, exclude=FashionMNIST.dense_layers)
    opt = step.optim.make("step", model.parameters(), lr=1e-2,
                          autoswitch=AutoSwitch(t_min=2, t_max=4, window=2))  # fmt: skip
    batch = task.train_batch(1)
    losses = []
    for _ in range(10):
        loss = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert opt.switch_step is not None and opt.phase == "mask_learning"
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    result = task.evaluate(model)
    assert set(result) == {"val_loss", "accuracy"}
    assert 0.0 <= result["accuracy"] <= 1.0 and result["val_loss"] > 0
    step.nn.freeze(model)
    assert task.evaluate(model)["accuracy"] == pytest.approx(result["accuracy"])


def test_a_tiny_run_through_the_training_loop(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(step.tasks.TASKS, "fashion-mnist", "step.tasks.fashion_mnist:FashionMNIST")
    cfg = build({}, {"task": "fashion-mnist", "steps": 6, "batch_size": 8, "eval_every": 3,
                     "log_every": 3}).resolved()  # fmt: skip
    result = train(cfg, tmp_path / "run", quiet=True)
    assert 0.0 <= result.final["accuracy"] <= 1.0
    assert result.exports["nm_verified"] == 5  # the five block convolutions
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metric"] == "accuracy" and summary["sparse_layers"] == 5


def test_a_bad_magic_number_is_a_clear_error(tiny):
    images = np.zeros((N_TRAIN, 28, 28), dtype=np.uint8)
    write_idx(tiny / FILES["train"][0], images, magic=0x00000801)
    with pytest.raises(ValueError, match=r"bad IDX magic number 0x00000801.*0x00000803"):
        FashionMNIST(0, 4, CPU)


def test_truncated_or_mismatched_files_are_clear_errors(tiny):
    path = tiny / FILES["test"][0]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        FashionMNIST(0, 4, CPU)
    write_idx(path, np.zeros((N_TEST - 1, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match=f"{N_TEST - 1} images .* but {N_TEST} labels"):
        FashionMNIST(0, 4, CPU)
    path.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a readable gzip'd IDX file"):
        FashionMNIST(0, 4, CPU)


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(MissingDataError) as info:
        FashionMNIST(0, 4, CPU)
    message = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "nowhere") in message and str(DEFAULT_DIR) in message
    assert ENV_DIR in message
    monkeypatch.delenv(ENV_DIR)
    assert data_dir() == DEFAULT_DIR


def test_the_debian_package_has_the_real_sizes(monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)
    if not all((DEFAULT_DIR / f).is_file() for pair in FILES.values() for f in pair):
        pytest.skip(f"optional data: dataset-fashion-mnist is not installed (no {DEFAULT_DIR})")
    task = FashionMNIST(0, 4, CPU)
    assert task.train_images.shape == (60000, 28, 28) and task.test_images.shape == (10000, 28, 28)
    assert torch.bincount(task.train_labels).tolist() == [6000] * 10
    assert len(task.eval_index) == 2000
    mean = task.train_images.double().mean().item() / 255
    assert mean == pytest.approx(0.2860, abs=1e-3)
