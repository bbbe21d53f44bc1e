"""Checkpoints under faults: a run killed at each of its write, fsync and rename
boundaries, for every recipe, resumes to the end bit-identical to an uninterrupted run;
the loader refuses what a save did not commit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from step.cli import main
from step.optim.recipes import RECIPES
from step.tasks.base import Task
from step.train import checkpoint, loop, report

# 6 steps, a checkpoint every 2: STEP switches at step 3 (t_max) and ASP prunes at step 3,
# so resumes land before and after the phase change
SETTINGS = {"steps": 6, "eval_every": 2, "log_every": 1, "batch_size": 4, "lr": 1e-2,
            "t_min": 2, "t_max": 3, "prune_at": 3}  # fmt: skip
RATE = "examples_per_s"  # the metrics' only timing-dependent value


class TinyTask(Task):
    """Regression on random data with a 3-layer MLP: fast enough for hundreds of runs."""

    name, metric, higher_is_better, items = "tiny", "perplexity", False, "examples"
    default_steps, default_batch_size, default_lr = 6, 4, 1e-2

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                             nn.Linear(8, 4))  # fmt: skip

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.generator(step)
        return torch.randn(self.batch_size, 8, generator=g), torch.randn(self.batch_size, 4,
                                                                         generator=g)  # fmt: skip

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return (model(x) - y).pow(2).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        val_loss = self.loss(model, self.train_batch(-1)).item()
        return {"val_loss": val_loss, "perplexity": float(torch.tensor(val_loss).exp())}

    def items_per_batch(self) -> int:
        return self.batch_size


class Kill(BaseException):
    """A simulated SIGKILL: a BaseException, so no handler in the code under test runs."""


class Faults:
    """Counts the I/O boundaries of a run (each write of bytes or of a metrics row, each
    fsync, each rename) and kills it at boundary number ``kill_at`` (from 1): a write is
    torn (half its data written, then the kill), an fsync or rename does not happen."""

    def __init__(self, patch: pytest.MonkeyPatch, kill_at: int | None = None) -> None:
        self.kill_at, self.seen = kill_at, []
        real_write, real_line = checkpoint._write_all, loop._append_line
        real_fsync, real_replace = os.fsync, os.replace
        patch.setattr(checkpoint, "_write_all", lambda f, data: self._torn(real_write, f, data))
        patch.setattr(loop, "_append_line", lambda log, line: self._torn(real_line, log, line))
        patch.setattr(os, "fsync", lambda fd: self._before(real_fsync, "fsync", fd))
        patch.setattr(os, "replace", lambda a, b: self._before(real_replace, "rename", a, b))

    def _due(self, what: str) -> bool:
        self.seen.append(what)
        return len(self.seen) == self.kill_at

    def _torn(self, real: Callable, file: Any, data: Any) -> None:
        if self._due("write"):
            real(file, data[: len(data) // 2])
            raise Kill(len(self.seen))
        real(file, data)

    def _before(self, real: Callable, what: str, *args: Any) -> Any:
        if self._due(what):
            raise Kill(len(self.seen))
        return real(*args)


@contextlib.contextmanager
def faults(kill_at: int | None = None) -> Iterator[Faults]:
    with pytest.MonkeyPatch.context() as patch:
        yield Faults(patch, kill_at)


@pytest.fixture(autouse=True)
def tiny_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "make_task", lambda name, seed, batch_size, device: TinyTask(
        seed, batch_size, device))  # fmt: skip
    monkeypatch.setattr(report, "_plots", lambda *args: [])  # plots are not under test


def config_file(tmp_path: Path, recipe: str) -> Path:
    path = tmp_path / f"{recipe}.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in {**SETTINGS, "recipe": recipe}.items()))
    return path


def start(config: Path, run: Path) -> None:
    assert main(["train", "--config", str(config), "--out", str(run), "--quiet"]) == 0


def recover(config: Path, run: Path) -> None:
    """What a user does after a kill: resume, or start again if the run's configuration
    was never committed."""
    if (run / "config.json").is_file():
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
    else:
        start(config, run)


def assert_identical(a: Any, b: Any, where: str = "state") -> None:
    """``a`` and ``b`` are the same nested structure with bit-identical tensors."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def outcome(run: Path) -> dict[str, Any]:
    """What a finished run leaves: its last checkpoint (parameters, optimizer state,
    schedule, RNG), its metrics but the throughput, its final metrics and switch step."""
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    return {"checkpoint": checkpoint.load(run / "checkpoint"),
            "metrics": [{k: v for k, v in r.items() if k != RATE} for r in rows],
            "final": summary["final"], "switch_step": summary["switch_step"]}  # fmt: skip


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_kill_at_any_boundary_resumes_bit_identically(recipe, tmp_path):
    config = config_file(tmp_path, recipe)
    with faults() as counted:
        start(config, tmp_path / "straight")
    boundaries = len(counted.seen)
    assert {"write", "fsync", "rename"} <= set(counted.seen)
    assert counted.seen.count("rename") == 1 + SETTINGS["steps"] // SETTINGS["eval_every"]
    expected = outcome(tmp_path / "straight")
    if recipe in ("step", "asp"):  # the phase changes between checkpoints 2 and 4
        assert expected["checkpoint"]["optimizer"]["state"]["recipe"]["t"] == 6
    for k in range(1, boundaries + 1):
        run = tmp_path / f"cut{k}"
        with pytest.raises(Kill), faults(kill_at=k):
            start(config, run)
        recover(config, run)
        assert_identical(outcome(run), expected, f"killed at boundary {k}")


