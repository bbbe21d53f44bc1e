"""step-sparsity train --recipe sste and --compare with S-STE: tiny runs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import interrupted_at
from test_checkpoint_faults import TinyTask

import step
from step.cli import main
from step.train import checkpoint, loop, report

TINY = ["--steps", "6", "--eval-every", "3", "--batch-size", "4", "--lr", "1e-2", "--quiet"]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "make_task", lambda name, seed, batch_size, device: TinyTask(
        seed, batch_size, device))  # fmt: skip
    monkeypatch.setattr(report, "_plots", lambda *args: [])


def test_recipe_sste_trains_exports_and_logs_flip_rates(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--recipe", "sste", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sste: validation perplexity" in printed and "N:M verified on all 2" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "sste" and summary["switch_step"] is None
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    (last,) = [r for r in rows if "loss" in r]  # logged every 10 steps and at the end
    assert last["phase"] == "masked" and 0 <= last["flip_rate"] < 0.5
    assert set(last["flip_rate_layers"]) == {"0", "2"}
    state = checkpoint.load(out / "checkpoint")["optimizer"]["state"]["recipe"]
    assert state["name"] == "sste" and len(state["beta"]) == 2
    assert all(isinstance(b, float) and b > 1.0 for b in state["beta"])
    # the exported model (beta * S(W) baked in, exact N:M) gives the reported loss
    task = TinyTask(0, 4, torch.device("cpu"))
    for fmt in ("dense", "compressed"):
        loaded = step.load_sparse(out / "export" / fmt, model=task.build_model())
        assert task.evaluate(loaded)["val_loss"] == summary["final"]["val_loss"]


def test_compare_includes_sste(tiny, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["train", *TINY, "--compare", "srste,sste", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("recipe") :]
    assert "srste" in table and "\nsste" in table and "N:M ok (2 weights)" in table
    for recipe in ("srste", "sste"):
        summary = json.loads((out / recipe / "summary.json").read_text())
        assert summary["recipe"] == recipe


def test_sste_resumes_bit_exactly(tiny, tmp_path, monkeypatch):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(["train", *TINY, "--recipe", "sste", "--out", str(straight)]) == 0
    run = ["train", *TINY, "--recipe", "sste", "--out", str(cut)]
    interrupted_at(monkeypatch, TinyTask, 4, lambda: main(run))  # after the step-3 checkpoint
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    a, b = checkpoint.load(straight / "checkpoint"), checkpoint.load(cut / "checkpoint")
    assert a["optimizer"]["state"]["recipe"] == b["optimizer"]["state"]["recipe"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_unknown_recipe_names_sste_among_the_choices(tmp_path):
    with pytest.raises(SystemExit, match=r"recipe = 'sst' is invalid: choose from .*sste"):
        main(["train", *TINY, "--recipe", "sst", "--out", str(tmp_path / "x")])
