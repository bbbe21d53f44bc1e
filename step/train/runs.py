"""A ``step-sparsity train`` run directory read back: :func:`load_run` gives its model.

A run directory (docs/cli.md) holds ``config.json`` (the resolved configuration: it names
the task whose ``build_model`` made the model), ``checkpoint/`` (the last committed
training state) and, once the run has finished, ``export/dense/`` and
``export/compressed/`` (the frozen model in both formats). The export layer below knows
no tasks, so the model is built here, from the task, and filled by
:func:`step.load_sparse` (an export) or from the checkpoint (model and optimizer state,
then frozen as the end of a run freezes it).

:func:`export_source` is what ``step-sparsity export`` calls (passed down by the CLI) to
read a run directory or one of its parts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import nn as step_nn
from ..export import load_sparse
from ..export.reader import read_checkpoint
from ..nn.checks import check_path
from ..ops.dispatch import check_device
from ..tasks import MissingDataError, Task, make_task
from . import checkpoint
from .config import ConfigError, TrainConfig, load_saved
from .loop import load_trained_state, make_optimizer

PARTS = ("export/compressed", "export/dense", "export", "checkpoint")
"""The parts of a run directory :func:`load_run` takes besides the directory itself;
``export`` (both formats) reads ``export/compressed``, as the directory itself does."""

_RUN_KEYS = ("task", "recipe", "nm")
"""Keys every run's ``config.json`` holds (a Hugging Face ``config.json`` holds none)."""


@dataclass(frozen=True)
class RunPath:
    """A path inside a run: the run directory, which part of it (``""``: the directory
    itself, else one of :data:`PARTS`), and the run's configuration."""

    run_dir: Path
    part: str
    config: TrainConfig


def _run_config(directory: Path) -> TrainConfig | None:
    """The configuration of the run in ``directory``; None when ``directory`` holds no
    run's ``config.json`` (none, or another program's, e.g. a Hugging Face model's).

    Raises ``ConfigError`` (a ``ValueError``) naming the file when it is a run's but
    cannot be read: not JSON, unknown settings, invalid values."""
    file = directory / "config.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file} is not valid JSON ({e}); if it is a run's configuration, "
                          "restore it from a copy") from None  # fmt: skip
    if not isinstance(data, dict) or not all(key in data for key in _RUN_KEYS):
        return None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{file} holds settings this step-sparsity does not know: {unknown} (written "
            "by another version?); load the run with that version"
        )
    return load_saved(directory)


def find_run(path: Path) -> RunPath | None:
    """The run ``path`` is, or is a part of (:data:`PARTS`; a file in a part counts as its
    directory); None when it is neither. Reads only the run's ``config.json``."""
    directory = path.parent if path.is_file() else path
    absolute = directory.absolute()
    for part in ("", *PARTS):
        names = tuple(part.split("/")) if part else ()
        if names and absolute.parts[-len(names) :] != names:
            continue
        root = absolute.parents[len(names) - 1] if names else directory
        config = _run_config(root)
        if config is not None:
            return RunPath(root, part, config)
    return None


def _compare_runs(directory: Path) -> list[str]:
    """The runs of a ``--compare`` in ``directory`` (its subdirectories that are runs)."""
    if not directory.is_dir():
        return []
    return sorted(d.name for d in directory.iterdir() if d.is_dir() and _run_config(d))


def _not_a_run(path: Path) -> Exception:
    """The error for a ``path`` that is no run and no part of one."""
    if not path.exists():
        return FileNotFoundError(f"{path}: no such run directory")
    runs = _compare_runs(path)
    if runs:
        return ValueError(
            f"{path} is not a run directory but holds run directories ({', '.join(runs)}: a "
            f"--compare?): pass one of them, e.g. {path / runs[0]}"
        )
    return ValueError(
        f"{path} is not a step-sparsity train run directory nor a part of one: expected a "
        f"config.json written by step-sparsity train in it (or in the run directory above "
        f"for its {', '.join(p + '/' for p in PARTS)})"
    )