def boundaries_of(config: Path, run: Path) -> list[str]:
    """The kinds of the I/O boundaries of an uninterrupted ``start`` into ``run``."""
    with faults() as counted:
        start(config, run)
    return counted.seen


def renames(seen: list[str]) -> list[int]:
    """The boundary numbers (from 1) of the renames: config.json's, then each checkpoint's."""
    return [i + 1 for i, what in enumerate(seen) if what == "rename"]


def test_kills_while_resuming_resume_again(tmp_path):
    config = config_file(tmp_path, "step")
    seen = boundaries_of(config, tmp_path / "straight")
    expected = outcome(tmp_path / "straight")
    cut = tmp_path / "cut"
    with pytest.raises(Kill), faults(kill_at=renames(seen)[2]):  # checkpoint 4 uncommitted
        start(config, cut)
    probe = shutil.copytree(cut, tmp_path / "probe")
    with faults() as counted:  # a resume from step 2: metrics rewritten, 2 checkpoints
        recover(config, probe)
    assert counted.seen[:4] == ["write", "fsync", "rename", "fsync"]  # metrics.jsonl
    for j in range(1, len(counted.seen) + 1):
        run = shutil.copytree(cut, tmp_path / f"again{j}")
        with pytest.raises(Kill), faults(kill_at=j):
            recover(config, run)
        recover(config, run)
        assert_identical(outcome(run), expected, f"resume killed at boundary {j}")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_a_save_writes_fsyncs_renames_then_fsyncs_the_directory(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", os.readlink(
        f"/proc/self/fd/{fd}"))) or real_fsync(fd))  # fmt: skip
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("rename", str(a), str(b)))
                        or real_replace(a, b))  # fmt: skip
    directory = tmp_path / "checkpoint"
    checkpoint.save({"step": 1, "w": torch.ones(2)}, directory)
    final, tmp = directory / checkpoint.FILE, directory / (checkpoint.FILE + ".tmp")
    assert calls == [("fsync", str(tmp_path)), ("fsync", str(tmp)),
                     ("rename", str(tmp), str(final)), ("fsync", str(directory))]  # fmt: skip
    assert not tmp.exists() and checkpoint.load(directory)["step"] == 1


def test_a_kill_during_the_first_checkpoint_restarts_with_one_line(tmp_path, capsys):
    config = config_file(tmp_path, "asp")
    seen = boundaries_of(config, tmp_path / "straight")
    run = tmp_path / "cut"
    with pytest.raises(Kill), faults(kill_at=renames(seen)[1]):  # the first checkpoint's
        start(config, run)
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["state.safetensors.tmp"]
    capsys.readouterr()
    with pytest.raises(SystemExit, match="already holds a run: continue it with --resume"):
        start(config, run)
    recover(config, run)
    said = [line for line in capsys.readouterr().out.splitlines() if "checkpoint" in line]
    assert said == [f"{run}: no committed checkpoint (the run stopped before its first one): "
                    "starting it again from step 0"]  # fmt: skip
    assert_identical(outcome(run), outcome(tmp_path / "straight"))


def test_a_kill_before_the_configuration_is_saved(tmp_path):
    config = config_file(tmp_path, "dense")
    seen = boundaries_of(config, tmp_path / "straight")
    run = tmp_path / "cut"
    with pytest.raises(Kill), faults(kill_at=renames(seen)[0]):  # config.json's rename
        start(config, run)
    assert [p.name for p in run.iterdir()] == ["config.json.tmp"]
    with pytest.raises(SystemExit, match=r"stopped before its configuration was saved: start "
                       rf"it again with the same settings and --out {run}"):  # fmt: skip
        main(["train", "--resume", str(run), "--quiet"])
    start(config, run)  # --out takes a directory holding only *.tmp leftovers
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"is not empty \(it holds notes.txt\)"):
        start(config, tmp_path / "other")


# ---------------------------------------------------------------- what load refuses


def committed(tmp_path: Path) -> Path:
    """A directory holding a committed checkpoint of a tiny state."""
    directory = tmp_path / "checkpoint"
    checkpoint.save({"step": 3, "model": {"w": torch.arange(4.0)}, "rng": torch.zeros(2,
                     dtype=torch.uint8)}, directory)  # fmt: skip
    return directory


def rewrite(directory: Path, edit: Callable[[dict, dict], None]) -> None:
    """Rewrite the checkpoint file with ``edit`` applied to its tensors and metadata."""
    file = directory / checkpoint.FILE
    with safe_open(file, "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    edit(tensors, metadata)
    save_file(tensors, file, metadata)


@pytest.mark.parametrize("damage,message", [
    (lambda d: rewrite(d, lambda t, m: t["/model/w"].add_(1)), "do not match the digest"),
    (lambda d: rewrite(d, lambda t, m: m.update(sha256="0" * 64)), "do not match the digest"),
    (lambda d: rewrite(d, lambda t, m: m.pop("tree")), r"lacks the metadata \['tree'\]"),
    (lambda d: rewrite(d, lambda t, m: m.update({checkpoint.FORMAT_KEY: "9"})),
     "is checkpoint format '9'; this step-sparsity reads format '2'"),
    (lambda d: save_file({"/model/w": torch.zeros(4)}, d / checkpoint.FILE),
     "no 'step-sparsity.checkpoint' metadata.*two-file format of step-sparsity 0.1.0"),
    (lambda d: (d / checkpoint.FILE).write_bytes(b"\x10\0\0\0\0\0\0\0{not a header"),
     "is not a readable safetensors file"),
    (lambda d: (d / checkpoint.FILE).unlink(), "holds no committed checkpoint"),
])  # fmt: skip
def test_load_refuses_what_save_did_not_commit(tmp_path, damage, message):
    directory = committed(tmp_path)
    assert checkpoint.load(directory)["step"] == 3
    damage(directory)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(directory)


def test_resume_of_a_damaged_checkpoint_is_one_clear_error(tmp_path):
    config = config_file(tmp_path, "srste")
    start(config, tmp_path / "run")
    rewrite(tmp_path / "run" / "checkpoint", lambda t, m: t["/rng"].bitwise_not_())
    with pytest.raises(SystemExit, match=r"^step-sparsity train: .*do not match the digest"):
        main(["train", "--resume", str(tmp_path / "run"), "--quiet"])


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    start(config_file(tmp_path, "asp"), tmp_path / "run")
    saved = tmp_path / "run" / "config.json"
    saved.write_text(saved.read_text().replace('"recipe": "asp"', '"recipe": "step"'))
    with pytest.raises(SystemExit, match=r"does not fit the run configured in its config.json"
                       r": .*\['name'\] is 'asp': the state of another recipe"):  # fmt: skip
        main(["train", "--resume", str(tmp_path / "run"), "--quiet"])