def _build(cfg: TrainConfig) -> tuple[Task, nn.Module]:
    """The task of ``cfg`` (its data loaded: some tasks' models depend on it, e.g. the
    vocabulary) and a fresh model of it, dense, float32, on the CPU, initialised as the
    run's was; the caller's random state is left as it was."""
    task = make_task(cfg.task, cfg.seed, cfg.batch_size, torch.device("cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return task, task.build_model()


def _from_checkpoint(where: RunPath, device: torch.device) -> nn.Module:
    """The model of the run's last committed checkpoint, frozen as the end of a run
    freezes it (the dense baseline's is left dense), in ``eval()``."""
    cfg, directory = where.config, where.run_dir / "checkpoint"
    state = checkpoint.load(directory)  # CheckpointError naming the file, before any work
    task, model = _build(cfg)
    step_nn.sparsify(model, n=cfg.n, m=cfg.m, exclude=task.dense_layers)
    model.to(device)
    opt = make_optimizer(cfg, model)
    load_trained_state(state, model, opt, f"{directory} does not fit the run configured in "
                       f"{where.run_dir / 'config.json'}")  # fmt: skip
    if cfg.recipe != "dense":
        step_nn.freeze(model)  # what the run ships: exact N:M, compressed inference
    return model.eval()


def _export_dir(where: RunPath) -> Path:
    """The run's export that :func:`load_run` reads for ``where``; refuses a run that has
    none (the dense baseline, a run that has not finished)."""
    cfg, run_dir = where.config, where.run_dir
    part = where.part if where.part not in ("", "export") else "export/compressed"
    if cfg.recipe == "dense":
        raise ValueError(
            f"{run_dir} trained the dense baseline (recipe 'dense'): it has no N:M export. "
            f"Its trained model is its last checkpoint: load {run_dir / 'checkpoint'}"
        )
    if not (run_dir / part).is_dir():
        raise FileNotFoundError(
            f"{run_dir / part} does not exist: the run has not finished (a run writes its "
            f"exports at the end). Finish it with step-sparsity train --resume {run_dir}, or "
            f"load its last checkpoint: {run_dir / 'checkpoint'}"
        )
    return run_dir / part


def load_run(
    path: str | Path, export: str | Path | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """The model a ``step-sparsity train`` run trained, frozen and in ``eval()``.

    Args:
        path: the run directory (its ``export/compressed`` is read), or one of its parts:
            ``export/compressed``, ``export/dense`` (the export in that format; both
            hold the same model), or ``checkpoint`` (the last committed training state,
            frozen as the end of a run freezes it: for a finished run, the exported
            model; for the dense baseline, its dense model).
        export: an export of the run's model written elsewhere (``step-sparsity export
            RUN_DIR OUT`` writes ``OUT/dense`` and ``OUT/compressed``), read instead of
            the run's own; ``path`` must then be the run directory itself.
        device: where the model ends up.

    Returns:
        The task's model (``step.tasks``: e.g. the Shakespeare GPT, token ids ``[batch,
        t]`` int64 -> logits ``[batch, t, vocab]``), its sparse layers N:M and frozen, in
        ``eval()``, with the run's dtype (float32) unless ``export`` was cast. Its outputs
        equal the trained model's at the end of the run bit for bit.

    Raises:
        TypeError: ``path``, ``export`` or ``device`` of the wrong type.
        FileNotFoundError: no such path; a run without exports (not finished).
        ValueError: ``path`` is no run nor a part of one, a damaged ``config.json`` or
            checkpoint, the dense baseline without ``checkpoint``, a bad device, or an
            export that does not fit the run's model (:func:`step.load_sparse`'s checks).
        MissingDataError: the task's data, needed to build its model, is not installed
            (the message says how to install it).
    """
    path = check_path(path)
    if export is not None:
        export = check_path(export, "export")
    dev = check_device(device)
    where = find_run(path)
    if where is None:
        raise _not_a_run(path)
    if export is not None and where.part:
        raise ValueError(
            f"export={str(export)!r} gives the weights, so path must be the run directory "
            f"itself ({where.run_dir}), not its part {where.part!r}"
        )
    if export is None and where.part == "checkpoint":
        return _from_checkpoint(where, dev)
    source = export if export is not None else _export_dir(where)
    dtype = read_checkpoint(source).sparse_dtype  # the header: checked before any work
    _, model = _build(where.config)
    return load_sparse(source, model=model.to(dtype) if dtype else model, device=dev)


def export_source(path: Path) -> nn.Module | None:
    """What ``step-sparsity export`` reads from ``path`` when it is a run directory or a
    part of one (:func:`load_run`'s ``path``): the frozen model, on the CPU. None when
    ``path`` is no run (the command then reads it as an export or a Hugging Face model
    directory). Refuses the dense baseline, which has no N:M model to export."""
    where = find_run(path)
    if where is None:
        runs = _compare_runs(path)
        if runs:
            raise _not_a_run(path)
        return None
    if where.config.recipe == "dense":
        raise ValueError(f"{where.run_dir} trained the dense baseline (recipe 'dense'): it "
                         "has no N:M model to export")  # fmt: skip
    try:
        return load_run(path)
    except MissingDataError as e:  # a RuntimeError, which the CLI would show as a bug
        raise SystemExit(f"step-sparsity export: error: {e}") from None
